//! `sslab trace-step`: one training step with every tensor it read and wrote, saved for a
//! side-by-side check against PyTorch (`benches/parity/one_step.sh`).

use crate::train::{build_config, ConfigArgs};
use anyhow::{Context, Result};
use clap::Args;
use sslab::prelude::*;
use std::path::PathBuf;

#[derive(Args)]
pub struct TraceArgs {
    #[command(flatten)]
    cfg: ConfigArgs,
    /// Where the tensors go (safetensors); the run's config is written beside it as
    /// OUT with the extension .toml.
    #[arg(long)]
    out: PathBuf,
    /// Take im2col + GEMM for every CPU convolution instead of Winograd, whose rounding moves
    /// deep-layer gradients by up to 1e-3 (docs/parity.md).
    #[arg(long)]
    no_winograd: bool,
}

pub fn run(a: TraceArgs) -> Result<()> {
    let cfg = build_config(&a.cfg)?;
    sslab::kernels::set_winograd(!a.no_winograd);
    let mut run = Run::new(cfg.clone())?;
    let trace = run.traced_step()?;
    trace.save(&a.out)?;
    let toml = a.out.with_extension("toml");
    std::fs::write(&toml, cfg.to_toml()?).with_context(|| format!("{}", toml.display()))?;
    let loss = trace
        .get("loss")
        .map(|t| t.to_vec1::<f32>())
        .transpose()?
        .unwrap_or_default();
    println!(
        "{}: {} tensors, loss {:?} ({} on {})",
        a.out.display(),
        trace.tensors.len(),
        loss,
        cfg.method,
        run.device_name()
    );
    Ok(())
}
