//! Executes every notebook in `notebooks/` with the evcxr Rust kernel (through
//! `notebooks/execute.py`, with `SSLAB_BUDGET=small`), failing on any cell error or on a
//! notebook without an image output; and checks that the committed notebooks' outputs were
//! written from their current code cells (`execute.py --check`).
//!
//! Needs the notebook toolchain (`.ci/run` installs it: a venv in `.venv-nb` with nbclient,
//! and `evcxr_jupyter --install`). Without it the test says so and passes, except under CI
//! (`CI` set), where a missing toolchain is a failure.

use std::path::PathBuf;
use std::process::Command;

fn notebooks(root: &std::path::Path) -> Vec<PathBuf> {
    let mut notebooks: Vec<PathBuf> = std::fs::read_dir(root.join("notebooks"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "ipynb"))
        .collect();
    notebooks.sort();
    assert_eq!(notebooks.len(), 5, "{notebooks:?}");
    notebooks
}

/// A notebook whose code cells changed after `execute.py --write` saved its outputs shows
/// figures of code that is no longer there: stale, and a failure until it is re-executed.
#[test]
fn committed_notebooks_carry_outputs_of_their_current_code() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = match Command::new("python3")
        .arg(root.join("notebooks/execute.py"))
        .arg("--check")
        .args(notebooks(&root))
        .output()
    {
        Ok(out) => out,
        Err(e) => {
            assert!(std::env::var_os("CI").is_none(), "python3 missing: {e}");
            eprintln!("skipped: python3 missing ({e})");
            return;
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains(" 0 stale,"), "{stdout}");

    // The check catches an edit: one code cell of a copy changed by a comment line.
    let dir = std::env::temp_dir().join(format!("sslab-nb-stale-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let copy = dir.join("edited.ipynb");
    let text = std::fs::read_to_string(&notebooks(&root)[0]).unwrap();
    let code = text.find("\"cell_type\": \"code\"").expect("a code cell");
    let source = code + text[code..].find("\"source\": [").expect("its source") + 11;
    let edited = format!("{}\"// edited\\n\", {}", &text[..source], &text[source..]);
    std::fs::write(&copy, edited).unwrap();
    let out = Command::new("python3")
        .arg(root.join("notebooks/execute.py"))
        .arg("--check")
        .arg(&copy)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    std::fs::remove_dir_all(&dir).ok();
    assert!(!out.status.success(), "{stdout}");
    assert!(stdout.contains("0 current, 1 stale, 0 without"), "{stdout}");
}

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
    let out = Command::new(&python)
        .arg(root.join("notebooks/execute.py"))
        .args(notebooks(&root))
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
