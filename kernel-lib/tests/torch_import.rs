//! PyTorch checkpoints: backbones round-trip through `.pth` files in the key layouts of the
//! official releases (written by `tests/fixtures/make_pth.py`, which needs Python but not
//! PyTorch), and bad checkpoints list what does not fit.

mod common;

use common::shrink_any;
use sslab::prelude::*;
use std::path::{Path, PathBuf};
use std::process::Command;

fn make_pth(src: &Path, dst: &Path, prefix: &str, wrapper: &str, extra: Option<&str>) {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/make_pth.py");
    let mut cmd = Command::new("python3");
    cmd.arg(script).arg(src).arg(dst).arg(prefix).arg(wrapper);
    if let Some(e) = extra {
        cmd.arg(e);
    }
    let out = cmd
        .output()
        .expect("python3 is needed to write .pth fixtures");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn config(preset: &str, seed: u64) -> RunConfig {
    let mut c = shrink_any(preset);
    c.seed = seed;
    c.model.vit_depth = 2;
    c
}

fn backbone(run: &Run, prefix: &str) -> Vec<(String, Vec<f32>)> {
    let mut stores = vec![run.method().params()];
    stores.extend(run.method().momentum_params());
    stores
        .iter()
        .flat_map(|s| s.params.iter())
        .filter(|p| p.name.starts_with(prefix))
        .map(|p| {
            let v = p
                .var
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_dtype(candle_core::DType::F32);
            (p.name.clone(), v.unwrap().to_vec1().unwrap())
        })
        .collect()
}

#[test]
fn official_layouts_load_into_every_method() {
    let dir = tempfile::tempdir().unwrap();
    // (our preset, release prefix, wrapper) per release family; ResNet-50 at width 4 keeps the
    // files small while the key layout is the real one.
    let cases = [
        ("moco-v1/tiny", "module.encoder_q.", "state_dict"),
        ("moco-v2/tiny", "module.encoder_q.", "state_dict"),
        ("moco-v3/resnet", "module.base_encoder.", "state_dict"),
        ("barlow-twins/tiny", "", "none"),
        ("densecl/tiny", "backbone.", "state_dict"),
        ("densecl/tiny", "encoder_q.0.", "state_dict"),
        ("moco-v3/vit-tiny", "module.base_encoder.", "model"),
    ];
    for (i, (preset, prefix, wrapper)) in cases.iter().enumerate() {
        let mut c = config(preset, 1);
        c.model.arch = sslab::models::Depth::R50;
        let source = Run::new(c.clone()).unwrap();
        let st = dir.path().join(format!("{i}.safetensors"));
        let n = source.export_backbone(&st).unwrap();
        assert!(n > 10);
        let pth = dir.path().join(format!("{i}.pth"));
        make_pth(&st, &pth, prefix, wrapper, None);
        c.seed = 2;
        let mut target = Run::new(c).unwrap();
        assert_ne!(
            backbone(&target, "backbone."),
            backbone(&source, "backbone.")
        );
        let report = target.import_backbone(&pth).unwrap();
        assert_eq!(report.prefix, *prefix, "{preset}");
        assert_eq!(
            backbone(&target, "backbone."),
            backbone(&source, "backbone."),
            "{preset} {prefix}"
        );
        // The momentum encoder starts from the same weights.
        let key: Vec<_> = backbone(&target, "momentum.backbone.")
            .into_iter()
            .map(|(n, v)| (n.trim_start_matches("momentum.").to_string(), v))
            .collect();
        if !key.is_empty() {
            assert_eq!(key, backbone(&source, "backbone."), "{preset}");
        }
        // Our own safetensors export loads back too, checked against its recorded digest:
        // a changed byte is refused naming the file.
        target.import_backbone(&st).unwrap();
        if i == 0 {
            let good = std::fs::read(&st).unwrap();
            let mut bad = good.clone();
            let mid = bad.len() / 2;
            bad[mid] ^= 0x40;
            std::fs::write(&st, &bad).unwrap();
            let e = target.import_backbone(&st).unwrap_err().to_string();
            assert!(
                e.contains(&format!("{i}.safetensors")) && e.contains("damaged"),
                "{e}"
            );
            std::fs::write(&st, &good).unwrap();
        }
        // And every diagnostic works on the imported model.
        target.correspondence().unwrap();
        target
            .similarity_map(0, (8, 8), sslab::train::FeatureSource::Backbone)
            .unwrap();
    }
}

#[test]
fn checkpoints_that_do_not_fit_list_the_keys() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config("moco-v2/tiny", 1);
    c.model.arch = sslab::models::Depth::R50;
    let r50 = Run::new(c.clone()).unwrap();
    let st = dir.path().join("r50.safetensors");
    r50.export_backbone(&st).unwrap();
    // An unexpected backbone key.
    let pth = dir.path().join("extra.pth");
    make_pth(
        &st,
        &pth,
        "module.encoder_q.",
        "state_dict",
        Some("layer9.0.conv1.weight"),
    );
    let mut target = Run::new(c.clone()).unwrap();
    let e = target.import_backbone(&pth).unwrap_err().to_string();
    assert!(
        e.contains("module.encoder_q.layer9.0.conv1.weight") && e.contains("extra.pth"),
        "{e}"
    );
    // A ResNet-50 file into a ResNet-18: missing and mis-shaped keys.
    let mut c18 = c.clone();
    c18.model.arch = sslab::models::Depth::R18;
    let mut r18 = Run::new(c18).unwrap();
    let e = r18.import_backbone(&st).unwrap_err().to_string();
    assert!(e.contains("wrong shape") && e.contains("unexpected"), "{e}");
    // A wider model: every shape wrong.
    let mut wide = c.clone();
    wide.model.width = 8;
    let e = Run::new(wide)
        .unwrap()
        .import_backbone(&st)
        .unwrap_err()
        .to_string();
    assert!(e.contains("conv1.weight: [4, 3, 3, 3] in the file"), "{e}");
    // Not a checkpoint at all, truncated, missing.
    let junk = dir.path().join("junk.pth");
    std::fs::write(&junk, b"definitely not a zip").unwrap();
    let e = target.import_backbone(&junk).unwrap_err().to_string();
    assert!(e.contains("junk.pth"), "{e}");
    let good = std::fs::read(&pth).unwrap();
    let cut = dir.path().join("cut.pth");
    std::fs::write(&cut, &good[..good.len() / 3]).unwrap();
    assert!(target
        .import_backbone(&cut)
        .unwrap_err()
        .to_string()
        .contains("cut.pth"));
    let e = target
        .import_backbone(dir.path().join("absent.pth"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("absent.pth"), "{e}");
}
