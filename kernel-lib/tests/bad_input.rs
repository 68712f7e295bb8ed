//! A corpus of bad inputs: every one is an error naming the input and the problem, never a
//! panic, and a failed load leaves what was saved before intact.

mod common;

use common::shrink;
use sslab::data::{DataSource, ShapesConfig};
use sslab::prelude::*;

/// `(key, value, words the message must contain)`; each is applied with `RunConfig::set` to a
/// valid preset.
const BAD_SETTINGS: &[(&str, &str, &str)] = &[
    ("method", "swav", "unknown method"),
    ("method", "42", "method"),
    ("seed", "-1", "seed"),
    ("seed", "\"abc\"", "seed"),
    ("device", "tpu", "device"),
    ("data.source", "imagenet:/x", "data.source"),
    ("data.source", "cifar10", "data.source"),
    ("data.shapes.size", "0", "data.shapes.size"),
    ("data.shapes.size", "4096", "data.shapes.size"),
    ("data.shapes.train", "0", "data.shapes"),
    ("data.shapes.test", "1", "data.shapes"),
    ("data.shapes.train", "-5", "data.shapes.train"),
    ("data.shapes.nope", "1", "nope"),
    ("model.arch", "resnet7", "model.arch"),
    ("model.stem", "big", "model.stem"),
    ("model.width", "0", "model.width"),
    ("model.width", "1.5", "model.width"),
    ("model.backbone", "mlp", "model.backbone"),
    ("model.vit_size", "huge", "model.vit_size"),
    ("model.vit_depth", "0", "model.vit_depth"),
    ("model.patch", "0", "model.patch"),
    ("model.patch", "5", "model.patch"),
    (
        "model.zero_init_residual",
        "maybe",
        "model.zero_init_residual",
    ),
    ("model.colour", "1", "colour"),
    ("augment.recipe", "simclr", "augment.recipe"),
    ("augment.size", "0", "augment.size"),
    ("augment.size", "100000", "augment.size"),
    ("augment.scale_min", "0", "augment.scale_min"),
    ("augment.scale_min", "1.5", "augment.scale_min"),
    ("augment.scale_min", "-0.2", "augment.scale_min"),
    ("barlow_twins.lambda", "-1", "barlow_twins.lambda"),
    ("barlow_twins.lambda", "nan", "barlow_twins.lambda"),
    ("barlow_twins.scale_loss", "0", "barlow_twins.scale_loss"),
    ("barlow_twins.projector", "[]", "barlow_twins.projector"),
    (
        "barlow_twins.projector",
        "[512, 0]",
        "barlow_twins.projector",
    ),
    ("barlow_twins.projector", "512", "barlow_twins.projector"),
    ("moco.tau", "0", "moco.tau"),
    ("moco.tau", "-0.2", "moco.tau"),
    ("moco.tau", "inf", "moco.tau"),
    ("moco.momentum", "1.5", "moco.momentum"),
    ("moco.momentum", "-0.1", "moco.momentum"),
    ("moco.queue_size", "0", "moco.queue_size"),
    ("moco.queue_size", "100", "moco.queue_size"),
    ("moco.dim", "0", "moco.dim"),
    ("moco.momentum_schedule", "linear", "moco.momentum_schedule"),
    ("moco.bn_splits", "0", "moco.bn_splits"),
    ("moco.bn_splits", "7", "moco.bn_splits"),
    ("densecl.lambda", "2", "densecl.lambda"),
    ("densecl.lambda", "-0.5", "densecl.lambda"),
    ("moco_v3.tau", "0", "moco_v3.tau"),
    ("moco_v3.momentum", "2", "moco_v3.momentum"),
    ("moco_v3.hidden", "0", "moco_v3.hidden"),
    ("moco_v3.dim", "0", "moco_v3.dim"),
    (
        "moco_v3.momentum_schedule",
        "step",
        "moco_v3.momentum_schedule",
    ),
    ("optim.kind", "adagrad", "optim.kind"),
    ("optim.lr", "0", "optim.lr"),
    ("optim.lr", "-0.1", "optim.lr"),
    ("optim.lr", "nan", "optim.lr"),
    ("optim.lr", "\"fast\"", "optim.lr"),
    ("optim.weight_decay", "-1", "optim.weight_decay"),
    ("optim.momentum", "1.5", "optim.momentum"),
    ("optim.eta", "0", "optim.eta"),
    ("optim.betas", "[0.9]", "optim.betas"),
    ("optim.betas", "[0.9, 1.5]", "optim.betas"),
    ("optim.eps", "0", "optim.eps"),
    ("optim.warmup_epochs", "-1", "optim.warmup_epochs"),
    ("optim.final_lr_frac", "2", "optim.final_lr_frac"),
    ("optim.schedule", "linear", "optim.schedule"),
    ("optim.gamma", "0", "optim.gamma"),
    ("optim.milestones", "[-1]", "optim.milestones"),
    ("train.batch_size", "0", "train.batch_size"),
    ("train.batch_size", "1", "train.batch_size"),
    ("train.epochs", "-1", "train.epochs"),
    ("train.log_every", "0", "train.log_every"),
    ("train.keep_checkpoints", "0", "train.keep_checkpoints"),
    ("train.speed", "1", "speed"),
    ("eval.knn_k", "0", "eval.knn_k"),
    ("eval.knn_t", "0", "eval.knn_t"),
    ("eval.batch_size", "0", "eval.batch_size"),
    ("eval.dense_probe_steps", "0", "eval.dense_probe_steps"),
    ("eval.dense_probe_lr", "-1", "eval.dense_probe_lr"),
    ("diagnostics.spike_factor", "1", "diagnostics.spike_factor"),
    ("diagnostics.spike_window", "2", "diagnostics.spike_window"),
    ("diagnostics.probe_images", "1", "diagnostics.probe_images"),
    ("diagnostics.corr_block", "0", "diagnostics.corr_block"),
    ("nonsense", "1", "nonsense"),
    ("optim..lr", "1", "empty key"),
];

#[test]
fn bad_settings_are_errors_naming_the_key() {
    let mut failures = Vec::new();
    for (key, value, needle) in BAD_SETTINGS {
        let base = if key.starts_with("moco.") || key.starts_with("densecl") {
            "densecl/tiny"
        } else if key.starts_with("model.vit") || key.starts_with("model.patch") {
            "moco-v3/vit-tiny"
        } else {
            "barlow-twins/tiny"
        };
        let mut c = RunConfig::preset(base).unwrap();
        match c.set(key, value) {
            Ok(()) => failures.push(format!("{key}={value}: accepted")),
            Err(e) if !e.to_string().contains(needle) => {
                failures.push(format!("{key}={value}: message '{e}' lacks '{needle}'"))
            }
            Err(_) => {}
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn bad_config_files_are_errors_naming_the_problem() {
    let texts: &[(&str, &str)] = &[
        ("", ""), // empty is the default config: valid, checked below
        ("method = ", "TOML"),
        ("[optim\nlr = 1", "TOML"),
        ("preset = \"barlow-twins/giant\"", "giant"),
        ("preset = 3", "preset"),
        ("[optim]\nlr = \"x\"", "lr"),
        ("[optim]\nkind = 4", "kind"),
        ("[train]\nsteps = -3", "steps"),
        ("[train]\nbatch_size = 1.5", "batch_size"),
        ("[model]\nwidth = [1]", "width"),
        ("[unknown]\nx = 1", "unknown"),
        (
            "method = \"moco-v3\"\n[model]\nbackbone = \"vit\"\npatch = 7",
            "model.patch",
        ),
        ("\u{0}\u{1}binary", "TOML"),
    ];
    assert!(RunConfig::from_toml_str(texts[0].0).is_ok());
    for (text, needle) in &texts[1..] {
        match RunConfig::from_toml_str(text) {
            Ok(_) => panic!("accepted {text:?}"),
            Err(e) => assert!(e.to_string().contains(needle), "{text:?}: {e}"),
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.toml");
    let e = RunConfig::from_file(&missing).unwrap_err().to_string();
    assert!(e.contains("missing.toml"), "{e}");
    let garbage = dir.path().join("garbage.toml");
    std::fs::write(&garbage, [0xff, 0xfe, 0x00, 0x41]).unwrap();
    let e = RunConfig::from_file(&garbage).unwrap_err().to_string();
    assert!(e.contains("garbage.toml"), "{e}");
}

fn load_err(spec: &str) -> String {
    let src = DataSource::parse(spec, ShapesConfig::default()).unwrap();
    match src.load() {
        Ok(_) => panic!("{spec}: loaded"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_datasets_are_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let p = |s: &str| d.join(s).display().to_string();
    // Missing folders of every kind.
    for kind in ["cifar10", "cifar100", "mnist", "fashion-mnist", "folder"] {
        let e = load_err(&format!("{kind}:{}", p("absent")));
        assert!(e.contains("absent"), "{kind}: {e}");
    }
    // CIFAR: empty, truncated, wrong label byte.
    std::fs::create_dir_all(d.join("c10")).unwrap();
    std::fs::write(d.join("c10/data_batch_1.bin"), []).unwrap();
    std::fs::write(d.join("c10/test_batch.bin"), vec![0u8; 3073 * 2]).unwrap();
    let e = load_err(&format!("cifar10:{}", p("c10")));
    assert!(e.contains("data_batch_1.bin"), "{e}");
    std::fs::write(d.join("c10/data_batch_1.bin"), vec![0u8; 3073 * 2 + 100]).unwrap();
    let e = load_err(&format!("cifar10:{}", p("c10")));
    assert!(e.contains("data_batch_1.bin"), "{e}");
    let mut bad_label = vec![0u8; 3073 * 2];
    bad_label[0] = 77;
    std::fs::write(d.join("c10/data_batch_1.bin"), bad_label).unwrap();
    let e = load_err(&format!("cifar10:{}", p("c10")));
    assert!(e.contains("data_batch_1.bin") && e.contains("77"), "{e}");
    // IDX: wrong magic, truncated, label/image count mismatch, not gzip.
    std::fs::create_dir_all(d.join("fm")).unwrap();
    let idx_images = |n: u32, rows: u32, body: usize| {
        let mut v = vec![0, 0, 8, 3];
        v.extend(n.to_be_bytes());
        v.extend(rows.to_be_bytes());
        v.extend(rows.to_be_bytes());
        v.extend(vec![0u8; body]);
        v
    };
    let idx_labels = |n: u32| {
        let mut v = vec![0, 0, 8, 1];
        v.extend(n.to_be_bytes());
        v.extend(vec![0u8; n as usize]);
        v
    };
    let write_fm = |train_img: Vec<u8>, train_lbl: Vec<u8>| {
        std::fs::write(d.join("fm/train-images-idx3-ubyte"), train_img).unwrap();
        std::fs::write(d.join("fm/train-labels-idx1-ubyte"), train_lbl).unwrap();
        std::fs::write(
            d.join("fm/t10k-images-idx3-ubyte"),
            idx_images(2, 28, 2 * 784),
        )
        .unwrap();
        std::fs::write(d.join("fm/t10k-labels-idx1-ubyte"), idx_labels(2)).unwrap();
    };
    let mut wrong_magic = idx_images(2, 28, 2 * 784);
    wrong_magic[2] = 9;
    write_fm(wrong_magic, idx_labels(2));
    let e = load_err(&format!("fashion-mnist:{}", p("fm")));
    assert!(e.contains("train-images-idx3-ubyte"), "{e}");
    write_fm(idx_images(2, 28, 700), idx_labels(2));
    let e = load_err(&format!("fashion-mnist:{}", p("fm")));
    assert!(e.contains("train-images-idx3-ubyte"), "{e}");
    write_fm(idx_images(2, 28, 2 * 784), idx_labels(3));
    let e = load_err(&format!("fashion-mnist:{}", p("fm")));
    assert!(e.contains("train"), "{e}");
    // Image folder: no classes, a non-image, mixed sizes.
    std::fs::create_dir_all(d.join("f/train")).unwrap();
    std::fs::create_dir_all(d.join("f/test")).unwrap();
    let e = load_err(&format!("folder:{}", p("f")));
    assert!(e.contains("train"), "{e}");
    std::fs::create_dir_all(d.join("f/train/cat")).unwrap();
    std::fs::create_dir_all(d.join("f/test/cat")).unwrap();
    std::fs::write(d.join("f/train/cat/a.png"), b"not a png at all").unwrap();
    let e = load_err(&format!("folder:{}", p("f")));
    assert!(e.contains("a.png"), "{e}");
}

#[test]
fn a_failed_save_or_load_keeps_the_earlier_checkpoint() {
    let mut c = shrink(RunConfig::preset("moco-v2/tiny").unwrap());
    c.moco.queue_size = 32;
    let mut run = Run::new(c).unwrap();
    run.train(2).unwrap();
    let dir = tempfile::tempdir().unwrap();
    run.save(dir.path()).unwrap();
    let before = std::fs::read(dir.path().join("run.json")).unwrap();
    // A save into a path that is a file fails without touching the good checkpoint.
    let file = dir.path().join("run.json");
    assert!(run.save(&file).is_err());
    assert_eq!(std::fs::read(dir.path().join("run.json")).unwrap(), before);
    // Loading with a config change that no longer fits the tensors fails, and the folder is
    // still loadable afterwards.
    let e = Run::load_with(dir.path(), |c| {
        c.moco.dim = 64;
        Ok(())
    })
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("shape") || e.contains("queue"), "{e}");
    assert_eq!(Run::load(dir.path()).unwrap().steps_done(), 2);
    assert_eq!(std::fs::read(dir.path().join("run.json")).unwrap(), before);
    // Asking a resumed run for fewer steps than it has done is an error naming the key.
    let e = Run::load_with(dir.path(), |c| c.set("train.steps", "1"))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("train.steps"), "{e}");
}
