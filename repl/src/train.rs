//! `sslab train`.

use anyhow::{bail, Context, Result};
use clap::Args;
use sslab::train::{Run, RunConfig};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args)]
pub struct TrainArgs {
    /// Method to train: barlow-twins, moco-v1, moco-v2, densecl, moco-v3.
    method: String,
    /// Preset: a full name (moco-v3/vit-tiny) or the part after the method (vit-tiny); default:
    /// the method's CPU-sized preset.
    #[arg(long)]
    preset: Option<String>,
    /// TOML config file; it may name its own preset and override any key.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Total optimisation steps (overrides the preset's budget and schedule length).
    #[arg(long)]
    steps: Option<usize>,
    /// Data spec: shapes | cifar10:PATH | cifar100:PATH | mnist:PATH | fashion-mnist:PATH | folder:PATH.
    #[arg(long)]
    data: Option<String>,
    /// Device: auto, cpu, cuda, cuda:N.
    #[arg(long)]
    device: Option<String>,
    /// Override any config key, e.g. --set optim.lr=0.1 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    /// Output folder for summary.json, config.toml and figures/*.png.
    #[arg(long, default_value = "runs/latest")]
    out: PathBuf,
    /// Skip the evaluations at initialisation.
    #[arg(long)]
    no_init_knn: bool,
    /// Also run the dense linear probe (mIoU against the built-in masks) at init and at the end.
    #[arg(long)]
    dense_probe: bool,
    /// Do not draw DIR/figures/*.png at the end.
    #[arg(long)]
    no_figures: bool,
}

pub fn build_config(a: &TrainArgs) -> Result<RunConfig> {
    let mut cfg = match (&a.config, &a.preset) {
        (Some(path), _) => RunConfig::from_file(path)?,
        // `--preset vit-tiny` is short for `--preset moco-v3/vit-tiny`.
        (None, Some(p)) if !p.contains('/') => RunConfig::preset(&format!("{}/{p}", a.method))?,
        (None, Some(p)) => RunConfig::preset(p)?,
        (None, None) => RunConfig::preset(&a.method)?,
    };
    if let (Some(_), Some(p)) = (&a.config, &a.preset) {
        let full = if p.contains('/') {
            p.clone()
        } else {
            format!("{}/{p}", a.method)
        };
        let base = RunConfig::preset(&full)?;
        if cfg.preset != base.preset {
            bail!(
                "--preset {p} and the config file's preset '{}' disagree",
                cfg.preset
            );
        }
    }
    if cfg.method != a.method {
        bail!(
            "method '{}' does not match the config's method '{}'",
            a.method,
            cfg.method
        );
    }
    if let Some(s) = a.steps {
        cfg.set("train.steps", &s.to_string())?;
    }
    if let Some(d) = &a.data {
        cfg.set("data.source", &format!("{d:?}"))?;
    }
    if let Some(d) = &a.device {
        cfg.set("device", &format!("{d:?}"))?;
    }
    for kv in &a.sets {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("--set {kv}: expected KEY=VALUE"))?;
        cfg.set(k.trim(), v.trim())?;
    }
    Ok(cfg)
}

pub fn run(a: TrainArgs) -> Result<()> {
    let t0 = Instant::now();
    let cfg = build_config(&a)?;
    // Build the run first: a config whose data cannot load leaves no output folder behind.
    let mut run = Run::new(cfg.clone())?;
    std::fs::create_dir_all(&a.out)
        .with_context(|| format!("cannot create {}", a.out.display()))?;
    std::fs::write(a.out.join("config.toml"), cfg.to_toml()?)?;
    println!(
        "sslab train {} (preset {}) on {} | data: {} / {} | {} steps of batch {}",
        cfg.method,
        cfg.preset,
        run.device_name(),
        run.train_data().name(),
        run.test_data().name(),
        run.total_steps(),
        cfg.train.batch_size
    );
    let init = if a.no_init_knn {
        None
    } else {
        let k = run.knn()?;
        println!(
            "kNN top-1 at init: {:.2}% (top-5 {:.2}%, k={}, t={})",
            k.top1, k.top5, k.k, k.t
        );
        Some(k)
    };
    let probe_init = if a.dense_probe && !a.no_init_knn {
        let p = run.dense_probe()?;
        println!(
            "dense probe at init: mIoU {:.2}%, pixel accuracy {:.2}% ({}x{} grid)",
            p.miou, p.pixel_acc, p.grid.0, p.grid.1
        );
        Some(p)
    } else {
        None
    };
    let steps = run.total_steps().saturating_sub(run.steps_done());
    let summary = run.train(steps)?;
    println!("{summary}");
    let fin = run.knn()?;
    println!(
        "kNN top-1 at end:  {:.2}% (top-5 {:.2}%)",
        fin.top1, fin.top5
    );
    if let Some(i) = &init {
        println!("kNN top-1 change:  {:+.2} points", fin.top1 - i.top1);
    }
    let probe = if a.dense_probe {
        let p = run.dense_probe()?;
        println!(
            "dense probe at end:  mIoU {:.2}%, pixel accuracy {:.2}%",
            p.miou, p.pixel_acc
        );
        Some(p)
    } else {
        None
    };
    let json = serde_json::json!({
        "method": cfg.method,
        "preset": cfg.preset,
        "data": cfg.data.source,
        "steps": run.steps_done(),
        "batch_size": cfg.train.batch_size,
        "final_loss": summary.last_loss,
        "first_loss": summary.first_loss,
        "knn_top1": fin.top1,
        "knn_top5": fin.top5,
        "knn_top1_at_init": init.as_ref().map(|k| k.top1),
        "images_per_sec": summary.images_per_sec,
        "device": run.device_name(),
        "seconds": t0.elapsed().as_secs_f64(),
        "train_seconds": summary.seconds,
        "peak_rss_bytes": sslab::peak_rss_bytes(),
        "dense_probe_miou": probe.as_ref().map(|p| p.miou),
        "dense_probe_pixel_acc": probe.as_ref().map(|p| p.pixel_acc),
        "dense_probe_miou_at_init": probe_init.as_ref().map(|p| p.miou),
    });
    let path = a.out.join("summary.json");
    std::fs::write(&path, serde_json::to_string_pretty(&json)?)?;
    println!("wrote {}", path.display());
    if !a.no_figures {
        let figures = run
            .write_figures(a.out.join("figures"))
            .context("drawing the figures")?;
        for f in figures {
            println!("wrote {}", f.display());
        }
        if let Ok(g) = run.grad_spikes() {
            let spikes = g.data.spikes();
            println!(
                "gradient spikes (> {}x running median): {} in {} layers",
                cfg.diagnostics.spike_factor,
                spikes.len(),
                g.data.layers().len()
            );
        }
    }
    Ok(())
}
