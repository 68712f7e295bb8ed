//! sslab's CUDA BatchNorm (training mode, affine, with and without the fused ReLU) against its
//! CPU kernel: output, batch statistics and the gradients of input, scale and shift.

use super::{gpu, rel_err};
use candle_core::{Device, Tensor, Var};
use sslab::kernels::batch_norm_affine_train;

/// y, mean, var, dx, dγ, dβ of `Σ bn(x)·r` on `dev`.
fn run(x: &Tensor, w: &Tensor, b: &Tensor, r: &Tensor, relu: bool, dev: &Device) -> Vec<Tensor> {
    let xv = Var::from_tensor(&x.to_device(dev).unwrap()).unwrap();
    let wv = Var::from_tensor(&w.to_device(dev).unwrap()).unwrap();
    let bv = Var::from_tensor(&b.to_device(dev).unwrap()).unwrap();
    let (y, mean, var) = batch_norm_affine_train(&xv, &wv, &bv, 1e-5, relu, None).unwrap();
    let loss = (&y * &r.to_device(dev).unwrap())
        .unwrap()
        .sum_all()
        .unwrap();
    let g = loss.backward().unwrap();
    let grad = |v: &Var| g.get(v).unwrap().clone();
    vec![y, mean, var, grad(&xv), grad(&wv), grad(&bv)]
}

#[test]
fn batch_norm_matches_the_cpu_kernel() {
    let Some(dev) = gpu(false) else { return };
    // A ResNet stage, a late small plane, a projector's BN1d (rank 2), a plane wider than a
    // block; rank-2 data takes the column kernels (`_rows`): a channels-last feature map seen
    // as (n·h·w, c), a wide projector, and columns that do not fill a block.
    for dims in [
        vec![8, 64, 32, 32],
        vec![4, 256, 7, 7],
        vec![64, 512],
        vec![2, 3, 40, 40],
        vec![8 * 32 * 32, 64],
        vec![256, 8192],
        vec![300, 5],
    ] {
        let c = dims[1];
        // Offset and scaled input: the variance must not come from E[x²] − mean² cancellation.
        let x = (Tensor::randn(0f32, 3.0, dims.as_slice(), &Device::Cpu).unwrap() + 5.0).unwrap();
        let w = Tensor::randn(1f32, 0.2, c, &Device::Cpu).unwrap();
        let b = Tensor::randn(0f32, 0.2, c, &Device::Cpu).unwrap();
        let r = Tensor::randn(0f32, 1.0, dims.as_slice(), &Device::Cpu).unwrap();
        for relu in [false, true] {
            let cpu = run(&x, &w, &b, &r, relu, &Device::Cpu);
            let cuda = run(&x, &w, &b, &r, relu, &dev);
            let names = ["y", "mean", "var", "dx", "dgamma", "dbeta"];
            for ((name, a), e) in names.iter().zip(&cuda).zip(&cpu) {
                assert_eq!(a.dims(), e.dims(), "{dims:?} relu {relu} {name}: shape");
                // A ReLU mask can flip where a value rounds across zero: a looser bound there.
                let tol = if relu && name.starts_with('d') {
                    1e-3
                } else {
                    1e-4
                };
                let err = rel_err(a, e);
                assert!(
                    err < tol,
                    "{dims:?} relu {relu} {name}: CUDA vs CPU {err:.2e}"
                );
            }
        }
    }
}

/// x̂ of the normalisation without affine part (BatchNorm's and LayerNorm's row form) and the
/// gradient of `Σ x̂·r`, on `dev`.
fn normalized(x: &Tensor, r: &Tensor, rows: bool, dev: &Device) -> [Tensor; 2] {
    let xv = Var::from_tensor(&x.to_device(dev).unwrap()).unwrap();
    let xhat = if rows {
        sslab::kernels::normalize_rows(&xv, 1e-6, true).unwrap()
    } else {
        sslab::kernels::batch_norm_train(&xv, 1e-5, true, None)
            .unwrap()
            .0
    };
    let loss = (&xhat * &r.to_device(dev).unwrap())
        .unwrap()
        .sum_all()
        .unwrap();
    let g = loss.backward().unwrap();
    [xhat, g.get(&xv).unwrap().clone()]
}

#[test]
fn normalisation_without_affine_matches_the_cpu_kernel() {
    let Some(dev) = gpu(false) else { return };
    for (dims, rows) in [
        (vec![64, 2048], false),
        (vec![8, 32, 8, 8], false),
        (vec![4, 65, 192], true),
    ] {
        let x = (Tensor::randn(0f32, 2.0, dims.as_slice(), &Device::Cpu).unwrap() - 1.0).unwrap();
        let r = Tensor::randn(0f32, 1.0, dims.as_slice(), &Device::Cpu).unwrap();
        let (cpu, cuda) = (
            normalized(&x, &r, rows, &Device::Cpu),
            normalized(&x, &r, rows, &dev),
        );
        for (name, (a, e)) in ["xhat", "dx"].iter().zip(cuda.iter().zip(&cpu)) {
            let err = rel_err(a, e);
            assert!(
                err < 1e-4,
                "{dims:?} rows {rows} {name}: CUDA vs CPU {err:.2e}"
            );
        }
    }
}
