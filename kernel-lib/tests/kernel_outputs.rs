//! The CPU kernels hand out their output buffers without zeroing them first
//! (`kernels::storage::written`): each kernel must write every value before anything reads it.
//! With `poison_outputs(true)` every such buffer starts as NaN, so a kernel that reads (or
//! leaves) a value it did not write turns the step's numbers into NaN or changes them. Two
//! steps of methods that cover every kernel (ResNet convolutions: Winograd, stride-2 tiles,
//! im2col; BatchNorm; the ViT's attention, GELU, LayerNorm, bias; matrix products), in f32
//! and, on a CPU with the bf16 kernels, in bf16, must give the same losses bit for bit either
//! way. This file holds one test: the poison switch is process-wide.

mod common;

use common::shrink_any;
use sslab::kernels::{cpu_has_bf16, poison_outputs, Precision};
use sslab::train::{Run, RunConfig};

fn config(preset: &str, precision: Precision) -> RunConfig {
    let mut c = shrink_any(preset);
    // Wide enough for the bf16 products' thresholds and for Winograd's 8×8 and larger tiles.
    c.data.shapes.size = 32;
    c.augment.size = 32;
    c.model.width = 16;
    c.model.patch = 4;
    c.precision = precision;
    c
}

fn losses(c: &RunConfig) -> Vec<u32> {
    let mut run = Run::new(c.clone()).unwrap();
    (0..2).map(|_| run.step().unwrap().loss.to_bits()).collect()
}

#[test]
fn kernels_write_every_value_of_their_outputs() {
    let mut precisions = vec![Precision::F32];
    if cpu_has_bf16() {
        precisions.push(Precision::Bf16);
    } else {
        eprintln!("this CPU has no AVX512-BF16: the bf16 kernels are not checked here");
    }
    for preset in [
        "barlow-twins/tiny",
        "moco-v3/vit-tiny",
        "densecl/tiny",
        "simclr/tiny",
    ] {
        for &p in &precisions {
            let c = config(preset, p);
            poison_outputs(false);
            let clean = losses(&c);
            poison_outputs(true);
            let poisoned = losses(&c);
            poison_outputs(false);
            let show = |l: &[u32]| l.iter().map(|&b| f32::from_bits(b)).collect::<Vec<_>>();
            assert!(
                show(&clean).iter().all(|l| l.is_finite()),
                "{preset} {p:?}: {:?}",
                show(&clean)
            );
            assert_eq!(
                clean,
                poisoned,
                "{preset} {p:?}: losses {:?} with fresh buffers as NaN, {:?} without",
                show(&poisoned),
                show(&clean)
            );
        }
    }
}
