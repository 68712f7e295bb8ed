//! The `Run` handle on a small configuration: determinism, reports, kNN, errors.

mod common;

use sslab::prelude::*;

fn small() -> RunConfig {
    let mut c = common::shrink(RunConfig::preset("barlow-twins/tiny").unwrap());
    c.barlow_twins.projector = vec![32, 32];
    c
}

#[test]
fn same_seed_gives_identical_first_three_losses() {
    let losses = |seed: u64| {
        let mut c = small();
        c.seed = seed;
        let mut run = Run::new(c).unwrap();
        (0..3)
            .map(|_| run.step().unwrap().loss)
            .collect::<Vec<f32>>()
    };
    let a = losses(3);
    assert_eq!(a, losses(3));
    assert_ne!(a, losses(4));
}

#[test]
fn step_reports_and_history() {
    let mut run = Run::new(small()).unwrap();
    let r = run.step().unwrap();
    assert_eq!(r.step, 1);
    assert!(r.loss.is_finite() && r.seconds > 0.0 && r.images_per_sec > 0.0);
    let names: Vec<&str> = r.parts.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names, ["on_diag", "off_diag"]);
    // loss = scale·(on + λ·off)
    let c = run.config().barlow_twins.clone();
    let expect = c.scale_loss as f32 * (r.parts[0].1 + c.lambda as f32 * r.parts[1].1);
    assert!((r.loss - expect).abs() < 1e-3 * expect.abs());
    assert!(format!("{r}").contains("on_diag"));
    let s = run.train(2).unwrap();
    assert_eq!((s.steps, run.steps_done(), run.history().len()), (2, 3, 3));
    let cc = run.last_cross_correlation().unwrap();
    assert_eq!(cc.dims(), &[32, 32]);
    let k = run.knn().unwrap();
    assert!((0.0..=100.0).contains(&k.top1) && k.top5 >= k.top1);
    assert_eq!((k.bank, k.queries), (64, 20));
    assert_eq!(run.knn_history().len(), 1);
}

#[test]
fn bad_configs_error_instead_of_panicking() {
    let mut c = small();
    c.train.batch_size = 1000; // more than the 64 training images
    let e = Run::new(c).err().unwrap().to_string();
    assert!(e.contains("train.batch_size"), "{e}");
    let mut c = small();
    c.data.source = "cifar10:/no/such/dir".into();
    assert!(Run::new(c)
        .err()
        .unwrap()
        .to_string()
        .contains("/no/such/dir"));
    let mut c = small();
    c.device = "cuda".into();
    if !candle_core::utils::cuda_is_available() {
        assert!(Run::new(c).err().unwrap().to_string().contains("device"));
    }
}

#[test]
fn huge_learning_rate_reports_non_finite_loss_without_applying_it() {
    let mut c = small();
    c.optim.kind = sslab::optim::OptimName::Sgd;
    c.optim.lr = 1e30;
    c.optim.scale_lr_with_batch = false;
    let mut run = Run::new(c).unwrap();
    let mut got = None;
    for _ in 0..6 {
        match run.step() {
            Ok(_) => {}
            Err(e) => {
                got = Some(e);
                break;
            }
        }
    }
    let e = got.expect("an lr of 1e30 must blow up");
    // Either the loss or, caught first, the gradients of the blown-up weights.
    match &e {
        Error::NonFinite { .. } => assert!(
            e.to_string().contains("on_diag="),
            "the message names the parts: {e}"
        ),
        Error::NonFiniteGradient { param, .. } => assert!(!param.is_empty(), "{e}"),
        _ => panic!("{e}"),
    }
    // The run is as it was after the last good step: BN statistics untouched, and the same
    // step fails again identically (same batch), then the run still saves and loads.
    let snapshot = |run: &Run| -> Vec<Vec<u32>> {
        run.method()
            .params()
            .params
            .iter()
            .filter(|p| p.kind == sslab::models::ParamKind::Buffer)
            .map(|p| {
                let v: Vec<f32> = p.var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
                v.into_iter().map(f32::to_bits).collect()
            })
            .collect()
    };
    let before = snapshot(&run);
    let again = run.step().unwrap_err().to_string();
    assert_eq!(again, e.to_string());
    assert_eq!(snapshot(&run), before);
    let dir = tempfile::tempdir().unwrap();
    run.save(dir.path()).unwrap();
    assert_eq!(
        Run::load(dir.path()).unwrap().steps_done(),
        run.steps_done()
    );
    // The failed step was not applied: the optimiser took exactly the reported steps.
    assert_eq!(run.optimizer().steps(), run.steps_done());
    assert_eq!(run.history().len(), run.steps_done());
}
