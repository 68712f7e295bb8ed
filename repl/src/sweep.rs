//! `sslab sweep`: a grid of `train` runs over config keys and seeds.

use crate::train::{build_config, ConfigArgs};
use anyhow::{bail, Result};
use clap::Args;
use sslab::train::{Evaluations, Sweep};
use std::path::PathBuf;

#[derive(Args)]
pub struct SweepArgs {
    #[command(flatten)]
    cfg: ConfigArgs,
    /// A key and its values, e.g. --vary train.batch_size=32,64,128 or
    /// --vary barlow_twins.projector=[128,128],[512,512] (commas inside brackets stay with the
    /// value). Repeatable: the grid is every combination.
    #[arg(long = "vary", value_name = "KEY=V1,V2,...", required = true)]
    vary: Vec<String>,
    /// Seeds per combination (the config's seed, +1, ...); the table shows mean ± std.
    #[arg(long, default_value_t = 1)]
    seeds: usize,
    /// Output folder: cells/<key=value,...,seed=N>/ per run, results.csv, results.md, *.png.
    #[arg(long, default_value = "runs/sweep")]
    out: PathBuf,
    /// Skip the kNN at initialisation (no knn_change column).
    #[arg(long)]
    no_init_knn: bool,
    /// Also train a linear probe at the end of each run.
    #[arg(long)]
    linear_probe: bool,
    /// Also run the dense probe (mIoU) at the end of each run (and at init).
    #[arg(long)]
    dense_probe: bool,
    /// Write each cell's diagnostic figures (grad spikes, curves, ...) into its folder.
    #[arg(long)]
    cell_figures: bool,
    /// Also evaluate kNN every N steps in each cell (its summary.json's knn_curve).
    #[arg(long, value_name = "N", default_value_t = 0)]
    knn_every: usize,
    /// Do not write each cell's TensorBoard events (cells/<cell>/tb/) and metrics.csv.
    #[arg(long)]
    no_log: bool,
}

/// Splits `v1,v2,...` at the commas outside brackets and quotes.
fn split_values(s: &str) -> Vec<String> {
    let (mut out, mut cur, mut depth, mut quoted) = (Vec::new(), String::new(), 0i32, false);
    for c in s.chars() {
        match c {
            '"' => quoted = !quoted,
            '[' if !quoted => depth += 1,
            ']' if !quoted => depth -= 1,
            ',' if depth == 0 && !quoted => {
                out.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    out.push(cur);
    out.into_iter().map(|v| v.trim().to_string()).collect()
}

pub fn run(a: SweepArgs) -> Result<()> {
    let base = build_config(&a.cfg)?;
    let mut sweep = Sweep::new(base, &a.out)
        .seeds(a.seeds)
        .evaluations(Evaluations {
            at_init: !a.no_init_knn,
            linear_probe: a.linear_probe,
            dense_probe: a.dense_probe,
            knn_every: a.knn_every,
        })
        .cell_figures(a.cell_figures)
        .logged(!a.no_log);
    for v in &a.vary {
        let Some((key, values)) = v.split_once('=') else {
            bail!("--vary expects KEY=V1,V2,..., got '{v}'");
        };
        let values = split_values(values);
        if values.iter().any(String::is_empty) {
            bail!("--vary {v}: empty value");
        }
        let refs: Vec<&str> = values.iter().map(String::as_str).collect();
        sweep = sweep.vary(key.trim(), &refs)?;
    }
    let n = sweep.cells()?.len();
    println!(
        "sslab sweep {} | {n} runs ({} seed(s)) into {}",
        a.cfg.method,
        a.seeds.max(1),
        a.out.display()
    );
    if !a.no_log {
        println!("tensorboard --logdir {} shows each cell", a.out.display());
    }
    let results = sweep.run()?;
    println!("\n{}", results.markdown());
    for p in results.save(&a.out)? {
        println!("wrote {}", p.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::split_values;

    #[test]
    fn brackets_keep_their_commas() {
        assert_eq!(split_values("32,64"), ["32", "64"]);
        assert_eq!(
            split_values("[128,128],[512, 512]"),
            ["[128,128]", "[512, 512]"]
        );
        assert_eq!(split_values("\"a,b\",c"), ["\"a,b\"", "c"]);
    }
}
