//! Configs: presets, TOML overrides, and errors that name the key.

use sslab::train::{RunConfig, PRESETS};

fn err(text: &str) -> String {
    RunConfig::from_toml_str(text).unwrap_err().to_string()
}

#[test]
fn presets_validate_and_round_trip_through_toml() {
    for p in PRESETS {
        let c = RunConfig::preset(p).unwrap();
        assert_eq!(&c.preset, p);
        let back = RunConfig::from_toml_str(&c.to_toml().unwrap()).unwrap();
        assert_eq!(back, c, "{p}");
    }
    assert_eq!(
        RunConfig::preset("barlow-twins").unwrap().preset,
        "barlow-twins/tiny"
    );
    assert!(RunConfig::preset("barlow-twins/huge")
        .unwrap_err()
        .to_string()
        .contains("barlow-twins/tiny"));
}

#[test]
fn paper_preset_follows_methods_md() {
    let c = RunConfig::preset("barlow-twins/imagenet").unwrap();
    assert_eq!(c.barlow_twins.projector, vec![8192, 8192, 8192]);
    assert_eq!(
        (
            c.optim.kind.as_str(),
            c.optim.lr,
            c.optim.lr_1d,
            c.optim.eta
        ),
        ("lars", 0.2, Some(0.0048), 0.001)
    );
    assert_eq!(
        (
            c.optim.warmup_epochs,
            c.optim.final_lr_frac,
            c.train.batch_size
        ),
        (10.0, 0.001, 2048)
    );
    assert!(c.optim.exclude_1d && c.optim.scale_lr_with_batch && c.model.zero_init_residual);
    assert_eq!(c.augment.recipe, "barlow-twins");
}

#[test]
fn moco_densecl_and_moco_v3_paper_presets_follow_methods_md() {
    let v1 = RunConfig::preset("moco-v1/imagenet").unwrap();
    let v2 = RunConfig::preset("moco-v2/imagenet").unwrap();
    for c in [&v1, &v2] {
        assert_eq!(
            (
                c.moco.dim,
                c.moco.queue_size,
                c.moco.momentum,
                c.moco.bn_splits
            ),
            (128, 65536, 0.999, 8)
        );
        assert_eq!(
            (
                c.optim.kind.as_str(),
                c.optim.lr,
                c.optim.weight_decay,
                c.optim.momentum
            ),
            ("sgd", 0.03, 1e-4, 0.9)
        );
        assert!(!c.optim.exclude_1d && !c.optim.scale_lr_with_batch && !c.model.zero_init_residual);
        assert_eq!((c.train.batch_size, c.train.epochs), (256, 200.0));
    }
    assert_eq!((v1.moco.tau, v1.augment.recipe.as_str()), (0.07, "moco-v1"));
    assert_eq!(
        (v1.optim.schedule.as_str(), v1.optim.milestones.clone()),
        ("steps", vec![120.0, 160.0])
    );
    assert_eq!((v2.moco.tau, v2.augment.recipe.as_str()), (0.2, "moco-v2"));
    assert_eq!(
        (v2.optim.schedule.as_str(), v2.optim.per_epoch),
        ("cosine", true)
    );
    let cifar = RunConfig::preset("moco-v2/cifar").unwrap();
    assert_eq!(
        (
            cifar.moco.queue_size,
            cifar.moco.momentum,
            cifar.moco.tau,
            cifar.train.batch_size
        ),
        (4096, 0.99, 0.1, 512)
    );
    assert_eq!((cifar.optim.lr, cifar.optim.weight_decay), (0.06, 5e-4));
    let dcl = RunConfig::preset("densecl/imagenet").unwrap();
    assert_eq!((dcl.method.as_str(), dcl.densecl.lambda), ("densecl", 0.5));
    assert_eq!(
        (dcl.moco.tau, dcl.moco.momentum, dcl.optim.lr),
        (0.2, 0.999, 0.03)
    );
    let vit = RunConfig::preset("moco-v3/vit-small").unwrap();
    assert_eq!(
        (
            vit.model.backbone.as_str(),
            vit.model.vit_depth,
            vit.model.patch
        ),
        ("vit", 12, 16)
    );
    assert_eq!(
        (
            vit.moco_v3.hidden,
            vit.moco_v3.dim,
            vit.moco_v3.tau,
            vit.moco_v3.momentum
        ),
        (4096, 256, 0.2, 0.99)
    );
    assert_eq!(
        (
            vit.optim.kind.as_str(),
            vit.optim.lr,
            vit.optim.weight_decay,
            vit.optim.warmup_epochs
        ),
        ("adamw", 1.5e-4, 0.1, 40.0)
    );
    let r50 = RunConfig::preset("moco-v3/resnet50").unwrap();
    assert_eq!(
        (
            r50.optim.kind.as_str(),
            r50.optim.lr,
            r50.moco_v3.tau,
            r50.augment.scale_min
        ),
        ("lars", 0.6, 1.0, Some(0.2))
    );
    assert!(r50.model.zero_init_residual && r50.optim.exclude_1d);
    let base = RunConfig::preset("moco-v3/vit-base").unwrap();
    assert_eq!(base.model.vit_size, sslab::models::VitSize::Base);
    assert_eq!((base.optim.lr, base.train.batch_size), (1.5e-4, 4096));
    let cifar = RunConfig::preset("moco-v3/cifar").unwrap();
    assert_eq!(
        (
            cifar.optim.kind.as_str(),
            cifar.optim.lr,
            cifar.optim.eta,
            cifar.optim.weight_decay,
            cifar.moco_v3.hidden,
            cifar.moco_v3.tau,
            cifar.train.batch_size
        ),
        ("lars", 0.3, 0.02, 1e-6, 4096, 0.2, 256)
    );
    assert_eq!(cifar.augment.recipe, "byol-cifar");
    // The CPU ResNet preset starts its residual branches open (see its doc comment).
    assert!(
        !RunConfig::preset("moco-v3/resnet")
            .unwrap()
            .model
            .zero_init_residual
    );
    // A bare method name is its CPU-sized preset.
    assert_eq!(
        RunConfig::preset("moco-v3").unwrap().preset,
        "moco-v3/vit-tiny"
    );
    assert_eq!(RunConfig::preset("densecl").unwrap().preset, "densecl/tiny");
}

#[test]
fn file_overrides_its_preset() {
    let c = RunConfig::from_toml_str(
        "preset = \"barlow-twins/cifar\"\n[optim]\nlr = 0.1\n[train]\nsteps = 7\n",
    )
    .unwrap();
    assert_eq!(c.preset, "barlow-twins/cifar");
    assert_eq!(
        (c.optim.lr, c.train.steps, c.train.batch_size),
        (0.1, 7, 256)
    );
}

#[test]
fn unknown_keys_and_wrong_types_are_named() {
    let e = err("[optim]\nlrr = 0.1\n");
    assert!(e.contains("lrr"), "{e}");
    let e = err("[train]\nbatch_size = \"big\"\n");
    assert!(e.contains("batch_size") || e.contains("big"), "{e}");
    let e = err("bogus = 1\n");
    assert!(e.contains("bogus"), "{e}");
    let e = err("preset = \"nope\"\n");
    assert!(e.contains("nope"), "{e}");
    let e = err("this is not toml");
    assert!(e.starts_with("config:"), "{e}");
}

#[test]
fn out_of_range_values_are_named() {
    for (text, key) in [
        ("[optim]\nlr = -1.0\n", "optim.lr"),
        ("[optim]\nmomentum = 1.5\n", "optim.momentum"),
        ("[optim]\nkind = \"adam9\"\n", "optim.kind"),
        ("[train]\nbatch_size = 1\n", "train.batch_size"),
        ("[barlow_twins]\nlambda = -0.1\n", "barlow_twins.lambda"),
        ("[barlow_twins]\nprojector = []\n", "barlow_twins.projector"),
        ("[model]\nwidth = 0\n", "model.width"),
        ("[augment]\nrecipe = \"mystery\"\n", "augment.recipe"),
        ("[data]\nsource = \"tape:/dev/st0\"\n", "data.source"),
        ("[eval]\nknn_t = 0.0\n", "eval.knn_t"),
        ("method = \"swav\"\n", "method"),
        ("device = \"tpu\"\n", "device"),
    ] {
        let e = err(text);
        assert!(e.contains(key), "{text:?} -> {e}");
    }
}

#[test]
fn set_changes_one_key_and_validates() {
    let mut c = RunConfig::default();
    c.set("optim.lr", "0.5").unwrap();
    assert_eq!(c.optim.lr, 0.5);
    c.set("optim.kind", "sgd").unwrap();
    assert_eq!(c.optim.kind, "sgd");
    c.set("barlow_twins.projector", "[64, 32]").unwrap();
    assert_eq!(c.barlow_twins.projector, vec![64, 32]);
    let before = c.clone();
    let e = c.set("optim.lr", "-2").unwrap_err().to_string();
    assert!(e.contains("optim.lr"), "{e}");
    assert_eq!(c, before, "a rejected set must leave the config unchanged");
    assert!(c
        .set("optim.nope", "1")
        .unwrap_err()
        .to_string()
        .contains("nope"));
}

/// A `run.json` and `config.toml` written by sslab before the config's names became enums
/// (`method`, `model.backbone`, `augment.recipe`, `optim.kind`, `optim.schedule`, the momentum
/// schedules were strings): both still load, and the config prints back the same text (plus
/// what was added after it was written, at its defaults: two linear-probe keys, `precision`,
/// `[cuda]` (`tf32`, `channels_last`) and the sections of SimCLR, BYOL, SimSiam and VICReg).
#[test]
fn configs_saved_before_typed_names_load_and_print_back_the_same() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let run_json = std::fs::read_to_string(dir.join("run-before-typed-config.json")).unwrap();
    let manifest: serde_json::Value = serde_json::from_str(&run_json).unwrap();
    let saved = manifest["config"].as_str().unwrap();
    let c = RunConfig::from_toml_str(saved).unwrap();
    assert_eq!(c.method, "barlow-twins");
    let added = [
        "linear_probe_epochs = 30\nlinear_probe_lr = 0.0\n",
        "\n[cuda]\ntf32 = true\nchannels_last = false\n",
        "precision = \"f32\"\n",
        "\n[simclr]\nprojector = [\n    2048,\n    128,\n]\ntau = 0.1\n",
        "\n[byol]\nprojector = [\n    4096,\n    256,\n]\npredictor_hidden = 4096\nmomentum = 0.996\nmomentum_schedule = \"cosine\"\n",
        "\n[simsiam]\nprojector = [\n    2048,\n    2048,\n    2048,\n]\npredictor_hidden = 512\nfix_predictor_lr = true\n",
        "\n[vicreg]\nexpander = [\n    8192,\n    8192,\n    8192,\n]\nsim = 25.0\nstd = 25.0\ncov = 1.0\n",
    ];
    let printed = added
        .iter()
        .fold(c.to_toml().unwrap(), |text, a| text.replace(a, ""));
    assert_eq!(printed, saved);
    let file = RunConfig::from_file(dir.join("config-before-typed-config.toml")).unwrap();
    assert_eq!(file, c);
}
