//! A run's log read back by the tools users watch it with: the `tensorboard` package's own
//! event reader (`EventAccumulator`, in the notebook venv) finds the loss curve, its parts, the
//! learning rate, the kNN evaluations and the figures that `Run::log_into` wrote, at the
//! steps and values the run recorded, and `metrics.csv` holds the same numbers.
//!
//! Needs `.venv-nb` with `tensorboard` (`.ci/run` installs it). Without it the test says so
//! and passes, except under CI (`CI` set), where a missing reader is a failure.

use sslab::prelude::*;
use std::path::PathBuf;
use std::process::Command;

const READER: &str = r#"
import json, sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
ea = EventAccumulator(sys.argv[1], size_guidance={"scalars": 0, "images": 0})
ea.Reload()
tags = ea.Tags()
out = {t: [[e.step, e.value] for e in ea.Scalars(t)] for t in tags["scalars"]}
out["_images"] = {t: [[e.step, e.width, e.height, len(e.encoded_image_string)] for e in ea.Images(t)] for t in tags["images"]}
print(json.dumps(out))
"#;

#[test]
fn tensorboard_reads_the_runs_scalars_and_figures_and_the_csv_agrees() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let python = root.join(".venv-nb/bin/python");
    let has_reader = python.exists()
        && Command::new(&python)
            .args(["-c", "import tensorboard"])
            .status()
            .is_ok_and(|s| s.success());
    if !has_reader {
        let msg = "no tensorboard package in .venv-nb (pip install tensorboard)";
        assert!(std::env::var_os("CI").is_none(), "{msg}");
        eprintln!("skipped: {msg}");
        return;
    }
    let dir = std::env::temp_dir().join(format!("sslab-tb-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut cfg = RunConfig::preset("barlow-twins/tiny").unwrap();
    cfg.device = "cpu".into();
    cfg.data.shapes.train = 256;
    cfg.data.shapes.test = 64;
    cfg.data.shapes.size = 16;
    cfg.augment.size = 16;
    cfg.model.width = 4;
    cfg.barlow_twins.projector = vec![32, 32];
    cfg.train.batch_size = 32;
    cfg.train.steps = 6;
    cfg.train.log_every = 2;
    cfg.eval.knn_k = 5;
    let mut run = Run::new(cfg).unwrap();
    run.log_into(&dir).unwrap();
    let k0 = run.knn().unwrap();
    run.train(6).unwrap();
    let k1 = run.knn().unwrap();
    let figures = run.write_figures(dir.join("figures")).unwrap();
    let history = run.history().to_vec();
    drop(run);

    let out = Command::new(&python)
        .args(["-c", READER])
        .arg(dir.join("tb"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    // The reader prints one JSON object: {tag: [[step, value], ...], "_images": {...}}.
    let series = |tag: &str| -> Vec<(usize, f64)> {
        let start = text
            .find(&format!("\"{tag}\": [["))
            .unwrap_or_else(|| panic!("no scalar '{tag}' in {text}"));
        let body = &text[start + tag.len() + 4..];
        let body = &body[..body.find("]]").unwrap() + 1];
        body.split("], [")
            .map(|p| {
                let p = p.trim_matches(|c| c == '[' || c == ']');
                let (s, v) = p.split_once(", ").unwrap();
                (s.parse().unwrap(), v.parse().unwrap())
            })
            .collect()
    };
    // The loss at steps 1, 2, 4, 6 (the first and every second), as the run recorded it.
    let loss = series("loss");
    let steps: Vec<usize> = loss.iter().map(|p| p.0).collect();
    assert_eq!(steps, [1, 2, 4, 6]);
    for (step, v) in &loss {
        let want = history[step - 1].loss as f64;
        assert!(
            (v - want).abs() <= 1e-6 * want.abs().max(1.0),
            "step {step}: {v} vs {want}"
        );
    }
    assert_eq!(series("loss/on_diag").len(), 4);
    assert_eq!(series("lr").len(), 4);
    let knn = series("knn/top1");
    assert_eq!(knn.len(), 2);
    assert_eq!(knn[0].0, 0);
    assert_eq!(knn[1].0, 6);
    assert!((knn[0].1 - k0.top1).abs() < 1e-4 && (knn[1].1 - k1.top1).abs() < 1e-4);
    // Every figure written is an image in the log, at step 6.
    for f in &figures {
        let name = f.file_stem().unwrap().to_string_lossy();
        assert!(
            text.contains(&format!("\"figures/{name}\": [[6, ")),
            "figure {name} missing from {text}"
        );
    }

    let csv = std::fs::read_to_string(dir.join("metrics.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines[0],
        "step,loss,on_diag,off_diag,lr,images_per_sec,knn_top1,knn_top5"
    );
    // kNN at init, then steps 1, 2, 4, 6; the last row carries the final kNN.
    let first: Vec<&str> = lines
        .iter()
        .skip(1)
        .map(|l| l.split(',').next().unwrap())
        .collect();
    assert_eq!(first, ["0", "1", "2", "4", "6"]);
    let last: Vec<&str> = lines[5].split(',').collect();
    assert_eq!(last[1].parse::<f32>().unwrap(), history[5].loss);
    assert!((last[6].parse::<f64>().unwrap() - k1.top1).abs() < 1e-9);
    let _ = std::fs::remove_dir_all(&dir);
}
