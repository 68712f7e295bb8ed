//! `sslab bench`: fixed, documented training-step workloads.

use crate::train::apply_sets;
use anyhow::{bail, Result};
use clap::Args;
use sslab::kernels::bench::{median, network_convs, time_conv, ConvImpl};
use sslab::train::{Run, RunConfig};

#[derive(Args)]
pub struct BenchArgs {
    /// Workload: barlow-twins = a full training step (CIFAR ResNet-18 + 2048-2048-2048
    /// projector, 32 px, 64 images × 2 views, forward + backward + LARS update); moco-v2 =
    /// the `moco-v2/cifar` step (ResNet-18, 2-layer head, queue); moco-v3-vit = the
    /// `moco-v3/vit-tiny` step (ViT-tiny width, 3 blocks, patch 4, AdamW); conv = forward,
    /// input- and weight-gradient throughput of each convolution shape of a network (`--net`):
    /// GFLOP/s on the CPU, TFLOP/s on CUDA; gemm = one core's f32 and bf16 matrix products on
    /// a ViT-tiny block's shapes (GFLOP/s).
    workload: String,
    /// Timed steps (after one warm-up step).
    #[arg(long, default_value_t = 3)]
    steps: usize,
    /// Images per step.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// ResNet width (64 = the real ResNet-18).
    #[arg(long, default_value_t = 64)]
    width: usize,
    /// Device: auto, cpu, cuda.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Precision of the step workloads: f32, or bf16 (bf16 matrix products with f32 weights,
    /// as PyTorch's autocast; convolutions too). For `conv`: the CPU's bf16 products.
    #[arg(long, default_value = "f32")]
    precision: String,
    /// For `conv`: time candle's own convolution instead of sslab's kernels (the baseline).
    #[arg(long)]
    candle_conv: bool,
    /// For `conv`: the network whose shapes are timed, `resnet18` (CIFAR stem, 32 px) or
    /// `resnet50` (ImageNet stem, 224 px).
    #[arg(long, default_value = "resnet18")]
    net: String,
    /// For `conv`: time only the shapes whose name (as printed, e.g. `256x512k3s2@8`) contains
    /// this text, to look at one layer without waiting for the others.
    #[arg(long)]
    shape: Option<String>,
    /// Run the workload's method from another preset, e.g. `barlow-twins/imagenet` (ResNet-50,
    /// 224 px, 8192-wide projector) or `moco-v3/vit-small` (ViT-S/16 at 224 px): the GPU-sized
    /// settings. The view side is the preset's `augment.size`.
    #[arg(long)]
    preset: Option<String>,
    /// Override any config key, e.g. --set diagnostics.grad_spikes=false to time a step
    /// without the gradient-spike tracker (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
}

/// The presets a step benchmark starts from, one per workload of `benches/compare.sh`.
const BENCH_PRESETS: [&str; 3] = ["barlow-twins/cifar", "moco-v2/cifar", "moco-v3/vit-tiny"];

/// A workload's name: its preset's method, with `-vit` for a ViT preset (`moco-v3-vit`).
fn workload_name(preset: &str) -> String {
    match preset.split_once('/') {
        Some((method, variant)) if variant.starts_with("vit") => format!("{method}-vit"),
        Some((method, _)) => method.to_string(),
        None => preset.to_string(),
    }
}

pub fn run(a: BenchArgs) -> Result<()> {
    if a.steps == 0 {
        bail!("--steps must be at least 1");
    }
    // Where the figures below were measured.
    println!("{}", sslab::kernels::cpu_report());
    if a.workload == "conv" {
        return conv(&a);
    }
    if a.workload == "gemm" {
        return gemm(&a);
    }
    let Some(default_preset) = BENCH_PRESETS
        .into_iter()
        .find(|p| workload_name(p) == a.workload)
    else {
        let known: Vec<String> = BENCH_PRESETS.iter().map(|p| workload_name(p)).collect();
        bail!(
            "unknown workload '{}'; known: {}, conv, gemm",
            a.workload,
            known.join(", ")
        );
    };
    let preset = a.preset.as_deref().unwrap_or(default_preset);
    let mut cfg = RunConfig::preset(preset)?;
    let method = default_preset.split('/').next().unwrap_or_default();
    if cfg.method != method {
        bail!(
            "preset '{preset}' trains {}, not the {} workload's {method}",
            cfg.method,
            a.workload
        );
    }
    cfg.moco.queue_size = cfg.moco.queue_size.min(4096) / a.batch.max(1) * a.batch.max(1);
    cfg.data.source = "shapes".into();
    cfg.data.shapes.train = a.batch.max(10);
    cfg.data.shapes.test = 10;
    cfg.data.shapes.size = cfg.augment.size;
    cfg.model.width = a.width;
    cfg.train.batch_size = a.batch;
    cfg.train.steps = a.steps + 1;
    cfg.optim.warmup_epochs = 0.0;
    cfg.device = a.device.clone();
    cfg.set("precision", &format!("{:?}", a.precision))?;
    // Monitors run between steps, outside the timed part; keep them out of the way.
    cfg.diagnostics.every = a.steps + 2;
    apply_sets(&mut cfg, &a.sets)?;
    cfg.validate()?;
    let mut run = Run::new(cfg)?;
    let warm = run.step()?;
    println!("warm-up: {warm}");
    let mut times = Vec::new();
    for _ in 0..a.steps {
        let r = run.step()?;
        println!("{r}");
        times.push(r.seconds);
    }
    let median = median(&mut times);
    let views = 2.0 * a.batch as f64;
    println!(
        "{} step ({preset}) | device {} | width {} | {} images x 2 views, {} px",
        a.workload,
        run.device_name(),
        a.width,
        a.batch,
        run.config().augment.size
    );
    println!(
        "gradient-spike tracker: {}",
        if run.config().diagnostics.grad_spikes {
            "on"
        } else {
            "off"
        }
    );
    println!(
        "median step {:.3} s | {:.1} images/s (views) | {:.1} samples/s | peak RSS {:.2} GB",
        median,
        views / median,
        a.batch as f64 / median,
        sslab::peak_rss_bytes().unwrap_or(0) as f64 / 1e9
    );
    // The line `benches/compare.sh` reads, in the format of the PyTorch twins.
    println!(
        "RESULT {} step_s={median:.3} images_per_s={:.1} peak_rss_gb={:.2}",
        a.workload,
        views / median,
        sslab::peak_rss_bytes().unwrap_or(0) as f64 / 1e9
    );
    Ok(())
}

fn conv(a: &BenchArgs) -> Result<()> {
    let dev = sslab::train::select_device(&a.device)?;
    // Of a config, only `cuda.tf32` applies here (`--set cuda.tf32=false`: strict fp32).
    let mut cfg = RunConfig::default();
    apply_sets(&mut cfg, &a.sets)?;
    sslab::kernels::set_conv_tf32(cfg.cuda.tf32);
    let imp = match (a.candle_conv, a.precision.as_str()) {
        (true, _) => ConvImpl::Candle,
        (false, "bf16") if dev.is_cpu() => ConvImpl::SslabBf16,
        (false, "f32" | "bf16") => ConvImpl::Sslab,
        (_, other) => bail!("--precision {other}: not f32 or bf16"),
    };
    let Some(net) = network_convs(&a.net) else {
        bail!("--net {}: not resnet18 or resnet50", a.net);
    };
    // A GPU is measured in TFLOP/s, the CPU in GFLOP/s; the key names the unit.
    let (unit, scale) = if dev.is_cpu() {
        ("gflops", 1.0)
    } else {
        ("tflops", 1e-3)
    };
    let tf32 = if dev.is_cuda() {
        format!(", tf32 {}", sslab::kernels::conv_tf32())
    } else {
        String::new()
    };
    println!(
        "conv2d {} on {dev:?} ({imp:?}{tf32}), batch {}, median of {} | {unit} = 2 x multiply-adds / s",
        a.net, a.batch, a.steps
    );
    let only = a.shape.as_deref().unwrap_or("");
    let shapes: Vec<_> = net
        .iter()
        .filter(|s| s.to_string().contains(only))
        .collect();
    if shapes.is_empty() {
        bail!(
            "--shape {only}: no {} convolution matches (e.g. 256x512k3s2@8)",
            a.net
        );
    }
    for &shape in shapes {
        let t = time_conv(shape, a.batch, a.steps.max(3), imp, &dev)?;
        let (f, x, w) = (
            t.fwd_gflops * scale,
            t.dx_gflops * scale,
            t.dw_gflops * scale,
        );
        let digits = if dev.is_cpu() { 1 } else { 2 };
        println!(
            "RESULT conv shape={shape} count={} fwd_{unit}={f:.digits$} dx_{unit}={x:.digits$} dw_{unit}={w:.digits$}",
            shape.count
        );
    }
    Ok(())
}

/// `sslab bench gemm`: one core's f32 and bf16 matrix products on a ViT-tiny block's shapes at
/// the step workload's token count (`--batch` images × 2 views × 65 tokens).
fn gemm(a: &BenchArgs) -> Result<()> {
    let rows = a.batch * 2 * 65;
    println!(
        "matrix products of a ViT-tiny block, {rows} tokens, one thread, best of {} runs",
        a.steps
    );
    for shape in sslab::kernels::bench::vit_tiny_gemms(rows) {
        let (m, n, k) = shape;
        let (f32_gflops, bf16_gflops) = sslab::kernels::bench::time_gemm(shape, a.steps);
        let bf16 = bf16_gflops.map_or("none".to_string(), |g| format!("{g:.1}"));
        println!(
            "RESULT gemm shape={m}x{n}x{k} f32_gflops={f32_gflops:.1}{}",
            bf16_gflops.map_or(String::new(), |g| format!(" bf16_gflops={g:.1}"))
        );
        println!("  {m}x{k} · {k}x{n}: f32 {f32_gflops:.1} GFLOP/s, bf16 {bf16}");
    }
    Ok(())
}
