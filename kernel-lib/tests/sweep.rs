//! Sweeps: a 2×2 grid at a toy budget writes a CSV, a table and figures, and a re-run skips
//! the finished cells.

mod common;

use sslab::prelude::*;
use sslab::train::{Evaluations, RunSummary, Sweep};

#[test]
fn a_two_by_two_sweep_writes_csv_table_and_figures_and_resumes() {
    let out = tempfile::tempdir().unwrap();
    let mut base = common::shrink(RunConfig::preset("barlow-twins/tiny").unwrap());
    base.train.steps = 2;
    base.barlow_twins.projector = vec![16, 16];
    let sweep = Sweep::new(base, out.path())
        .vary("optim.lr", &["0.1", "0.3"])
        .unwrap()
        .vary("barlow_twins.projector", &["[8,8]", "[16,16]"])
        .unwrap()
        .evaluations(Evaluations {
            at_init: true,
            linear_probe: true,
            dense_probe: false,
            knn_every: 1,
        });
    let cells = sweep.cells().unwrap();
    assert_eq!(cells.len(), 4);
    assert_eq!(cells[1].config.barlow_twins.projector, vec![16, 16]);
    assert_eq!(cells[2].config.optim.lr, 0.3);
    let results = sweep.run().unwrap();
    assert_eq!(results.rows.len(), 4);
    // kNN at init, after step 1 (knn_every = 1) and at the end (step 2), the last the final one.
    let curve = &results.rows[0].1.knn_curve;
    assert_eq!(curve.iter().map(|c| c.0).collect::<Vec<_>>(), [0, 1, 2]);
    assert_eq!(curve[2].1, results.rows[0].1.knn_top1);

    // CSV: a header naming the keys and metrics, one line per cell, numbers where they belong.
    let csv = std::fs::read_to_string(out.path().join("results.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 5, "{csv}");
    assert!(
        lines[0]
            .starts_with("optim.lr,barlow_twins.projector,seed,knn_top1,knn_change,linear_top1"),
        "{}",
        lines[0]
    );
    assert!(lines[2].starts_with("0.1,\"[16,16]\",0,"), "{}", lines[2]);
    for (cell, line) in results.rows.iter().zip(&lines[1..]) {
        // The projector value holds a quoted comma: take the numbers from the end.
        let knn: f64 = line.rsplit(',').nth(5).unwrap().parse().unwrap();
        assert!((knn - cell.1.knn_top1).abs() < 1e-3, "{line}");
        assert!((0.0..=100.0).contains(&knn));
    }

    // Table: a row per combination with every column filled.
    let md = std::fs::read_to_string(out.path().join("results.md")).unwrap();
    let rows: Vec<&str> = md.lines().filter(|l| l.starts_with("| `")).collect();
    assert_eq!(rows.len(), 4, "{md}");
    assert!(
        rows[3].starts_with("| `0.3` | `[16,16]` | 1 |"),
        "{}",
        rows[3]
    );
    assert!(!rows.iter().any(|r| r.contains("|  |")), "{md}");

    // Figures: a PNG per plotted metric, a real picture.
    for name in ["knn_top1", "knn_change", "linear_top1"] {
        let img = image::open(out.path().join(format!("{name}.png"))).unwrap();
        assert_eq!((img.width(), img.height()), (640, 420));
        let px = img.to_rgb8();
        let non_white = px.pixels().filter(|p| p.0 != [255, 255, 255]).count();
        assert!(non_white > 2000, "{name}.png is nearly blank");
    }

    // A second run reuses every summary instead of training again.
    let mtime = |c: &sslab::train::SweepCell| {
        std::fs::metadata(c.dir.join("summary.json"))
            .unwrap()
            .modified()
            .unwrap()
    };
    let before: Vec<_> = cells.iter().map(mtime).collect();
    let again = sweep.run().unwrap();
    let after: Vec<_> = cells.iter().map(mtime).collect();
    assert_eq!(before, after);
    assert_eq!(again.rows.len(), 4);
    let s = RunSummary::load(cells[0].dir.join("summary.json")).unwrap();
    assert_eq!(s, results.rows[0].1);
}

#[test]
fn seeds_aggregate_into_mean_and_spread() {
    let out = tempfile::tempdir().unwrap();
    let mut base = common::shrink(RunConfig::preset("barlow-twins/tiny").unwrap());
    base.train.steps = 1;
    base.barlow_twins.projector = vec![8, 8];
    let results = Sweep::new(base, out.path())
        .vary("optim.lr", &["0.1"])
        .unwrap()
        .seeds(2)
        .logged(true)
        .run()
        .unwrap();
    assert_eq!(results.rows.len(), 2);
    // Each cell logged into its own folder: one events file, a CSV row ending at its one step.
    for (cell, _) in &results.rows {
        let events: Vec<_> = std::fs::read_dir(cell.dir.join("tb"))
            .unwrap()
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("events.out.tfevents.")
            })
            .collect();
        assert_eq!(events.len(), 1, "{}", cell.dir.display());
        assert!(events[0].metadata().unwrap().len() > 100);
        let csv = std::fs::read_to_string(cell.dir.join("metrics.csv")).unwrap();
        let lines: Vec<&str> = csv.lines().collect();
        assert!(lines[0].starts_with("step,"), "{csv}");
        assert!(
            lines.len() >= 2 && lines[lines.len() - 1].starts_with("1,"),
            "{csv}"
        );
    }
    assert_eq!((results.rows[0].0.seed, results.rows[1].0.seed), (0, 1));
    let k: Vec<f64> = results.rows.iter().map(|r| r.1.knn_top1).collect();
    let mean = (k[0] + k[1]) / 2.0;
    let sd = ((k[0] - mean).powi(2) + (k[1] - mean).powi(2)).sqrt(); // n − 1 = 1
    let md = results.markdown();
    assert!(
        md.contains(&format!("| {mean:.2} ± {sd:.2} |")),
        "{md} lacks {mean:.2} ± {sd:.2}"
    );
}

#[test]
fn bad_sweeps_are_refused_up_front() {
    let base = RunConfig::preset("barlow-twins/tiny").unwrap();
    let e = Sweep::new(base.clone(), "x")
        .vary("optim.lr", &["0.1", "-1"])
        .unwrap_err();
    assert!(e.to_string().contains("optim.lr"), "{e}");
    let e = Sweep::new(base.clone(), "x")
        .vary("optim.nope", &["1"])
        .unwrap_err();
    assert!(e.to_string().contains("optim.nope"), "{e}");
    let e = Sweep::new(base, "x").vary("optim.lr", &[]).unwrap_err();
    assert!(e.to_string().contains("at least one value"), "{e}");
}

#[test]
fn combinations_are_compared_with_the_first_paired_by_seed() {
    use sslab::train::{SweepCell, SweepResults};
    let cell = |lr: &str, seed: u64, knn: f64| {
        let cell = SweepCell {
            values: vec![("optim.lr".into(), lr.into())],
            seed,
            dir: "x".into(),
            config: RunConfig::preset("barlow-twins/tiny").unwrap(),
        };
        let summary = RunSummary {
            knn_top1: knn,
            ..RunSummary::default()
        };
        (cell, summary)
    };
    // Seed 3 ran only at 0.3: it has no partner and stays out of the paired table.
    let rows = vec![
        cell("0.1", 0, 20.0),
        cell("0.1", 1, 25.0),
        cell("0.1", 2, 30.0),
        cell("0.3", 0, 21.0),
        cell("0.3", 1, 27.0),
        cell("0.3", 2, 30.0),
        cell("0.3", 3, 90.0),
    ];
    let results = SweepResults {
        axes: vec!["optim.lr".into()],
        rows,
    };
    let md = results.markdown();
    // Differences 1, 2, 0: mean 1, sd 1, standard error 1/√3.
    let (head, paired) = md.split_once("paired by seed").expect(&md);
    assert!(head.contains("Against optim.lr = `0.1`"), "{md}");
    let row = paired
        .lines()
        .find(|l| l.starts_with("| `0.3`"))
        .expect(&md);
    assert!(row.starts_with("| `0.3` | 3 | +1.00 ± 0.58 |"), "{row}");
    assert!(!paired.contains("| `0.1`"), "{md}");

    // One seed each: the first table says it all, no paired one.
    let one = SweepResults {
        axes: vec!["optim.lr".into()],
        rows: vec![cell("0.1", 0, 20.0), cell("0.3", 0, 21.0)],
    };
    assert!(!one.markdown().contains("paired"), "{}", one.markdown());
}
