//! Multi-head self-attention straight from the fused `qkv` projection, with its backward.
//!
//! The ViT's `qkv` linear writes `(batch, tokens, 3·heads·head_dim)` rows: for each token Q, K
//! and V of every head side by side. The op-built attention split that into `(batch·heads,
//! tokens, head_dim)` operands with three strided copies, stored the `tokens × tokens`
//! probabilities of every head for the backward, and copied the heads' outputs back into
//! token rows. This op reads Q, K and V where the projection left them (a head's matrix is
//! every `3·heads·head_dim`-th run of `head_dim` values: a row stride, not a copy), writes
//! each head's output into its columns of the `(batch, tokens, heads·head_dim)` result that
//! the output projection reads, and keeps nothing for the backward but `qkv` itself: the
//! backward recomputes the probabilities (one more `Q·Kᵀ`, a few percent of a ViT block's
//! arithmetic) instead of holding `batch·heads·tokens²` values per block until it runs, as
//! PyTorch's fused attention does.
//!
//! Per head, with `s = 1/√head_dim`: `P = softmax(s·Q·Kᵀ)`, `O = P·V`; backward
//! `dV = Pᵀ·dO`, `dP = dO·Vᵀ`, `dS = s·P ⊙ (dP − rowsum(dP ⊙ P))`, `dQ = dS·K`, `dK = dSᵀ·Q`.
//!
//! CPU: one task per image, its heads in turn, each product one single-threaded GEMM on
//! strided operands (under a bf16 autocast on operands rounded to bf16 with f32 sums, as
//! PyTorch's autocast matmuls; the softmax stays f32). CUDA: per head, one strided-batched cuBLAS GEMM over the images (heads
//! are few, images many) and sslab's warp-per-row softmax kernels over all rows at once; TF32
//! tensor cores under a bf16 [`autocast`](crate::kernels::autocast), full f32 otherwise (as
//! PyTorch's default for matrix products). Under a bf16 autocast on CUDA the qkv activation is
//! bf16 (`kernels::precision`): the products take bf16 operands on tensor cores with f32 sums,
//! the scores and `dP` stay f32, the softmax kernels write the probabilities and `dS` in bf16
//! for the products that read them, and the output and `dqkv` are bf16.

use super::matmul::product_ld;
use super::matmul_bf16::Operand;
use super::precision::f32_or_bf16;
use super::softmax::{softmax_grad_row_wide, softmax_row_wide};
use super::storage::{own_kernel_data, slice, written, CResult};
use crate::error::Result;
use candle_core::{CpuStorage, CudaStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

/// The attention geometry: images, tokens, heads, head width.
#[derive(Clone, Copy, Debug)]
struct Geometry {
    batch: usize,
    tokens: usize,
    heads: usize,
    width: usize,
}

impl Geometry {
    /// From a `(batch, tokens, 3·heads·width)` qkv layout.
    fn of(dims: &[usize], heads: usize) -> CResult<Self> {
        let &[batch, tokens, cols] = dims else {
            candle_core::bail!("attention takes a 3-D (batch, tokens, 3·dim) qkv, got {dims:?}")
        };
        if heads == 0 || cols % (3 * heads) != 0 {
            candle_core::bail!(
                "attention: {cols} qkv columns do not split into Q, K and V of {heads} heads"
            );
        }
        Ok(Geometry {
            batch,
            tokens,
            heads,
            width: cols / (3 * heads),
        })
    }

    /// Output columns: heads·width.
    fn dim(&self) -> usize {
        self.heads * self.width
    }

    /// The distance between two tokens' qkv rows.
    fn row(&self) -> usize {
        3 * self.dim()
    }

    fn scale(&self) -> f32 {
        (self.width as f32).powf(-0.5)
    }
}

/// Attention's forward: `(batch, tokens, 3·dim)` qkv → `(batch, tokens, dim)`.
struct AttentionOp {
    heads: usize,
    /// Whether a bf16 autocast was on: the CPU's products then round their operands to bf16
    /// (f32 sums, as PyTorch's autocast matmuls), and CUDA's may use TF32 tensor cores.
    bf16: bool,
    /// Whether the CPU result is stored in bf16 for the output projection
    /// ([`attention_for_product`]).
    out_bf16: bool,
}

/// Attention's backward: `(qkv, dO)` → `dqkv`.
struct AttentionGrad {
    heads: usize,
    bf16: bool,
}

/// `s ← Q·Kᵀ` and `p ← softmax(scale·s)` for head `h` of one image's qkv rows `x` (the
/// product on bf16-rounded operands when `bf16`).
fn probabilities(x: &[f32], (h, bf16): (usize, bool), g: Geometry, s: &mut [f32], p: &mut [f32]) {
    let (t, w, r, dim) = (g.tokens, g.width, g.row(), g.dim());
    let (q, k) = (&x[h * w..], &x[dim + h * w..]);
    product_ld(bf16, (t, t, w), (s, t), false, (q, (r, 1)), (k, (1, r)));
    for (si, pi) in s.chunks(t).zip(p.chunks_mut(t)) {
        softmax_row_wide(si, pi, g.scale());
    }
}

impl CustomOp1 for AttentionOp {
    fn name(&self) -> &'static str {
        "sslab-attention"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> CResult<(CpuStorage, Shape)> {
        let g = Geometry::of(l.dims(), self.heads)?;
        let qkv = slice(s, l, "attention qkv")?;
        let (t, w, r, dim) = (g.tokens, g.width, g.row(), g.dim());
        // One image per task; every head writes its columns of every token's row.
        let image = (t * dim).max(1);
        let out = f32_or_bf16(g.batch * t * dim, (image, image), self.out_bf16, |at, o| {
            if w == 0 {
                return o.fill(0.0);
            }
            let x = &qkv[at / image * t * r..][..t * r];
            let (mut s, mut p) = (vec![0f32; t * t], vec![0f32; t * t]);
            for h in 0..g.heads {
                probabilities(x, (h, self.bf16), g, &mut s, &mut p);
                let v = &x[2 * dim + h * w..];
                product_ld(
                    self.bf16,
                    (t, w, t),
                    (&mut o[h * w..], dim),
                    false,
                    (&p, (t, 1)),
                    (v, (r, 1)),
                );
            }
        });
        Ok((out, Shape::from((g.batch, t, dim))))
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> CResult<(CudaStorage, Shape)> {
        on_cuda::forward(s, l, Geometry::of(l.dims(), self.heads)?, self.bf16)
    }

    fn bwd(&self, qkv: &Tensor, _out: &Tensor, d_out: &Tensor) -> CResult<Option<Tensor>> {
        let grad = AttentionGrad {
            heads: self.heads,
            bf16: self.bf16,
        };
        Ok(Some(qkv.apply_op2(&d_out.contiguous()?, grad)?))
    }
}

impl CustomOp2 for AttentionGrad {
    fn name(&self) -> &'static str {
        "sslab-attention-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let g = Geometry::of(l1.dims(), self.heads)?;
        let qkv = slice(s1, l1, "attention qkv")?;
        let d_out = slice(s2, l2, "attention output gradient")?;
        let (t, w, r, dim) = (g.tokens, g.width, g.row(), g.dim());
        if d_out.len() != g.batch * t * dim {
            candle_core::bail!(
                "attention gradient: {:?} does not fit {:?}",
                l2.dims(),
                l1.dims()
            );
        }
        // Every head writes its dQ, dK and dV columns of every token's row.
        let dqkv = written(qkv.len(), |dqkv| {
            if t * w == 0 {
                dqkv.fill(0.0);
                return;
            }
            dqkv.par_chunks_mut(t * r)
                .zip(qkv.par_chunks(t * r).zip(d_out.par_chunks(t * dim)))
                .for_each(|(dx, (x, d_o))| {
                    // Each product overwrites its destination.
                    let mm = |dims, dst: (&mut [f32], usize), lhs: Operand, rhs: Operand| {
                        product_ld(self.bf16, dims, dst, false, lhs, rhs)
                    };
                    let (mut s, mut p) = (vec![0f32; t * t], vec![0f32; t * t]);
                    for h in 0..g.heads {
                        let (q, k, v) = (&x[h * w..], &x[dim + h * w..], &x[2 * dim + h * w..]);
                        let d_oh = &d_o[h * w..];
                        probabilities(x, (h, self.bf16), g, &mut s, &mut p);
                        // dV = Pᵀ·dO
                        let dv = &mut dx[2 * dim + h * w..];
                        mm((t, w, t), (dv, r), (&p, (1, t)), (d_oh, (dim, 1)));
                        // dP = dO·Vᵀ, then dS in its place.
                        mm((t, t, w), (&mut s, t), (d_oh, (dim, 1)), (v, (1, r)));
                        for (pi, si) in p.chunks(t).zip(s.chunks_mut(t)) {
                            softmax_grad_row_wide(pi, si, g.scale());
                        }
                        // dQ = dS·K, dK = dSᵀ·Q
                        mm((t, w, t), (&mut dx[h * w..], r), (&s, (t, 1)), (k, (r, 1)));
                        mm(
                            (t, w, t),
                            (&mut dx[dim + h * w..], r),
                            (&s, (1, t)),
                            (q, (r, 1)),
                        );
                    }
                });
        });
        Ok((CpuStorage::F32(dqkv), l1.shape().clone()))
    }

    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> CResult<(CudaStorage, Shape)> {
        let g = Geometry::of(l1.dims(), self.heads)?;
        on_cuda::backward((s1, l1), (s2, l2), g, self.bf16)
    }
}

/// Multi-head self-attention of a `(batch, tokens, 3·dim)` fused qkv projection (Q, K, V of
/// each token side by side, each split into `heads` runs of `dim/heads` values, as timm's and
/// MoCo v3's ViT lay it out) to the `(batch, tokens, dim)` input of the output projection:
/// `softmax(Q·Kᵀ/√head_dim)·V` per head. `fused`: sslab's kernel on the CPU and on CUDA (no
/// head-split copies, probabilities recomputed in the backward, see the module doc); else
/// candle's ops, split into heads with copies.
///
/// ```
/// use candle_core::{Device, Tensor};
/// // 2 images, 5 tokens, 2 heads of width 4: qkv has 3·2·4 = 24 columns.
/// let qkv = Tensor::randn(0f32, 1.0, (2, 5, 24), &Device::Cpu)?;
/// let out = sslab::kernels::attention(&qkv, 2, true)?;
/// assert_eq!(out.dims(), [2, 5, 8]);
/// let reference = sslab::kernels::attention(&qkv, 2, false)?;
/// let diff = (out - reference)?.abs()?.max_all()?.to_scalar::<f32>()?;
/// assert!(diff < 1e-5);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn attention(qkv: &Tensor, heads: usize, fused: bool) -> Result<Tensor> {
    attention_to(qkv, heads, fused, false)
}

/// [`attention`] (fused) for a result that only the output projection reads, as in a ViT
/// block: under a bf16 [`autocast`](super::autocast) on a CPU with the bf16 kernels it is
/// stored in bf16, the values the projection's packing would round it to (the same bits
/// everywhere after) for half the bytes; the backward recomputes from `qkv` and does not read
/// it. Otherwise it is [`attention`].
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use sslab::kernels::{attention, attention_for_product, autocast, Precision};
/// let qkv = Tensor::randn(0f32, 1.0, (2, 5, 24), &Device::Cpu)?;
/// let _bf16 = autocast(Precision::Bf16);
/// let stored = attention_for_product(&qkv, 2)?.to_dtype(DType::F32)?;
/// let rounded = attention(&qkv, 2, true)?.to_dtype(DType::BF16)?.to_dtype(DType::F32)?;
/// let diff = (stored - rounded)?.abs()?.max_all()?.to_scalar::<f32>()?;
/// assert_eq!(diff, 0.0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn attention_for_product(qkv: &Tensor, heads: usize) -> Result<Tensor> {
    let out_bf16 =
        super::storage::on_cpu_f32(qkv) && super::precision::cpu_bf16_operands(qkv.device());
    attention_to(qkv, heads, true, out_bf16)
}

fn attention_to(qkv: &Tensor, heads: usize, fused: bool, out_bf16: bool) -> Result<Tensor> {
    let g = Geometry::of(qkv.dims(), heads)?;
    if fused && own_kernel_data(qkv) {
        // f32 on the CPU and CUDA; on CUDA also a bf16 qkv activation (bf16 autocast), whose
        // products take bf16 tensor cores and whose output is a bf16 activation.
        let bf16 = super::autocast_precision() == super::Precision::Bf16;
        let op = AttentionOp {
            heads,
            bf16,
            out_bf16,
        };
        return Ok(qkv.contiguous()?.apply_op1(op)?);
    }
    if qkv.dtype() == candle_core::DType::BF16 {
        // A bf16 qkv activation elsewhere (the CPU under `bf16_activations_on_cpu`): the f32
        // op between a widening and a rounding.
        return super::precision::via_f32(qkv, |qkv| attention(qkv, heads, fused));
    }
    let (b, t, w) = (g.batch, g.tokens, g.width);
    let (p, v) = probabilities_and_values(qkv, g)?;
    Ok(super::batched_matmul(&p, &v, false, false, false)?
        .reshape((b, heads, t, w))?
        .transpose(1, 2)?
        .reshape((b, t, g.dim()))?)
}

/// The attention probabilities `softmax(Q·Kᵀ/√head_dim)` of every head, `(batch, heads,
/// tokens, tokens)`, from a fused qkv projection as [`attention`] takes it: row i is how token
/// i weighs every token. Candle's ops (with a backward), for inspection: the fused op never
/// stores them.
pub fn attention_probabilities(qkv: &Tensor, heads: usize) -> Result<Tensor> {
    let qkv = qkv.to_dtype(candle_core::DType::F32)?;
    let qkv = &qkv;
    let g = Geometry::of(qkv.dims(), heads)?;
    let (p, _) = probabilities_and_values(qkv, g)?;
    Ok(p.reshape((g.batch, heads, g.tokens, g.tokens))?)
}

/// The op-built head split: `(batch·heads, tokens, tokens)` probabilities and `(batch·heads,
/// tokens, head_dim)` values, copied out of the qkv rows.
fn probabilities_and_values(qkv: &Tensor, g: Geometry) -> Result<(Tensor, Tensor)> {
    let (b, t, h, w) = (g.batch, g.tokens, g.heads, g.width);
    let qkv = qkv.reshape((b, t, 3, h, w))?.permute((2, 0, 3, 1, 4))?;
    // (batch·heads, tokens, width) operands: one batch axis for the batched product.
    let part = |i| -> Result<Tensor> { Ok(qkv.get(i)?.contiguous()?.reshape((b * h, t, w))?) };
    let (q, k, v) = (part(0)?, part(1)?, part(2)?);
    let scores = super::batched_matmul(&q, &k, false, true, false)?;
    Ok((super::softmax_last(&scores, g.scale() as f64, false)?, v))
}

/// The CUDA arm.
#[cfg(feature = "cuda")]
mod on_cuda {
    use super::{CResult, Geometry};
    use crate::kernels::cuda::{int, view, warp_per_row, Buf, PushTyped, View, SOFTMAX};
    use candle_core::cuda::cudarc::cublas::{result, sys, CudaBlas};
    use candle_core::cuda::cudarc::driver::{
        CudaStream, DevicePtr, DevicePtrMut, PushKernelArg, SyncOnDrop,
    };
    use candle_core::cuda::WrapErr;
    use candle_core::{CudaDevice, CudaStorage, DType, Layout, Shape};

    /// A row-major operand of a strided-batched product: device memory from the first
    /// matrix's first value, rows `ld` apart, matrices `stride` apart, used transposed when `t`.
    struct Operand<'a> {
        view: View<'a>,
        ld: usize,
        stride: usize,
        t: bool,
    }

    /// cuBLAS's name for the element type.
    fn data_type(dtype: DType) -> sys::cudaDataType_t {
        match dtype {
            DType::BF16 => sys::cudaDataType_t::CUDA_R_16BF,
            _ => sys::cudaDataType_t::CUDA_R_32F,
        }
    }

    /// The device address of a view, with the guard that orders its use on `stream`.
    fn address<'s>(v: &'s View, stream: &'s CudaStream) -> (u64, SyncOnDrop<'s>) {
        match v {
            View::F32(v) => v.device_ptr(stream),
            View::Bf16(v) => v.device_ptr(stream),
        }
    }

    /// `c[i] = op(a[i])·op(b[i])` for `batch` row-major `(m×n)` results, rows `ldc` apart,
    /// matrices `stride_c` apart, starting at value `c_at` of `c`. cuBLAS is column-major: it
    /// computes `cᵀ = op(b)ᵀ·op(a)ᵀ`, so the operands go in swapped. `a` and `b` are both f32
    /// or both bf16, `c` either; sums are f32 (TF32 tensor cores for f32 operands when `tf32`,
    /// bf16 tensor cores for bf16 operands).
    #[allow(clippy::too_many_arguments)]
    fn gemm(
        blas: &CudaBlas,
        tf32: bool,
        (m, n, k, batch): (usize, usize, usize, usize),
        a: Operand,
        b: Operand,
        c: &mut Buf,
        (c_at, ldc, stride_c): (usize, usize, usize),
    ) -> CResult<()> {
        use sys::cublasOperation_t::{CUBLAS_OP_N, CUBLAS_OP_T};
        let ab_type = a.view.dtype();
        if b.view.dtype() != ab_type {
            candle_core::bail!("attention: a product's operands differ in dtype");
        }
        let op = |t| if t { CUBLAS_OP_T } else { CUBLAS_OP_N };
        let compute = if tf32 && ab_type == DType::F32 {
            sys::cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32
        } else {
            sys::cublasComputeType_t::CUBLAS_COMPUTE_32F
        };
        let (alpha, beta) = (1f32, 0f32);
        let c_type = c.dtype();
        let stream = match &*c {
            Buf::F32(s) => s.stream().clone(),
            Buf::Bf16(s) => s.stream().clone(),
        };
        let (pa, _ga) = address(&a.view, &stream);
        let (pb, _gb) = address(&b.view, &stream);
        let (pc, _gc) = match c {
            Buf::F32(s) => s.device_ptr_mut(&stream),
            Buf::Bf16(s) => s.device_ptr_mut(&stream),
        };
        let pc = pc + (c_at * c_type.size_in_bytes()) as u64;
        // SAFETY: the callers size every operand for `batch` matrices of these strides (the
        // views end where the tensors end, and each matrix's last row lies inside them), and
        // the element types named here are the ones the views and the buffer hold.
        unsafe {
            result::gemm_strided_batched_ex(
                *blas.handle(),
                op(b.t),
                op(a.t),
                int(n, "attention columns")?,
                int(m, "attention rows")?,
                int(k, "attention inner size")?,
                &alpha as *const f32 as *const _,
                pb as *const _,
                data_type(ab_type),
                int(b.ld, "attention row stride")?,
                b.stride as i64,
                pa as *const _,
                data_type(ab_type),
                int(a.ld, "attention row stride")?,
                a.stride as i64,
                &beta as *const f32 as *const _,
                pc as *mut _,
                data_type(c_type),
                int(ldc, "attention row stride")?,
                stride_c as i64,
                int(batch, "attention batch")?,
                compute,
                sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT_TENSOR_OP,
            )
        }
        .w()?;
        Ok(())
    }

    /// The views of a qkv tensor's Q, K and V of head `h` (each run `width` long, rows
    /// `3·dim` apart, images `tokens·3·dim` apart).
    fn heads_of<'a>(x: &View<'a>, g: Geometry, h: usize, t: [bool; 3]) -> [Operand<'a>; 3] {
        std::array::from_fn(|i| Operand {
            view: x.from(i * g.dim() + h * g.width),
            ld: g.row(),
            stride: g.tokens * g.row(),
            t: t[i],
        })
    }

    /// `(batch, heads, tokens, tokens)` probabilities `softmax(s·Q·Kᵀ)` of every head, in the
    /// qkv's dtype (the next product reads them with V or dO), and the raw scores' f32 buffer
    /// (free for the backward's `dP`).
    fn probabilities(dev: &CudaDevice, x: &View, g: Geometry, tf32: bool) -> CResult<(Buf, Buf)> {
        let (t, hh) = (g.tokens, g.heads);
        let n = g.batch * hh * t * t;
        let mut s = Buf::F32(unsafe { dev.alloc::<f32>(n)? });
        let blas = dev.cublas_handle();
        for h in 0..hh {
            let [q, k, _] = heads_of(x, g, h, [false, true, false]);
            let dims = (t, t, g.width, g.batch);
            gemm(&blas, tf32, dims, q, k, &mut s, (h * t * t, t, hh * t * t))?;
        }
        let p = Buf::alloc(dev, x.dtype(), n)?;
        let kernel = match x.dtype() {
            DType::BF16 => "softmax_to_bf16",
            _ => "softmax_f32",
        };
        let f = dev.get_or_load_custom_func(kernel, SOFTMAX.name, SOFTMAX.ptx)?;
        let (rows, d, scale) = ((g.batch * hh * t) as i64, int(t, "tokens")?, g.scale());
        let mut b = f.builder();
        b.buf(&s).buf(&p).arg(&rows).arg(&d).arg(&scale);
        unsafe { b.launch(warp_per_row(rows as usize)) }.w()?;
        Ok((p, s))
    }

    /// The probabilities (or dS) of head `h` as an operand (`t`: transposed).
    fn probs(p: &Buf, g: Geometry, h: usize, t: bool) -> Operand<'_> {
        let tt = g.tokens * g.tokens;
        Operand {
            view: p.view_from(h * tt),
            ld: g.tokens,
            stride: g.heads * tt,
            t,
        }
    }

    /// Head `h`'s columns of a `(batch, tokens, dim)` tensor as an operand.
    fn columns<'a>(y: &View<'a>, g: Geometry, h: usize) -> Operand<'a> {
        Operand {
            view: y.from(h * g.width),
            ld: g.dim(),
            stride: g.tokens * g.dim(),
            t: false,
        }
    }

    pub(super) fn forward(
        s: &CudaStorage,
        l: &Layout,
        g: Geometry,
        tf32: bool,
    ) -> CResult<(CudaStorage, Shape)> {
        let x = view(s, l, "attention qkv")?;
        let dev = &s.device;
        let (t, w, dim) = (g.tokens, g.width, g.dim());
        let shape = Shape::from((g.batch, t, dim));
        let mut out = Buf::alloc(dev, x.dtype(), g.batch * t * dim)?;
        if g.batch * t * w > 0 {
            let (p, _) = probabilities(dev, &x, g, tf32)?;
            let blas = dev.cublas_handle();
            for h in 0..g.heads {
                let [_, _, v] = heads_of(&x, g, h, [false; 3]);
                let dims = (t, w, t, g.batch);
                let at = (h * w, dim, t * dim);
                gemm(&blas, tf32, dims, probs(&p, g, h, false), v, &mut out, at)?;
            }
        }
        Ok((out.into_storage(dev), shape))
    }

    pub(super) fn backward(
        (s1, l1): (&CudaStorage, &Layout),
        (s2, l2): (&CudaStorage, &Layout),
        g: Geometry,
        tf32: bool,
    ) -> CResult<(CudaStorage, Shape)> {
        let x = view(s1, l1, "attention qkv")?;
        let d_out = view(s2, l2, "attention output gradient")?;
        let (t, w, dim, r) = (g.tokens, g.width, g.dim(), g.row());
        if l2.shape().elem_count() != g.batch * t * dim || d_out.dtype() != x.dtype() {
            candle_core::bail!(
                "attention gradient: {:?} {:?} does not fit {:?} {:?}",
                l2.dims(),
                d_out.dtype(),
                l1.dims(),
                x.dtype()
            );
        }
        let dev = &s1.device;
        let mut dx = Buf::alloc(dev, x.dtype(), g.batch * t * r)?;
        if g.batch * t * w == 0 {
            return Ok((dx.into_storage(dev), l1.shape().clone()));
        }
        let (p, mut dp) = probabilities(dev, &x, g, tf32)?;
        let blas = dev.cublas_handle();
        let img = t * r;
        for h in 0..g.heads {
            let [_, _, v] = heads_of(&x, g, h, [false, false, true]);
            // dV = Pᵀ·dO into V's columns; dP = dO·Vᵀ (f32).
            let dims = (t, w, t, g.batch);
            let at = (2 * dim + h * w, r, img);
            let pt = probs(&p, g, h, true);
            gemm(&blas, tf32, dims, pt, columns(&d_out, g, h), &mut dx, at)?;
            let dims = (t, t, w, g.batch);
            let at = (h * t * t, t, g.heads * t * t);
            gemm(&blas, tf32, dims, columns(&d_out, g, h), v, &mut dp, at)?;
        }
        // dS in the qkv's dtype, from the probabilities the forward's product read.
        let ds = Buf::alloc(dev, x.dtype(), g.batch * g.heads * t * t)?;
        let kernel = match x.dtype() {
            DType::BF16 => "softmax_grad_bf16",
            _ => "softmax_grad_f32",
        };
        let f = dev.get_or_load_custom_func(kernel, SOFTMAX.name, SOFTMAX.ptx)?;
        let (rows, d, scale) = ((g.batch * g.heads * t) as i64, int(t, "tokens")?, g.scale());
        let mut b = f.builder();
        b.buf(&p).buf(&dp).buf(&ds).arg(&rows).arg(&d).arg(&scale);
        unsafe { b.launch(warp_per_row(rows as usize)) }.w()?;
        for h in 0..g.heads {
            let [q, k, _] = heads_of(&x, g, h, [false; 3]);
            let dims = (t, w, t, g.batch);
            // dQ = dS·K, dK = dSᵀ·Q.
            let at = (h * w, r, img);
            gemm(&blas, tf32, dims, probs(&ds, g, h, false), k, &mut dx, at)?;
            let at = (dim + h * w, r, img);
            gemm(&blas, tf32, dims, probs(&ds, g, h, true), q, &mut dx, at)?;
        }
        Ok((dx.into_storage(dev), l1.shape().clone()))
    }
}

/// Without the `cuda` feature no CUDA tensor reaches the op (the dispatcher's `own_kernel`).
#[cfg(not(feature = "cuda"))]
mod on_cuda {
    use super::{CResult, Geometry};
    use crate::kernels::storage::needs_feature;
    use candle_core::{CudaStorage, Layout, Shape};

    pub(super) fn forward(
        _: &CudaStorage,
        _: &Layout,
        _: Geometry,
        _: bool,
    ) -> CResult<(CudaStorage, Shape)> {
        needs_feature("attention", "cuda")
    }

    pub(super) fn backward(
        _: (&CudaStorage, &Layout),
        _: (&CudaStorage, &Layout),
        _: Geometry,
        _: bool,
    ) -> CResult<(CudaStorage, Shape)> {
        needs_feature("attention", "cuda")
    }
}
