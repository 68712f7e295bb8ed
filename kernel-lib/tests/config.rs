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
        ("method = \"simclr\"\n", "method"),
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
