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
    /// Continue a saved run (a folder written by `Run::save`, or DIR/checkpoints of an earlier
    /// `train`): with --steps N it trains until N steps in total (the schedule is stretched
    /// to N); --set and --device apply on top of the saved config.
    #[arg(long, value_name = "DIR")]
    resume: Option<PathBuf>,
    /// Start from the backbone weights of a PyTorch checkpoint (.pth/.pt/.safetensors of the
    /// official MoCo, MoCo v3, Barlow Twins or DenseCL releases, or an sslab export).
    #[arg(long, value_name = "PATH")]
    init_from: Option<PathBuf>,
    /// Save a checkpoint every N steps into OUT/checkpoints (the last two kept).
    #[arg(long, value_name = "N")]
    checkpoint_every: Option<usize>,
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
    if let Some(d) = &a.data {
        cfg.set("data.source", &format!("{d:?}"))?;
    }
    apply_overrides(a, &mut cfg)?;
    Ok(cfg)
}

/// `--steps`, `--device`, `--set` and `--checkpoint-every`, for a new run and a resumed one.
fn apply_overrides(a: &TrainArgs, cfg: &mut RunConfig) -> sslab::Result<()> {
    if let Some(s) = a.steps {
        cfg.set("train.steps", &s.to_string())?;
    }
    if let Some(d) = &a.device {
        cfg.set("device", &format!("{d:?}"))?;
    }
    for kv in &a.sets {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| sslab::Error::Invalid(format!("--set {kv}: expected KEY=VALUE")))?;
        cfg.set(k.trim(), v.trim())?;
    }
    if let Some(n) = a.checkpoint_every {
        cfg.train.checkpoint_every = n;
    }
    Ok(())
}

/// Loads `--resume DIR` with the command line's overrides applied to the saved config.
fn resume(a: &TrainArgs, dir: &std::path::Path) -> Result<Run> {
    if a.config.is_some() || a.preset.is_some() || a.data.is_some() {
        bail!("--resume continues the saved config; --config, --preset and --data do not apply");
    }
    let run = Run::load_with(dir, |cfg| {
        if cfg.method != a.method {
            return Err(sslab::Error::Invalid(format!(
                "{} holds a {} run, not {}",
                dir.display(),
                cfg.method,
                a.method
            )));
        }
        apply_overrides(a, cfg)
    })
    .with_context(|| format!("resuming from {}", dir.display()))?;
    Ok(run)
}

pub fn run(a: TrainArgs) -> Result<()> {
    let t0 = Instant::now();
    // Build the run first: a config whose data cannot load leaves no output folder behind.
    let mut run = match &a.resume {
        Some(dir) => resume(&a, dir)?,
        None => {
            let cfg = build_config(&a)?;
            Run::new(cfg)?
        }
    };
    if let Some(p) = &a.init_from {
        let r = run.import_backbone(p)?;
        println!(
            "loaded {} backbone tensors from {} (key prefix '{}', {} other tensors left out)",
            r.loaded,
            p.display(),
            r.prefix,
            r.ignored
        );
    }
    let cfg = run.config().clone();
    let resumed_from = a.resume.as_ref().map(|_| run.steps_done());
    run.checkpoint_into(a.out.join("checkpoints"));
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
    if let Some(s) = resumed_from {
        println!(
            "resumed at step {s} of {}; continuing to {}",
            a.resume
                .as_ref()
                .map(|d| d.display().to_string())
                .unwrap_or_default(),
            run.total_steps()
        );
    }
    let init = if let Some(k) = resumed_from.and_then(|_| run.knn_history().first()) {
        // The saved run's own first kNN is its initialisation value.
        Some(k.1.clone())
    } else if a.no_init_knn || resumed_from.is_some() {
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
        "resumed_from_step": resumed_from,
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
