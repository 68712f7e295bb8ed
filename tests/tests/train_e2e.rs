//! End to end over the public API: the tiny Barlow Twins preset learns on the built-in data.

use sslab::prelude::*;

#[test]
fn barlow_twins_tiny_lowers_the_loss_on_builtin_shapes() {
    let mut cfg = RunConfig::preset("barlow-twins/tiny").unwrap();
    cfg.device = "cpu".into();
    // The preset's network and recipe, on a smaller slice of the data and a short schedule.
    cfg.data.shapes.train = 1024;
    cfg.data.shapes.test = 200;
    cfg.train.steps = 30;
    cfg.optim.warmup_epochs = 0.5;
    let mut run = Run::new(cfg).unwrap();
    let summary = run.train(30).unwrap();
    let h = run.history();
    let mean = |r: &[StepReport]| r.iter().map(|s| s.loss as f64).sum::<f64>() / r.len() as f64;
    let (first, last) = (mean(&h[..5]), mean(&h[25..]));
    assert!(
        last < 0.9 * first,
        "loss did not fall: first five {first:.3}, last five {last:.3}"
    );
    assert!(summary.images_per_sec > 0.0);
    assert!(h.iter().all(|r| r.loss.is_finite()));
}

#[test]
fn real_fashion_mnist_loads_when_installed() {
    // `.ci/run` installs Debian's dataset-fashion-mnist; elsewhere the test has nothing to read.
    let dir = std::path::Path::new("/usr/share/datasets/fashion-mnist");
    if !dir.exists() {
        eprintln!(
            "skipped: {} not installed (apt-get install dataset-fashion-mnist)",
            dir.display()
        );
        return;
    }
    let (train, test) = sslab::data::DataSource::FashionMnist(dir.into())
        .load()
        .unwrap();
    assert_eq!((train.len(), test.len()), (60_000, 10_000));
    let img = train.image(0);
    assert_eq!((img.width, img.height, img.channels), (28, 28, 1));
    let mut counts = [0usize; 10];
    for i in 0..test.len() {
        counts[test.label(i)] += 1;
    }
    assert!(counts.iter().all(|&c| c == 1000), "{counts:?}");
}
