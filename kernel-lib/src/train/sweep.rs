//! Sweeps: a grid of runs over config keys and seeds, run one after another, each cell in its
//! own folder with the `summary.json` of `sslab train`, collected into a table and figures.
//!
//! A cell whose `summary.json` exists is finished and is not run again, so an interrupted
//! sweep resumes where it stopped, and widening a grid only runs the new cells.

use super::config::RunConfig;
use super::run::Run;
use super::summary::{Evaluations, RunSummary};
use crate::error::{Error, Result};
use crate::plot::{Figure, Panel, Series};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// A grid of runs: every combination of the varied values, times `seeds` seeds.
///
/// ```no_run
/// use sslab::train::{RunConfig, Sweep};
/// let base = RunConfig::preset("barlow-twins/tiny")?;
/// let results = Sweep::new(base, "runs/bt-width")
///     .vary("barlow_twins.projector", &["[128,128,128]", "[512,512,512]"])?
///     .seeds(2)
///     .run()?;
/// println!("{}", results.markdown());
/// # Ok::<(), sslab::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct Sweep {
    base: RunConfig,
    axes: Vec<(String, Vec<String>)>,
    seeds: usize,
    out: PathBuf,
    evals: Evaluations,
    cell_figures: bool,
    log: bool,
}

/// One run of a sweep.
#[derive(Clone, Debug, PartialEq)]
pub struct SweepCell {
    /// `(key, value)` for each varied key, in the order they were added.
    pub values: Vec<(String, String)>,
    pub seed: u64,
    /// The cell's folder (summary.json, config.toml, figures/).
    pub dir: PathBuf,
    pub config: RunConfig,
}

impl Sweep {
    /// A sweep around `base` writing into `out`; kNN before and after each run by default.
    pub fn new(base: RunConfig, out: impl Into<PathBuf>) -> Self {
        Sweep {
            base,
            axes: Vec::new(),
            seeds: 1,
            out: out.into(),
            evals: Evaluations {
                at_init: true,
                ..Evaluations::default()
            },
            cell_figures: false,
            log: false,
        }
    }

    /// Adds a key and its values (as `RunConfig::set` takes them: TOML values, aliases like
    /// `lr` allowed). Every value is checked against the base config now, not mid-sweep.
    pub fn vary(mut self, key: &str, values: &[&str]) -> Result<Self> {
        if values.is_empty() {
            return Err(Error::config(key, "a varied key needs at least one value"));
        }
        if self.axes.iter().any(|(k, _)| k == key) {
            return Err(Error::config(key, "varied twice"));
        }
        for v in values {
            let mut c = self.base.clone();
            c.set(key, v)?;
            c.validate()?;
        }
        self.axes.push((
            key.to_string(),
            values.iter().map(|v| v.to_string()).collect(),
        ));
        Ok(self)
    }

    /// Runs each combination with seeds `base.seed .. base.seed + n`.
    pub fn seeds(mut self, n: usize) -> Self {
        self.seeds = n.max(1);
        self
    }

    /// Which evaluations each cell reports.
    pub fn evaluations(mut self, evals: Evaluations) -> Self {
        self.evals = evals;
        self
    }

    /// Also write each cell's diagnostic figures into its `figures/` folder.
    pub fn cell_figures(mut self, on: bool) -> Self {
        self.cell_figures = on;
        self
    }

    /// Log each cell as [`Run::log_into`] does, into its own folder (`cells/<cell>/tb/` and
    /// `metrics.csv`), so `tensorboard --logdir OUT` shows every cell as one run, named by its
    /// folder. `sslab sweep` turns it on.
    pub fn logged(mut self, on: bool) -> Self {
        self.log = on;
        self
    }

    /// The varied keys and their values.
    pub fn axes(&self) -> &[(String, Vec<String>)] {
        &self.axes
    }

    /// Every cell, first key slowest, seeds fastest.
    pub fn cells(&self) -> Result<Vec<SweepCell>> {
        let mut combos: Vec<Vec<(String, String)>> = vec![Vec::new()];
        for (k, vs) in &self.axes {
            combos = combos
                .into_iter()
                .flat_map(|c| {
                    vs.iter().map(move |v| {
                        let mut c = c.clone();
                        c.push((k.clone(), v.clone()));
                        c
                    })
                })
                .collect();
        }
        let mut cells = Vec::new();
        for values in combos {
            for i in 0..self.seeds as u64 {
                let mut config = self.base.clone();
                for (k, v) in &values {
                    config.set(k, v)?;
                }
                config.seed = self.base.seed + i;
                config.validate()?;
                let mut name: Vec<String> = values
                    .iter()
                    .map(|(k, v)| format!("{k}={}", slug(v)))
                    .collect();
                name.push(format!("seed={}", config.seed));
                cells.push(SweepCell {
                    values: values.clone(),
                    seed: config.seed,
                    dir: self.out.join("cells").join(name.join(",")),
                    config,
                });
            }
        }
        Ok(cells)
    }

    /// Runs every unfinished cell in turn, then writes `results.csv`, `results.md` and one
    /// figure per metric into the output folder. A failing cell stops the sweep with an error
    /// naming it; the cells finished before it are kept.
    pub fn run(&self) -> Result<SweepResults> {
        let cells = self.cells()?;
        let total = cells.len();
        let mut rows = Vec::with_capacity(total);
        for (i, cell) in cells.into_iter().enumerate() {
            let path = cell.dir.join("summary.json");
            let label = cell_label(&cell);
            let summary = if path.exists() {
                println!("[{}/{total}] {label}: done before, skipped", i + 1);
                RunSummary::load(&path)?
            } else {
                println!("[{}/{total}] {label}", i + 1);
                self.run_cell(&cell)
                    .map_err(|e| Error::Invalid(format!("sweep cell {label}: {e}")))?
            };
            rows.push((cell, summary));
        }
        let results = SweepResults {
            axes: self.axes.iter().map(|(k, _)| k.clone()).collect(),
            rows,
        };
        results.save(&self.out)?;
        Ok(results)
    }

    fn run_cell(&self, cell: &SweepCell) -> Result<RunSummary> {
        let io = |e: std::io::Error| Error::Invalid(format!("{}: {e}", cell.dir.display()));
        std::fs::create_dir_all(&cell.dir).map_err(io)?;
        std::fs::write(cell.dir.join("config.toml"), cell.config.to_toml()?).map_err(io)?;
        let mut run = Run::new(cell.config.clone())?;
        if self.log {
            // An interrupted attempt's events would show as a second curve: the cell starts
            // over, so does its log.
            let tb = cell.dir.join("tb");
            if tb.exists() {
                std::fs::remove_dir_all(&tb).map_err(io)?;
            }
            run.log_into(&cell.dir)?;
        }
        let summary = run.train_to_end(self.evals)?;
        if self.cell_figures {
            run.write_figures(cell.dir.join("figures"))?;
        }
        // Last: its presence marks the cell finished.
        summary.save(cell.dir.join("summary.json"))?;
        Ok(summary)
    }
}

/// A value as part of a folder name: brackets, spaces and slashes dropped.
fn slug(v: &str) -> String {
    v.chars()
        .filter(|c| !matches!(c, '[' | ']' | ' ' | '"' | '\''))
        .map(|c| if c == '/' { '-' } else { c })
        .collect()
}

fn cell_label(cell: &SweepCell) -> String {
    let mut parts: Vec<String> = cell
        .values
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    parts.push(format!("seed={}", cell.seed));
    parts.join(" ")
}

/// A metric of the results table: its column name and how to read it from a summary.
struct Metric {
    name: &'static str,
    get: fn(&RunSummary) -> Option<f64>,
}

const METRICS: &[Metric] = &[
    Metric {
        name: "knn_top1",
        get: |s| Some(s.knn_top1),
    },
    Metric {
        name: "knn_change",
        get: RunSummary::knn_change,
    },
    Metric {
        name: "linear_top1",
        get: |s| s.linear_top1,
    },
    Metric {
        name: "dense_probe_miou",
        get: |s| s.dense_probe_miou,
    },
    Metric {
        name: "grad_spikes",
        get: |s| s.grad_spikes.map(|n| n as f64),
    },
    Metric {
        name: "final_loss",
        get: |s| Some(s.final_loss as f64),
    },
    Metric {
        name: "train_seconds",
        get: |s| Some(s.train_seconds),
    },
];

/// Metrics drawn as figures (losses and times stay in the table).
const PLOTTED: &[&str] = &[
    "knn_top1",
    "knn_change",
    "linear_top1",
    "dense_probe_miou",
    "grad_spikes",
];

/// One combination of varied values and, per metric, its values over seeds.
type Group = (Vec<String>, BTreeMap<&'static str, Vec<f64>>);

/// The finished cells of a sweep with their summaries.
#[derive(Clone, Debug)]
pub struct SweepResults {
    /// The varied keys.
    pub axes: Vec<String>,
    pub rows: Vec<(SweepCell, RunSummary)>,
}

/// A cell's varied values, the key of its combination.
fn key_of(cell: &SweepCell) -> Vec<String> {
    cell.values.iter().map(|(_, v)| v.clone()).collect()
}

/// `(combination, metric values)` items gathered per combination, in order of first
/// appearance, each metric's values in item order.
fn collect_groups(
    items: impl Iterator<Item = (Vec<String>, Vec<(&'static str, f64)>)>,
) -> Vec<Group> {
    let mut out: Vec<Group> = Vec::new();
    for (key, values) in items {
        let idx = match out.iter().position(|(k, _)| *k == key) {
            Some(i) => i,
            None => {
                out.push((key, BTreeMap::new()));
                out.len() - 1
            }
        };
        for (name, v) in values {
            out[idx].1.entry(name).or_default().push(v);
        }
    }
    out
}

/// Mean and sample standard deviation (0 for one value).
fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n.max(1.0);
    let var = if v.len() > 1 {
        v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (mean, var.sqrt())
}

impl SweepResults {
    /// Metrics that some cell reports.
    fn metrics(&self) -> Vec<&'static Metric> {
        METRICS
            .iter()
            .filter(|m| self.rows.iter().any(|(_, s)| (m.get)(s).is_some()))
            .collect()
    }

    /// Column names: the varied keys, `seed_column`, then each metric.
    fn header<'a>(&'a self, seed_column: &'a str, metrics: &[&'static Metric]) -> Vec<&'a str> {
        self.axes
            .iter()
            .map(String::as_str)
            .chain([seed_column])
            .chain(metrics.iter().map(|m| m.name))
            .collect()
    }

    /// One line per cell and seed: the varied values, the seed, then each metric.
    pub fn csv(&self) -> String {
        let metrics = self.metrics();
        let mut out = String::new();
        let head = self.header("seed", &metrics);
        out.push_str(&head.join(","));
        out.push('\n');
        for (cell, s) in &self.rows {
            let mut f: Vec<String> = cell.values.iter().map(|(_, v)| csv_field(v)).collect();
            f.push(cell.seed.to_string());
            for m in &metrics {
                f.push((m.get)(s).map(|v| format!("{v:.4}")).unwrap_or_default());
            }
            out.push_str(&f.join(","));
            out.push('\n');
        }
        out
    }

    /// Cells grouped over seeds, in grid order.
    fn groups(&self) -> Vec<Group> {
        collect_groups(self.rows.iter().map(|(cell, s)| {
            let values = METRICS.iter().filter_map(|m| Some((m.name, (m.get)(s)?)));
            (key_of(cell), values.collect())
        }))
    }

    /// Every combination after the first against the first, paired by seed: per metric, the
    /// differences `value − first combination's value` over the seeds both ran. Two
    /// configurations that share a seed share its initialisation and data order, so the
    /// spread of these differences is what tells them apart, not the spread of each over seeds
    /// (a 100-step kNN moves by about 2 points from seed to seed, benches/RESULTS.md).
    fn paired(&self) -> Vec<Group> {
        let Some((first, _)) = self.rows.first() else {
            return Vec::new();
        };
        let base_key = key_of(first);
        let base: BTreeMap<u64, &RunSummary> = self
            .rows
            .iter()
            .filter(|(cell, _)| key_of(cell) == base_key)
            .map(|(cell, s)| (cell.seed, s))
            .collect();
        collect_groups(self.rows.iter().filter_map(|(cell, s)| {
            let b = base.get(&cell.seed).filter(|_| key_of(cell) != base_key)?;
            let diffs = METRICS
                .iter()
                .filter_map(|m| Some((m.name, (m.get)(s)? - (m.get)(b)?)));
            Some((key_of(cell), diffs.collect()))
        }))
    }

    /// A Markdown table: one row per combination, each metric as mean ± standard deviation
    /// over seeds (with the number of seeds). With more than one seed, a second table gives
    /// every other combination against the first, paired by seed (the mean difference ± its
    /// standard error), which is how two settings are told apart within the seeds' noise.
    pub fn markdown(&self) -> String {
        let metrics = self.metrics();
        let head = self.header("seeds", &metrics);
        let table = |groups: Vec<Group>, cell: &dyn Fn(&[f64]) -> String| {
            let mut out = format!("| {} |\n|{}\n", head.join(" | "), "---|".repeat(head.len()));
            for (values, per_metric) in groups {
                let seeds = per_metric.values().map(Vec::len).max().unwrap_or(0);
                let mut f: Vec<String> = values.iter().map(|v| format!("`{v}`")).collect();
                f.push(seeds.to_string());
                for m in &metrics {
                    f.push(per_metric.get(m.name).map(|v| cell(v)).unwrap_or_default());
                }
                let _ = writeln!(out, "| {} |", f.join(" | "));
            }
            out
        };
        let mut out = table(self.groups(), &|v| match v {
            [one] => format!("{one:.2}"),
            _ => {
                let (mean, sd) = mean_std(v);
                format!("{mean:.2} ± {sd:.2}")
            }
        });
        let paired = self.paired();
        if paired.iter().any(|(_, d)| d.values().any(|v| v.len() > 1)) {
            let first = self.rows[0].0.values.iter();
            let first: Vec<String> = first.map(|(k, v)| format!("{k} = `{v}`")).collect();
            let _ = writeln!(
                out,
                "\nAgainst {}, paired by seed: the mean difference over the seeds both ran \
                 ± its standard error.\n",
                first.join(", ")
            );
            out += &table(paired, &|v| match v {
                [one] => format!("{one:+.2}"),
                _ => {
                    let (mean, sd) = mean_std(v);
                    format!("{mean:+.2} ± {:.2}", sd / (v.len() as f64).sqrt())
                }
            });
        }
        out
    }

    /// One figure per metric: the metric against the first varied key (numeric values on a
    /// numeric axis, others at positions 0, 1, ...), one line per combination of the other
    /// keys, error bars of one standard deviation over seeds.
    pub fn figures(&self) -> Result<Vec<(String, Figure)>> {
        let Some(x_key) = self.axes.first() else {
            return Ok(Vec::new());
        };
        let groups = self.groups();
        let x_values: Vec<String> = {
            let mut v: Vec<String> = Vec::new();
            for (k, _) in &groups {
                if !v.contains(&k[0]) {
                    v.push(k[0].clone());
                }
            }
            v
        };
        let numeric: Option<Vec<f64>> = x_values.iter().map(|v| v.parse::<f64>().ok()).collect();
        let x_of = |v: &str| -> f64 {
            match &numeric {
                Some(n) => n[x_values.iter().position(|x| x == v).unwrap_or(0)],
                None => x_values.iter().position(|x| x == v).unwrap_or(0) as f64,
            }
        };
        let x_label = match &numeric {
            Some(_) => x_key.clone(),
            None => format!(
                "{x_key}: {}",
                x_values
                    .iter()
                    .enumerate()
                    .map(|(i, v)| format!("{i}={v}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
        };
        let mut figs = Vec::new();
        for m in self
            .metrics()
            .into_iter()
            .filter(|m| PLOTTED.contains(&m.name))
        {
            // One line per combination of the other keys.
            let mut series: Vec<Series> = Vec::new();
            for (values, per_metric) in &groups {
                let Some(v) = per_metric.get(m.name) else {
                    continue;
                };
                let (mean, sd) = mean_std(v);
                let name = self.axes[1..]
                    .iter()
                    .zip(&values[1..])
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(" ");
                let i = match series.iter().position(|l| l.name == name) {
                    Some(i) => i,
                    None => {
                        series.push(Series::with_errors(name, Vec::new(), Vec::new()));
                        series.len() - 1
                    }
                };
                series[i].points.push((x_of(&values[0]), mean));
                series[i].errors.push(sd);
            }
            for line in &mut series {
                let mut both: Vec<_> = line.points.drain(..).zip(line.errors.drain(..)).collect();
                both.sort_by(|a, b| a.0 .0.total_cmp(&b.0 .0));
                (line.points, line.errors) = both.into_iter().unzip();
            }
            let panel = Panel::Curves {
                title: format!("{} vs {x_key}", m.name),
                x_label: x_label.clone(),
                y_label: m.name.to_string(),
                series,
                markers: Vec::new(),
            };
            figs.push((
                m.name.to_string(),
                Figure::from_panels(&[panel], 1, (640, 420))?,
            ));
        }
        Ok(figs)
    }

    /// Writes `results.csv`, `results.md` and `<metric>.png` into `dir`.
    pub fn save(&self, dir: &Path) -> Result<Vec<PathBuf>> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::Invalid(format!("cannot create {}: {e}", dir.display())))?;
        let mut written = Vec::new();
        for (name, text) in [("results.csv", self.csv()), ("results.md", self.markdown())] {
            let p = dir.join(name);
            crate::atomic::write(&p, text.as_bytes())?;
            written.push(p);
        }
        for (name, fig) in self.figures()? {
            let p = dir.join(format!("{name}.png"));
            fig.save(&p)?;
            written.push(p);
        }
        Ok(written)
    }
}

/// Quotes a CSV field that holds a comma or a quote.
fn csv_field(v: &str) -> String {
    if v.contains([',', '"']) {
        format!("\"{}\"", v.replace('"', "\"\""))
    } else {
        v.to_string()
    }
}
