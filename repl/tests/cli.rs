//! The `sslab` binary: `train` writes a complete summary, errors exit non-zero with a message.

use std::path::PathBuf;
use std::process::Command;

/// The workspace's `sslab` binary, built by the same `cargo test --workspace` invocation.
fn sslab() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|d| d.parent()).unwrap();
    let bin = dir.join("sslab");
    assert!(
        bin.exists(),
        "{} missing: run the tests with `cargo test --release --workspace`",
        bin.display()
    );
    bin
}

/// Runs `cmd` and asserts it succeeded (stdout and stderr in the message, after `what`);
/// returns stdout.
fn run_ok(cmd: &mut Command, what: &str) -> String {
    let res = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&res.stdout).to_string();
    assert!(
        res.status.success(),
        "{what} stdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&res.stderr)
    );
    stdout
}

/// Runs `sslab train METHOD` on small shapes (256/64 images, width 8, batch 32) with `extra`
/// arguments into a fresh folder; asserts success and returns stdout and the summary.
fn train_small(method: &str, extra: &[&str]) -> (String, serde_json::Value, tempfile::TempDir) {
    let out = tempfile::tempdir().unwrap();
    let stdout = run_ok(
        Command::new(sslab())
            .args(["train", method, "--device", "cpu"])
            .args([
                "--set",
                "data.shapes.train=256",
                "--set",
                "data.shapes.test=64",
            ])
            .args(["--set", "model.width=8", "--set", "train.batch_size=32"])
            .args(extra)
            .arg("--out")
            .arg(out.path()),
        method,
    );
    let summary =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("summary.json")).unwrap())
            .unwrap();
    (stdout, summary, out)
}

#[test]
fn train_writes_summary_json() {
    let (stdout, s, out) = train_small("barlow-twins", &["--steps", "3"]);
    assert!(
        stdout.contains("kNN top-1 at init") && stdout.contains("kNN top-1 at end"),
        "{stdout}"
    );
    for key in [
        "method",
        "preset",
        "steps",
        "final_loss",
        "knn_top1",
        "knn_top1_at_init",
        "images_per_sec",
        "device",
        "seconds",
    ] {
        assert!(!s[key].is_null(), "summary.json lacks {key}: {s}");
    }
    assert_eq!(s["method"], "barlow-twins");
    assert_eq!(s["preset"], "barlow-twins/tiny");
    assert_eq!(s["steps"], 3);
    assert_eq!(s["device"], "cpu");
    assert!(out.path().join("config.toml").exists());
    for fig in [
        "curves",
        "grad_spikes",
        "collapse",
        "correlation",
        "similarity",
        "views",
    ] {
        let p = out.path().join("figures").join(format!("{fig}.png"));
        assert!(
            p.exists() && stdout.contains(&p.display().to_string()),
            "{fig}: {stdout}"
        );
    }
}

#[test]
fn resume_from_a_periodic_checkpoint_in_a_fresh_process_matches_the_straight_run() {
    let (_, straight, out) = train_small(
        "moco-v2",
        &[
            "--steps",
            "6",
            "--checkpoint-every",
            "2",
            "--no-figures",
            "--set",
            "moco.queue_size=64",
        ],
    );
    let step4 = out.path().join("checkpoints").join("step-00000004");
    assert!(step4.join("run.json").exists());
    let out2 = tempfile::tempdir().unwrap();
    let stdout = run_ok(
        Command::new(sslab())
            .args(["train", "moco-v2", "--no-figures", "--resume"])
            .arg(&step4)
            .arg("--out")
            .arg(out2.path()),
        "resume",
    );
    assert!(stdout.contains("resumed at step 4"), "{stdout}");
    let resumed: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out2.path().join("summary.json")).unwrap())
            .unwrap();
    assert_eq!(resumed["resumed_from_step"], 4);
    assert_eq!(resumed["steps"], 6);
    assert_eq!(
        resumed["final_loss"], straight["final_loss"],
        "bit-identical final loss"
    );
    assert_eq!(resumed["knn_top1"], straight["knn_top1"]);
    // A checkpoint of another method is refused with a message naming it.
    let res = Command::new(sslab())
        .args(["train", "barlow-twins", "--resume"])
        .arg(&step4)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(!res.status.success() && err.contains("moco-v2"), "{err}");
}

#[test]
fn moco_and_densecl_train_with_the_same_summary_contract() {
    for method in ["moco-v1", "moco-v2", "densecl"] {
        let (_, s, _out) = train_small(
            method,
            &[
                "--steps",
                "2",
                "--dense-probe",
                "--set",
                "moco.queue_size=128",
                "--set",
                "eval.dense_probe_steps=20",
            ],
        );
        assert_eq!(s["method"], method);
        assert_eq!(s["preset"], format!("{method}/tiny"));
        for key in [
            "final_loss",
            "knn_top1",
            "knn_top1_at_init",
            "dense_probe_miou",
            "dense_probe_miou_at_init",
            "images_per_sec",
        ] {
            assert!(
                s[key].is_number(),
                "{method}: summary.json lacks {key}: {s}"
            );
        }
        let miou = s["dense_probe_miou"].as_f64().unwrap();
        assert!((0.0..=100.0).contains(&miou), "{method}: mIoU {miou}");
    }
}

#[test]
fn moco_v3_trains_on_a_vit_and_a_resnet_with_short_preset_names() {
    for preset in ["vit-tiny", "resnet"] {
        let (_, s, _out) = train_small(
            "moco-v3",
            &[
                "--preset",
                preset,
                "--steps",
                "1",
                "--set",
                "model.vit_depth=1",
                "--set",
                "moco_v3.hidden=64",
            ],
        );
        assert_eq!(s["preset"], format!("moco-v3/{preset}"));
        assert!(
            s["knn_top1"].is_number() && s["final_loss"].is_number(),
            "{s}"
        );
    }
}

#[test]
fn bad_arguments_exit_nonzero_with_a_message() {
    for args in [
        vec!["train", "barlow-twins", "--preset", "barlow-twins/huge"],
        vec!["train", "barlow-twins", "--set", "optim.lr=-1"],
        vec!["train", "barlow-twins", "--data", "cifar10:/no/such/dir"],
        vec!["train", "barlow-twins", "--config", "/no/such/file.toml"],
        vec!["train", "swav"],
        vec!["train", "moco-v2", "--set", "moco.queue_size=1000"],
        vec!["train", "densecl", "--set", "moco.symmetric=true"],
        vec!["train", "moco-v2", "--set", "model.backbone=vit"],
        vec!["train", "moco-v3", "--preset", "vit-huge"],
    ] {
        let out = tempfile::tempdir().unwrap();
        let dir = out.path().join("run");
        let res = Command::new(sslab())
            .args(&args)
            .arg("--out")
            .arg(&dir)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&res.stderr);
        assert!(!res.status.success(), "{args:?} succeeded");
        assert!(err.starts_with("error:"), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
        assert!(!dir.exists(), "{args:?} left an output folder behind");
    }
}

#[test]
fn bad_command_lines_exit_non_zero_with_a_message_and_no_panic() {
    let dir = tempfile::tempdir().unwrap();
    let not_a_run = dir.path().join("not-a-run");
    std::fs::create_dir_all(&not_a_run).unwrap();
    let file = dir.path().join("plain.txt");
    std::fs::write(&file, "hello").unwrap();
    let cases: Vec<Vec<String>> = [
        vec!["train"],
        vec!["train", "swav"],
        vec!["train", "barlow-twins", "--steps", "-3"],
        vec!["train", "barlow-twins", "--steps", "abc"],
        vec!["train", "barlow-twins", "--preset", "giant"],
        vec!["train", "moco-v2", "--preset", "barlow-twins/tiny"],
        vec!["train", "barlow-twins", "--set", "optim.lr"],
        vec!["train", "barlow-twins", "--set", "optim.lr=-1"],
        vec!["train", "barlow-twins", "--set", "nope=1"],
        vec![
            "train",
            "barlow-twins",
            "--data",
            "cifar10:/definitely/missing",
        ],
        vec!["train", "barlow-twins", "--device", "tpu"],
        vec![
            "train",
            "barlow-twins",
            "--config",
            "/definitely/missing.toml",
        ],
        vec!["train", "barlow-twins", "--resume", "/definitely/missing"],
        vec![
            "train",
            "barlow-twins",
            "--resume",
            not_a_run.to_str().unwrap(),
        ],
        vec!["train", "barlow-twins", "--resume", file.to_str().unwrap()],
        vec!["bench", "nothing"],
        vec!["bench", "barlow-twins", "--set", "x"],
        vec!["frobnicate"],
    ]
    .iter()
    .map(|v| v.iter().map(|s| s.to_string()).collect())
    .collect();
    for args in cases {
        let mut cmd = Command::new(sslab());
        cmd.args(&args);
        if args.len() > 1 && args[0] == "train" {
            cmd.arg("--out").arg(dir.path().join("out"));
        }
        let res = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&res.stderr);
        assert!(!res.status.success(), "{args:?} succeeded");
        assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
        assert!(err.trim().len() > 10, "{args:?}: no message: {err}");
    }
}

#[test]
fn a_training_process_killed_mid_checkpoint_leaves_a_loadable_checkpoint() {
    for (round, delay_ms) in [0u64, 7, 23].into_iter().enumerate() {
        let out = tempfile::tempdir().unwrap();
        let mut child = Command::new(sslab())
            .args([
                "train",
                "moco-v2",
                "--device",
                "cpu",
                "--no-figures",
                "--no-init-knn",
            ])
            .args([
                "--set",
                "data.shapes.train=256",
                "--set",
                "data.shapes.test=64",
            ])
            .args(["--set", "model.width=8", "--set", "train.batch_size=32"])
            .args(["--set", "moco.queue_size=64", "--steps", "400"])
            .args(["--checkpoint-every", "1"])
            .arg("--out")
            .arg(out.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let ckpts = out.path().join("checkpoints");
        let first = ckpts.join("step-00000002").join("run.json");
        let t0 = std::time::Instant::now();
        while !first.exists() {
            assert!(t0.elapsed().as_secs() < 120, "no checkpoint appeared");
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        // A second process asking for the same output folder is refused while this one runs.
        let same_out = || {
            let mut c = Command::new(sslab());
            c.args([
                "train",
                "moco-v2",
                "--device",
                "cpu",
                "--no-figures",
                "--no-init-knn",
            ])
            .args([
                "--set",
                "data.shapes.train=64",
                "--set",
                "data.shapes.test=16",
            ])
            .args(["--set", "model.width=4", "--set", "train.batch_size=16"])
            .args(["--set", "moco.queue_size=32", "--steps", "1", "--out"])
            .arg(out.path());
            c
        };
        if round == 0 {
            let second = same_out().output().unwrap();
            let err = String::from_utf8_lossy(&second.stderr);
            assert!(!second.status.success(), "a second writer was let in");
            assert!(err.contains("in use by another sslab process"), "{err}");
        }
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        child.kill().unwrap(); // SIGKILL on Unix
        child.wait().unwrap();
        // The killed process left no stale lock: the folder is usable again at once.
        if round == 0 {
            let again = same_out().output().unwrap();
            assert!(
                again.status.success(),
                "{}",
                String::from_utf8_lossy(&again.stderr)
            );
        }
        // The newest complete checkpoint, continued by one step (a longer schedule is fine:
        // the load is what is checked).
        let newest = std::fs::read_dir(&ckpts)
            .unwrap()
            .flatten()
            .filter(|e| e.path().join("run.json").exists())
            .filter_map(|e| {
                e.file_name()
                    .to_string_lossy()
                    .strip_prefix("step-")?
                    .parse::<usize>()
                    .ok()
            })
            .max()
            .unwrap();
        let stdout = run_ok(
            Command::new(sslab())
                .args([
                    "train",
                    "moco-v2",
                    "--no-figures",
                    "--no-init-knn",
                    "--resume",
                ])
                .arg(&ckpts)
                .args(["--steps", &(newest + 1).to_string()])
                .arg("--out")
                .arg(out.path().join("resumed")),
            &format!("round {round}"),
        );
        assert!(
            stdout.contains("resumed at step"),
            "round {round}: {stdout}"
        );
    }
}

#[test]
fn example_scripts_run_every_shell_command() {
    let examples = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples");
    for (name, pngs) in [
        (
            "barlow-twins",
            vec![
                "loss-step6.png",
                "corr-step6.png",
                "collapse-step6.png",
                "views-step6.png",
            ],
        ),
        (
            "moco-v2",
            vec![
                "spikes-step8.png",
                "sim-step8.png",
                "correspondence-step8.png",
            ],
        ),
        ("moco-v1", vec!["loss-step4.png", "lr-step4.png"]),
        ("densecl", vec!["sim-step5.png", "correspondence-step5.png"]),
        ("moco-v3", vec!["spikes-step4.png", "collapse-step6.png"]),
    ] {
        let work = tempfile::tempdir().unwrap();
        let figs = work.path().join("figs");
        let out = run_ok(
            Command::new(sslab())
                .current_dir(work.path())
                .arg("--figures")
                .arg(&figs)
                .arg("run")
                .arg(examples.join(format!("{name}.sslab"))),
            name,
        );
        for png in pngs {
            let p = figs.join(png);
            assert!(p.exists(), "{name}: {png} missing\n{out}");
            assert!(
                out.contains(&format!("wrote {}", p.display())),
                "{name}: {out}"
            );
        }
        assert!(out.contains("> quit"), "{name}: {out}");
        if name == "moco-v1" {
            assert!(
                out.contains("[moco]") && out.contains("tau = 0.07"),
                "config: {out}"
            );
            assert!(out.contains("cpu (built without CUDA"), "device: {out}");
            assert!(out.contains("train <n>"), "help: {out}");
        }
    }
}

#[test]
fn a_script_stops_at_its_first_error_with_the_line_number() {
    let work = tempfile::tempdir().unwrap();
    let script = work.path().join("bad.sslab");
    std::fs::write(&script, "# comment\nhelp\nstep 1\nhelp\n").unwrap();
    let res = Command::new(sslab())
        .arg("run")
        .arg(&script)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(!res.status.success());
    assert!(
        err.contains("bad.sslab:3:") && err.contains("no run yet"),
        "{err}"
    );
    // Standard input works the same way.
    let mut child = Command::new(sslab())
        .args(["run", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"help\nquit\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("train <n>"));
}

/// A real interactive session through a pseudo-terminal: completion, a long `train` stopped
/// with Ctrl-C, the run intact afterwards, Ctrl-C at the prompt, Ctrl-D to leave.
#[test]
fn interactive_session_in_a_pty_survives_ctrl_c() {
    let work = tempfile::tempdir().unwrap();
    let hist = work.path().join("history");
    let mut cmd = Command::new(sslab());
    cmd.arg("--figures")
        .arg(work.path().join("figs"))
        .env("SSLAB_HISTORY", &hist)
        .env("TERM", "xterm-256color")
        .current_dir(work.path());
    let mut p = rexpect::session::spawn_command(cmd, Some(120_000)).unwrap();
    p.exp_string("sslab> ").unwrap();
    // Tab completes a unique command prefix.
    p.send("hel\t").unwrap();
    p.flush().unwrap();
    p.exp_string("help").unwrap();
    p.send_line("").unwrap();
    p.exp_string("list commands, or explain one").unwrap();
    p.exp_string("sslab> ").unwrap();
    p.send_line(
        "new barlow-twins tiny data.shapes.train=256 data.shapes.test=64 model.width=8 \
         train.batch_size=32 train.steps=500",
    )
    .unwrap();
    p.exp_string("new barlow-twins run").unwrap();
    p.exp_string("sslab> ").unwrap();
    p.send_line("train 400").unwrap();
    p.exp_string("3/400").unwrap();
    p.send_control('c').unwrap();
    p.exp_string("stopped after").unwrap();
    p.exp_string("the run is intact").unwrap();
    p.exp_string("sslab> ").unwrap();
    p.send_line("history 1").unwrap();
    let (_, step_line) = p.exp_regex(r"step +\d+ +loss").unwrap();
    assert!(step_line.contains("loss"));
    p.exp_string("sslab> ").unwrap();
    // Ctrl-C at the prompt does not leave; an unknown command is one line of error.
    p.send_control('c').unwrap();
    p.exp_string("Ctrl-C").unwrap();
    p.send_line("bogus").unwrap();
    p.exp_string("error: unknown command 'bogus'").unwrap();
    p.send_line("step").unwrap();
    p.exp_regex(r"step +\d+ +loss").unwrap();
    p.exp_string("sslab> ").unwrap();
    p.send_control('d').unwrap();
    p.exp_eof().unwrap();
    let saved = std::fs::read_to_string(&hist).unwrap();
    assert!(
        saved.contains("train 400") && saved.contains("history 1"),
        "{saved}"
    );
}
