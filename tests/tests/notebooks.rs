//! Executes every notebook in `notebooks/` with the evcxr Rust kernel (through
//! `notebooks/execute.py`, with `SSLAB_BUDGET=small`), failing on any cell error or on a
//! notebook without an image output.
//!
//! Needs the notebook toolchain (`.ci/run` installs it: a venv in `.venv-nb` with nbclient,
//! and `evcxr_jupyter --install`). Without it the test says so and passes, except under CI
//! (`CI` set), where a missing toolchain is a failure.

use std::path::PathBuf;
use std::process::Command;

#[test]
fn notebooks_execute_and_show_figures() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let python = root.join(".venv-nb/bin/python");
    let kernel = Command::new("evcxr_jupyter").arg("--help").output();
    if !python.exists() || kernel.is_err() {
        let msg =
            "notebook toolchain missing (.venv-nb and evcxr_jupyter; see notebooks/README.md)";
        assert!(std::env::var_os("CI").is_none(), "{msg}");
        eprintln!("skipped: {msg}");
        return;
    }
    let mut notebooks: Vec<PathBuf> = std::fs::read_dir(root.join("notebooks"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "ipynb"))
        .collect();
    notebooks.sort();
    assert_eq!(notebooks.len(), 5, "{notebooks:?}");
    let out = Command::new(&python)
        .arg(root.join("notebooks/execute.py"))
        .args(&notebooks)
        .env("SSLAB_BUDGET", "small")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("5 passed, 0 failed"), "{stdout}");
}
