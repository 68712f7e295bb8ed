//! Checkpoints: resume equivalence for every method, periodic checkpoints, damaged files.

mod common;

use common::shrink_any;
use sslab::prelude::*;

fn small(preset: &str) -> RunConfig {
    let mut c = shrink_any(preset);
    c.train.steps = 6;
    c
}

fn losses(run: &Run) -> Vec<u32> {
    run.history().iter().map(|r| r.loss.to_bits()).collect()
}

#[test]
fn resume_equals_an_uninterrupted_run_for_every_method() {
    for preset in [
        "barlow-twins/tiny",
        "moco-v1/tiny",
        "moco-v2/tiny",
        "densecl/tiny",
        "moco-v3/vit-tiny",
        "moco-v3/resnet",
    ] {
        let mut straight = Run::new(small(preset)).unwrap();
        straight.train(6).unwrap();
        let mut first = Run::new(small(preset)).unwrap();
        first.train(3).unwrap();
        let dir = tempfile::tempdir().unwrap();
        first.save(dir.path()).unwrap();
        drop(first);
        let mut resumed = Run::load(dir.path()).unwrap();
        assert_eq!(resumed.steps_done(), 3, "{preset}");
        resumed.train(3).unwrap();
        assert_eq!(
            losses(&resumed),
            losses(&straight),
            "{preset}: losses differ"
        );
        // The weights end up identical too.
        let a = straight.method().params().params[0]
            .var
            .as_tensor()
            .flatten_all()
            .unwrap();
        let b = resumed.method().params().params[0]
            .var
            .as_tensor()
            .flatten_all()
            .unwrap();
        let d = (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(d, 0.0, "{preset}");
        for ((n1, q1), (_, q2)) in straight
            .method()
            .queues()
            .iter()
            .zip(resumed.method().queues())
        {
            assert_eq!(q1.ptr(), q2.ptr(), "{preset} {n1}");
        }
    }
}

#[test]
fn periodic_checkpoints_keep_the_newest_and_resume_from_it() {
    let mut c = small("moco-v2/tiny");
    c.train.checkpoint_every = 2;
    c.train.keep_checkpoints = 2;
    let dir = tempfile::tempdir().unwrap();
    let mut run = Run::new(c.clone()).unwrap();
    run.checkpoint_into(dir.path()).unwrap();
    run.train(6).unwrap();
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    names.sort();
    // The older checkpoints pruned; `.lock` is the run's hold on the folder.
    assert_eq!(names, [".lock", "step-00000004", "step-00000006"]);
    let resumed = Run::load(dir.path()).unwrap();
    assert_eq!(resumed.steps_done(), 6);
    assert_eq!(losses(&resumed), losses(&run));
    // One tensor file per checkpoint folder, even after saving twice into it.
    let step4 = dir.path().join("step-00000004");
    let mut again = Run::load(&step4).unwrap();
    again.train(1).unwrap();
    again.save(&step4).unwrap();
    let files: Vec<String> = std::fs::read_dir(&step4)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.ends_with(".safetensors"))
        .collect();
    assert_eq!(files, ["state-00000005.safetensors"]);
}

#[test]
fn damaged_checkpoints_are_errors_naming_the_file() {
    let mut run = Run::new(small("barlow-twins/tiny")).unwrap();
    run.train(1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    run.save(dir.path()).unwrap();
    let tensors = dir.path().join("state-00000001.safetensors");
    let manifest = dir.path().join("run.json");
    let good_tensors = std::fs::read(&tensors).unwrap();
    let good_manifest = std::fs::read(&manifest).unwrap();
    let expect_err = |what: &str, needle: &str| {
        let e = match Run::load(dir.path()) {
            Ok(_) => panic!("{what}: loaded"),
            Err(e) => e.to_string(),
        };
        assert!(e.contains(needle), "{what}: {e}");
    };
    // Truncated tensors.
    std::fs::write(&tensors, &good_tensors[..good_tensors.len() / 2]).unwrap();
    expect_err("truncated tensors", "state-00000001.safetensors");
    // Flipped bytes in the header.
    let mut bad = good_tensors.clone();
    for b in bad.iter_mut().skip(8).take(40) {
        *b = b'#';
    }
    std::fs::write(&tensors, &bad).unwrap();
    expect_err("corrupt header", "state-00000001.safetensors");
    std::fs::write(&tensors, &good_tensors).unwrap();
    // Garbage manifest, a manifest of another format, a config that no longer validates.
    std::fs::write(&manifest, b"{ not json").unwrap();
    expect_err("garbage run.json", "run.json");
    let text = String::from_utf8(good_manifest.clone()).unwrap();
    std::fs::write(&manifest, text.replace("\"version\": 1", "\"version\": 99")).unwrap();
    expect_err("future version", "format 99");
    std::fs::write(&manifest, text.replace("lambda = 0.0051", "lambda = -3.0")).unwrap();
    expect_err("invalid config", "barlow_twins.lambda");
    // A checkpoint of a different architecture: shapes do not fit.
    std::fs::write(&manifest, text.replace("width = 4", "width = 8")).unwrap();
    expect_err("wrong shapes", "shape");
    std::fs::write(&manifest, &good_manifest).unwrap();
    assert!(Run::load(dir.path()).is_ok());
    // Missing folder.
    let missing = dir.path().join("nope");
    expect_err_at(&missing, "nope");
}

/// The fault of the report: 4 KB in the middle of the tensor file overwritten (a bad disk
/// block, a partial copy) loaded silently before content hashes; now it is refused by name.
#[test]
fn a_damaged_block_in_the_tensor_file_is_refused_at_load() {
    let mut run = Run::new(small("moco-v2/tiny")).unwrap();
    run.train(1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    run.save(dir.path()).unwrap();
    let tensors = dir.path().join("state-00000001.safetensors");
    let good = std::fs::read(&tensors).unwrap();
    assert!(good.len() > 16_384, "{} bytes", good.len());
    let mut bad = good.clone();
    let mid = good.len() / 2;
    bad[mid..mid + 4096].fill(0);
    std::fs::write(&tensors, &bad).unwrap();
    let e = Run::load(dir.path())
        .err()
        .expect("a damaged checkpoint loaded")
        .to_string();
    assert!(
        e.contains("state-00000001.safetensors") && e.contains("damaged") && e.contains("hash"),
        "{e}"
    );
    // The config file is covered too, and a good checkpoint still loads, without a warning.
    std::fs::write(&tensors, &good).unwrap();
    let config = dir.path().join("config.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("seed = 0", "seed = 1")).unwrap();
    let e = Run::load(dir.path())
        .err()
        .expect("an edited config.toml loaded")
        .to_string();
    assert!(e.contains("config.toml"), "{e}");
    std::fs::write(&config, text).unwrap();
    assert!(Run::load(dir.path()).unwrap().warnings().is_empty());
}

/// A checkpoint without recorded hashes (written before them) loads with a warning, and a
/// non-finite tensor in it is refused by name rather than turning into a NaN loss steps later.
#[test]
fn unhashed_checkpoints_warn_and_non_finite_tensors_are_refused() {
    let mut run = Run::new(small("barlow-twins/tiny")).unwrap();
    run.train(1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    run.save(dir.path()).unwrap();
    let manifest = dir.path().join("run.json");
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    json.as_object_mut().unwrap().remove("files");
    std::fs::write(&manifest, serde_json::to_vec(&json).unwrap()).unwrap();
    let loaded = Run::load(dir.path()).unwrap();
    assert!(
        loaded
            .warnings()
            .iter()
            .any(|w| w.contains("content hashes")),
        "{:?}",
        loaded.warnings()
    );
    // The last four bytes are the last value of the last tensor's data: make it a NaN.
    let tensors = dir.path().join("state-00000001.safetensors");
    let mut bytes = std::fs::read(&tensors).unwrap();
    let n = bytes.len();
    bytes[n - 4..].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(&tensors, &bytes).unwrap();
    let e = Run::load(dir.path())
        .err()
        .expect("a NaN weight loaded")
        .to_string();
    assert!(
        e.contains("non-finite") && e.contains("state-00000001"),
        "{e}"
    );
}

fn expect_err_at(path: &std::path::Path, needle: &str) {
    match Run::load(path) {
        Ok(_) => panic!("loaded {}", path.display()),
        Err(e) => assert!(e.to_string().contains(needle), "{e}"),
    }
}

/// Checkpoints written by sslab before the config's names became enums and the run was split
/// into parts (commit 6c35d24: `sslab train METHOD --steps 4 --checkpoint-every 2` on tiny
/// shapes, the step-2 checkpoint kept): they load, and training on from them gives the losses
/// that run printed for its steps 3 and 4.
#[test]
fn checkpoints_saved_before_the_restructure_load_and_continue_the_same_run() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/saved-before-typed-config");
    for (method, later) in [
        ("barlow-twins", [2.2998f32, 1.5139]),
        ("moco-v2", [3.3790, 3.2038]),
    ] {
        let mut run = Run::load(root.join(method)).unwrap();
        assert_eq!(run.config().method, method);
        assert!(run.warnings().iter().any(|w| w.contains("content hashes")));
        assert_eq!(run.steps_done(), 2);
        assert_eq!(run.total_steps(), 4);
        for want in later {
            let r = run.step().unwrap();
            assert!(
                (r.loss - want).abs() < 1e-4,
                "{method} step {}: loss {} where the saved run had {want}",
                r.step,
                r.loss
            );
        }
    }
}

/// Two runs sending checkpoints to one folder would overwrite each other: the second is refused
/// while the first holds it, and the folder is free again once the first is gone.
#[test]
fn a_checkpoint_folder_has_one_writer() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = Run::new(small("barlow-twins/tiny")).unwrap();
    first.checkpoint_into(dir.path()).unwrap();
    let mut second = Run::new(small("barlow-twins/tiny")).unwrap();
    let e = second.checkpoint_into(dir.path()).unwrap_err().to_string();
    assert!(e.contains("in use by another sslab process"), "{e}");
    drop(first);
    second.checkpoint_into(dir.path()).unwrap();
}
