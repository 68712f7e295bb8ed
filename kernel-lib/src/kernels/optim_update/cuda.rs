//! The CUDA arm of the optimizer updates and the EMA (`cuda/optim.cu`): the CPU's passes as
//! in-place kernels, one launch per pass, with LARS's and LAMB's trust ratios computed on the
//! device from a norm reduction, so an update needs no copy to the host. Through candle's ops
//! the same rules took about ten allocating operations per tensor.

use super::{AdamCoefficients, GroupSettings, OptimKind};
use crate::error::Result;
use crate::kernels::cuda::{elementwise, f32_view, with_opt_f64, OPTIM};
use crate::kernels::storage::CResult;
use candle_core::backend::BackendStorage;
use candle_core::cuda::cudarc::driver::{CudaView, LaunchArgs, PushKernelArg};
use candle_core::cuda::WrapErr;
use candle_core::{
    CpuStorage, CudaStorage, CustomOp2, CustomOp3, InplaceOp2, InplaceOp3, Layout, Shape, Tensor,
};

/// A scalar kernel argument.
#[derive(Clone, Copy, Debug)]
enum Scalar {
    F(f32),
    I(i32),
}

fn push_scalars<'a>(b: &mut LaunchArgs<'a>, scalars: &'a [Scalar]) {
    for s in scalars {
        match s {
            Scalar::F(v) => b.arg(v),
            Scalar::I(v) => b.arg(v),
        };
    }
}

/// The f32 device slice of a contiguous operand, checked to hold `n` elements.
fn operand<'a>(s: &'a CudaStorage, l: &Layout, n: usize) -> CResult<CudaView<'a, f32>> {
    if l.shape().elem_count() != n {
        candle_core::bail!("optimizer update on CUDA: expected operands of {n} elements");
    }
    f32_view(s, l, "optimizer update on CUDA")
}

/// A reduction into a fresh `(3,)` f64 tensor of squared norms: `kernel(norms, a, b[, c], n,
/// scalars…)`.
struct Norms {
    kernel: &'static str,
    scalars: Vec<Scalar>,
}

impl Norms {
    fn launch(&self, srcs: &[(&CudaStorage, &Layout)]) -> CResult<(CudaStorage, Shape)> {
        let (s0, l0) = srcs[0];
        let n = l0.shape().elem_count();
        let views = srcs
            .iter()
            .map(|(s, l)| operand(s, l, n))
            .collect::<CResult<Vec<_>>>()?;
        let dev = &s0.device;
        let norms = dev.alloc_zeros::<f64>(3)?;
        let f = dev.get_or_load_custom_func(self.kernel, OPTIM.name, OPTIM.ptx)?;
        let n = n as i64;
        let mut b = f.builder();
        b.arg(&norms);
        for v in &views {
            b.arg(v);
        }
        b.arg(&n);
        push_scalars(&mut b, &self.scalars);
        unsafe { b.launch(elementwise(n as usize)) }.w()?;
        Ok((
            CudaStorage::wrap_cuda_slice(norms, dev.clone()),
            Shape::from(3),
        ))
    }
}

impl CustomOp2 for Norms {
    fn name(&self) -> &'static str {
        self.kernel
    }
    cpu_refused!(2);
    fn cuda_fwd(
        &self,
        a: &CudaStorage,
        al: &Layout,
        b: &CudaStorage,
        bl: &Layout,
    ) -> CResult<(CudaStorage, Shape)> {
        self.launch(&[(a, al), (b, bl)])
    }
}

impl CustomOp3 for Norms {
    fn name(&self) -> &'static str {
        self.kernel
    }
    cpu_refused!(3);
    fn cuda_fwd(
        &self,
        a: &CudaStorage,
        al: &Layout,
        b: &CudaStorage,
        bl: &Layout,
        c: &CudaStorage,
        cl: &Layout,
    ) -> CResult<(CudaStorage, Shape)> {
        self.launch(&[(a, al), (b, bl), (c, cl)])
    }
}

/// An in-place pass `kernel(dst, sources…, norms or null, n, scalars…)`.
struct Update {
    kernel: &'static str,
    scalars: Vec<Scalar>,
    norms: Option<Tensor>,
}

impl Update {
    fn launch(
        &self,
        dst: &mut CudaStorage,
        dl: &Layout,
        srcs: &[(&CudaStorage, &Layout)],
    ) -> CResult<()> {
        let n = dl.shape().elem_count();
        if !dl.is_contiguous() || dst.dtype() != candle_core::DType::F32 {
            candle_core::bail!("optimizer update on CUDA: expected a contiguous f32 parameter");
        }
        let views = srcs
            .iter()
            .map(|(s, l)| operand(s, l, n))
            .collect::<CResult<Vec<_>>>()?;
        let dev = dst.device.clone();
        let f = dev.get_or_load_custom_func(self.kernel, OPTIM.name, OPTIM.ptx)?;
        let offset = dl.start_offset();
        let mut d = dst.as_cuda_slice_mut::<f32>()?.slice_mut(offset..);
        let len = n as i64;
        let null = 0u64;
        with_opt_f64(self.norms.as_ref(), "optimizer norms", |norms| {
            let mut b = f.builder();
            b.arg(&mut d);
            for v in &views {
                b.arg(v);
            }
            match norms {
                Some(v) => b.arg(v),
                None => b.arg(&null),
            };
            b.arg(&len);
            push_scalars(&mut b, &self.scalars);
            unsafe { b.launch(elementwise(n)) }.w()?;
            Ok(())
        })
    }
}

impl InplaceOp2 for Update {
    fn name(&self) -> &'static str {
        self.kernel
    }
    cpu_refused!(inplace2);
    fn cuda_fwd(
        &self,
        d: &mut CudaStorage,
        dl: &Layout,
        a: &CudaStorage,
        al: &Layout,
    ) -> CResult<()> {
        self.launch(d, dl, &[(a, al)])
    }
}

impl InplaceOp3 for Update {
    fn name(&self) -> &'static str {
        self.kernel
    }
    cpu_refused!(inplace3);
    fn cuda_fwd(
        &self,
        d: &mut CudaStorage,
        dl: &Layout,
        a: &CudaStorage,
        al: &Layout,
        b: &CudaStorage,
        bl: &Layout,
    ) -> CResult<()> {
        self.launch(d, dl, &[(a, al), (b, bl)])
    }
}

fn update(kernel: &'static str, scalars: Vec<Scalar>, norms: Option<Tensor>) -> Update {
    Update {
        kernel,
        scalars,
        norms,
    }
}

/// One update of `p` with gradient `g` and buffers `state` on CUDA, in place: the same rules,
/// in the same order and precision, as the CPU's `super::step`.
pub(super) fn step(
    kind: OptimKind,
    gs: GroupSettings,
    lr: f64,
    t: i32,
    p: &Tensor,
    g: &Tensor,
    state: &[Tensor],
) -> Result<()> {
    use Scalar::{F, I};
    let wd = gs.weight_decay as f32;
    match kind {
        OptimKind::Sgd { momentum, nesterov } => {
            let (mu, lrf) = (momentum as f32, lr as f32);
            let buf = update(
                "momentum_f32",
                vec![F(mu), F(wd), F(0.0), F(lrf), I(0)],
                None,
            );
            state[0].inplace_op3(g, p, &buf)?;
            if nesterov {
                p.inplace_op3(
                    &state[0],
                    g,
                    &update("nesterov_f32", vec![F(lrf), F(wd), F(mu)], None),
                )?;
            } else {
                p.inplace_op2(&state[0], &update("sub_scaled_f32", vec![F(lrf)], None))?;
            }
        }
        OptimKind::Lars {
            momentum,
            eta,
            clip_lr,
        } => {
            let (mu, lrf) = (momentum as f32, lr as f32);
            // Groups without adaptation take neither the ratio nor the decay.
            let (mode, wd, norms) = if gs.adapt {
                let norms = p.apply_op2_no_bwd(
                    g,
                    &Norms {
                        kernel: "lars_norms_f32",
                        scalars: vec![F(wd)],
                    },
                )?;
                (if clip_lr { 2 } else { 1 }, wd, Some(norms))
            } else {
                (0, 0.0, None)
            };
            let buf = update(
                "momentum_f32",
                vec![F(mu), F(wd), F(eta as f32), F(lrf), I(mode)],
                norms,
            );
            state[0].inplace_op3(g, p, &buf)?;
            p.inplace_op2(&state[0], &update("sub_scaled_f32", vec![F(lrf)], None))?;
        }
        OptimKind::AdamW { beta1, beta2, eps } | OptimKind::Lamb { beta1, beta2, eps } => {
            let AdamCoefficients {
                b1,
                c1,
                b2,
                c2,
                bc1,
                bc2,
            } = AdamCoefficients::new(beta1, beta2, t);
            state[0].inplace_op2(g, &update("axpby_f32", vec![F(b1), F(c1)], None))?;
            state[1].inplace_op2(g, &update("axpby_sq_f32", vec![F(b2), F(c2)], None))?;
            let (eps, lrf) = (eps as f32, lr as f32);
            if matches!(kind, OptimKind::AdamW { .. }) {
                let keep = (1.0 - lr * gs.weight_decay) as f32;
                let op = update(
                    "adamw_f32",
                    vec![F(lrf), F(keep), F(bc1), F(bc2), F(eps)],
                    None,
                );
                p.inplace_op3(&state[0], &state[1], &op)?;
            } else {
                let norms = if gs.adapt {
                    Some(state[0].apply_op3_no_bwd(
                        &state[1],
                        p,
                        &Norms {
                            kernel: "lamb_norms_f32",
                            scalars: vec![F(bc1), F(bc2), F(eps), F(wd)],
                        },
                    )?)
                } else {
                    None
                };
                let op = update(
                    "lamb_f32",
                    vec![F(lrf), F(bc1), F(bc2), F(eps), F(wd)],
                    norms,
                );
                p.inplace_op3(&state[0], &state[1], &op)?;
            }
        }
    }
    Ok(())
}

/// `target ← m·target + (1 − m)·online` in one in-place pass.
pub(super) fn ema(target: &Tensor, online: &Tensor, m: f64) -> Result<()> {
    let op = update(
        "axpby_f32",
        vec![Scalar::F(m as f32), Scalar::F((1.0 - m) as f32)],
        None,
    );
    Ok(target.inplace_op2(online, &op)?)
}
