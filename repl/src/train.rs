//! `sslab train`.

use anyhow::{bail, Context, Result};
use clap::Args;
use sslab::train::{preset_id, Evaluations, Run, RunConfig};
use std::path::PathBuf;

/// What picks and adjusts the config of a run: shared by `train` and `sweep`.
#[derive(Args)]
pub struct ConfigArgs {
    /// Method to train (`sslab presets` lists them).
    pub method: String,
    /// Preset: a full name (moco-v3/vit-tiny) or the part after the method (vit-tiny); default:
    /// the method's CPU-sized preset.
    #[arg(long)]
    pub preset: Option<String>,
    /// TOML config file; it may name its own preset and override any key.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Total optimisation steps (overrides the preset's budget and schedule length).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Data spec: shapes | cifar10:PATH | cifar100:PATH | mnist:PATH | fashion-mnist:PATH | folder:PATH.
    #[arg(long)]
    pub data: Option<String>,
    /// Device: auto, cpu, cuda, cuda:N.
    #[arg(long)]
    pub device: Option<String>,
    /// Precision: f32, or bf16 (bf16 matrix products with f32 weights; convolutions too on
    /// CUDA; the CPU needs AVX512-BF16).
    #[arg(long)]
    pub precision: Option<String>,
    /// Override any config key, e.g. --set optim.lr=0.1 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
}

#[derive(Args)]
pub struct TrainArgs {
    #[command(flatten)]
    cfg: ConfigArgs,
    /// Output folder for summary.json, config.toml, figures/*.png, metrics.csv and the
    /// TensorBoard log tb/ (`tensorboard --logdir runs`).
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
    /// Also train a linear probe on the frozen features at the end (docs/recipes.md §5 protocol).
    #[arg(long)]
    linear_probe: bool,
    /// Do not draw DIR/figures/*.png at the end.
    #[arg(long)]
    no_figures: bool,
    /// Do not write DIR/tb/ (TensorBoard events) and DIR/metrics.csv.
    #[arg(long)]
    no_log: bool,
    /// Also evaluate kNN every N steps (the curve goes into summary.json's knn_curve, the
    /// TensorBoard log and metrics.csv).
    #[arg(long, value_name = "N", default_value_t = 0)]
    knn_every: usize,
    /// Train data-parallel on the ranks a launcher started (`mpirun -np 2 sslab train ...
    /// --distributed`; `srun` likewise): the batch is the global batch, rank 0 writes OUT.
    /// Needs a build with `--features mpi` (docs/distributed.md).
    #[arg(long)]
    distributed: bool,
    /// With --distributed: seconds a collective waits for the other ranks before the job
    /// ends with an error (a rank that stalled).
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    collective_timeout: u64,
}

pub fn build_config(a: &ConfigArgs) -> Result<RunConfig> {
    let mut cfg = match &a.config {
        Some(path) => RunConfig::from_file(path)?,
        None => RunConfig::method_preset(&a.method, a.preset.as_deref())?,
    };
    if let (Some(_), Some(p)) = (&a.config, &a.preset) {
        let base = RunConfig::preset(&preset_id(&a.method, p))?;
        if cfg.preset != base.preset {
            bail!(
                "--preset {p} and the config file's preset '{}' disagree",
                cfg.preset
            );
        }
    }
    if cfg.method != a.method.as_str() {
        bail!(
            "method '{}' does not match the config's method '{}'",
            a.method,
            cfg.method
        );
    }
    if let Some(d) = &a.data {
        cfg.set("data.source", &format!("{d:?}"))?;
    }
    apply_overrides(a, None, &mut cfg)?;
    Ok(cfg)
}

/// Applies `--set KEY=VALUE` overrides in order (`sslab train`, `sweep` and `bench`).
pub fn apply_sets(cfg: &mut RunConfig, sets: &[String]) -> sslab::Result<()> {
    for kv in sets {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| sslab::Error::Invalid(format!("--set {kv}: expected KEY=VALUE")))?;
        cfg.set(k.trim(), v.trim())?;
    }
    Ok(())
}

/// `--steps`, `--device`, `--precision`, `--set` and `--checkpoint-every`, for a new run and a
/// resumed one.
fn apply_overrides(
    a: &ConfigArgs,
    checkpoint_every: Option<usize>,
    cfg: &mut RunConfig,
) -> sslab::Result<()> {
    if let Some(s) = a.steps {
        cfg.set("train.steps", &s.to_string())?;
    }
    if let Some(d) = &a.device {
        cfg.set("device", &format!("{d:?}"))?;
    }
    if let Some(p) = &a.precision {
        cfg.set("precision", &format!("{p:?}"))?;
    }
    apply_sets(cfg, &a.sets)?;
    if let Some(n) = checkpoint_every {
        cfg.train.checkpoint_every = n;
    }
    Ok(())
}

/// Loads `--resume DIR` with the command line's overrides applied to the saved config.
fn resume(a: &TrainArgs, dir: &std::path::Path) -> Result<Run> {
    let (c, every) = (&a.cfg, a.checkpoint_every);
    if c.config.is_some() || c.preset.is_some() || c.data.is_some() {
        bail!("--resume continues the saved config; --config, --preset and --data do not apply");
    }
    let run = Run::load_with(dir, |cfg| {
        if cfg.method != c.method.as_str() {
            return Err(sslab::Error::Invalid(format!(
                "{} holds a {} run, not {}",
                dir.display(),
                cfg.method,
                c.method
            )));
        }
        apply_overrides(c, every, cfg)
    })
    .with_context(|| format!("resuming from {}", dir.display()))?;
    Ok(run)
}

pub fn run(a: TrainArgs) -> Result<()> {
    if !a.distributed {
        return train(a, None);
    }
    let timeout = std::time::Duration::from_secs(a.collective_timeout);
    let world = sslab::dist::init_from_env(timeout)?;
    let rank = world.rank();
    if let Err(e) = train(a, Some(world.clone())) {
        // The other ranks would wait for this one in their next collective: end them all.
        eprintln!("error on rank {rank}: {e:#}");
        world.abort(1);
    }
    Ok(())
}

fn train(mut a: TrainArgs, world: Option<sslab::dist::World>) -> Result<()> {
    // A CUDA rank trains on the GPU its NCCL communicator is on (LOCAL_RANK), unless the
    // command line names a device (which must then be that one).
    if let Some(w) = &world {
        if let (None, sslab::candle::DeviceLocation::Cuda { gpu_id }) =
            (&a.cfg.device, w.device().location())
        {
            a.cfg.device = Some(format!("cuda:{gpu_id}"));
        }
    }
    // Build the run first: a config whose data cannot load leaves no output folder behind.
    let mut run = match &a.resume {
        Some(dir) => resume(&a, dir)?,
        None => {
            let mut cfg = build_config(&a.cfg)?;
            if let Some(n) = a.checkpoint_every {
                cfg.train.checkpoint_every = n;
            }
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
    if let Some(w) = world {
        run.distribute(w)?;
    }
    let cfg = run.config().clone();
    let resumed_from = a.resume.as_ref().map(|_| run.steps_done());
    let (rank, ranks) = run.rank_and_size();
    if rank > 0 {
        // The other ranks train in step with rank 0 and write nothing.
        run.train_to_end(evaluations(&a))?;
        return Ok(());
    }
    // The output folder is this process's until it ends: a second `sslab train` with the
    // same --out is refused instead of overwriting this one's checkpoints and summary.
    let _out_lock = sslab::train::FolderLock::acquire(&a.out)
        .with_context(|| format!("cannot use {}", a.out.display()))?;
    run.checkpoint_into(a.out.join("checkpoints"))?;
    if !a.no_log {
        run.log_into(&a.out)?;
    }
    std::fs::write(a.out.join("config.toml"), cfg.to_toml()?)?;
    let on = if ranks > 1 {
        format!("{} ranks of {}", ranks, run.device_name())
    } else {
        run.device_name()
    };
    println!(
        "sslab train {} (preset {}) on {on} | data: {} / {} | {} steps of batch {}",
        cfg.method,
        cfg.preset,
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
    let summary = run.train_to_end(evaluations(&a))?;
    let path = a.out.join("summary.json");
    summary.save(&path)?;
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

fn evaluations(a: &TrainArgs) -> Evaluations {
    Evaluations {
        at_init: !a.no_init_knn,
        linear_probe: a.linear_probe,
        dense_probe: a.dense_probe,
        knn_every: a.knn_every,
    }
}
