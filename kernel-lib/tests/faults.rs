//! Faults injected on purpose, each shown to lose nothing already saved: the disk filling up in
//! the middle of a checkpoint; NaN or infinity reaching a step through its batch-derived loss or
//! its gradients. (A kill mid-checkpoint and mid-prune, and two writers of one folder, are in
//! `repl/tests/cli.rs` and `tests/checkpoint.rs`; damaged and non-finite checkpoint files in
//! `tests/checkpoint.rs`.)

mod common;

use common::shrink_any;
use sslab::prelude::*;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A small tmpfs mounted for one test and unmounted when dropped; `None` (the test then says
/// it skipped) where this process may not mount, i.e. not as root.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(bytes: usize) -> Option<(tempfile::TempDir, SmallDisk)> {
        let dir = tempfile::tempdir().ok()?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("skipping: cannot mount a tmpfs here (needs root)");
            return None;
        }
        let path = dir.path().to_path_buf();
        Some((dir, SmallDisk(path)))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    v.sort();
    v
}

#[test]
fn a_full_disk_during_a_save_keeps_the_previous_checkpoint() {
    let Some((_tmp, disk)) = SmallDisk::mount(64 << 20) else {
        return;
    };
    let ckpt = disk.0.join("ckpt");
    let mut run = Run::new(shrink_any("barlow-twins/tiny")).unwrap();
    run.train(1).unwrap();
    run.save(&ckpt).unwrap();
    let saved = names(&ckpt);
    let size: u64 = std::fs::read_dir(&ckpt)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    // Fill the disk to half a checkpoint short of full.
    let free = {
        let out = Command::new("df")
            .args(["-B1", "--output=avail"])
            .arg(&disk.0)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .unwrap()
            .trim()
            .parse::<u64>()
            .unwrap()
    };
    let filler = disk.0.join("filler");
    std::fs::write(&filler, vec![1u8; (free - size / 2) as usize]).unwrap();
    run.train(1).unwrap();
    let e = run
        .save(&ckpt)
        .expect_err("a save onto a full disk succeeded")
        .to_string();
    assert!(e.contains("No space left") || e.contains("space"), "{e}");
    // The previous checkpoint is intact and nothing half-written is left beside it.
    assert_eq!(names(&ckpt), saved);
    let back = Run::load(&ckpt).unwrap();
    assert_eq!(back.steps_done(), 1);
    // With room again, the same save goes through.
    std::fs::remove_file(&filler).unwrap();
    run.save(&ckpt).unwrap();
    assert_eq!(Run::load(&ckpt).unwrap().steps_done(), 2);
}
