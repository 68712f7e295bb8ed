//! Matrix products on the CPU: gemm's packed kernels for large operands, direct dot products
//! for narrow weight gradients, and a batched product with the batch spread over threads.

use super::affine::bias_grad;
use super::matmul_bf16::{matmul_bf16, matmul_bf16_bias};
use super::simd::avx2;
use super::storage::{slice, values, written, CResult, Values};
use crate::error::Result;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

/// `dst (m×n) = [dst +] lhs (m×k) · rhs (k×n)`, each given by (row stride, col stride).
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    accumulate: bool,
    lhs: &[f32],
    lhs_strides: (usize, usize),
    rhs: &[f32],
    rhs_strides: (usize, usize),
) {
    matmul_ld(
        (m, n, k),
        (dst, n),
        accumulate,
        (lhs, lhs_strides),
        (rhs, rhs_strides),
    )
}

/// [`matmul`] into a `dst` whose rows lie `ld` apart (the interleaved per-position matrices
/// of `winograd.rs`).
pub(crate) fn matmul_ld(
    (m, n, k): (usize, usize, usize),
    (dst, ld): (&mut [f32], usize),
    accumulate: bool,
    (lhs, (lrs, lcs)): (&[f32], (usize, usize)),
    (rhs, (rrs, rcs)): (&[f32], (usize, usize)),
) {
    assert!(
        m == 0 || n == 0 || dst.len() >= (m - 1) * ld + n,
        "matmul: destination too short"
    );
    assert!(
        m == 0 || k == 0 || lhs.len() > (m - 1) * lrs + (k - 1) * lcs,
        "matmul: left operand too short"
    );
    assert!(
        k == 0 || n == 0 || rhs.len() > (k - 1) * rrs + (n - 1) * rcs,
        "matmul: right operand too short"
    );
    // SAFETY: the asserts above check that every strided extent lies inside its slice.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            ld as isize,
            accumulate,
            lhs.as_ptr(),
            lcs as isize,
            lrs as isize,
            rhs.as_ptr(),
            rcs as isize,
            rrs as isize,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

/// [`matmul_ld`] into `dst` (rows `dims.1` apart), or with bf16-rounded operands and f32 sums
/// ([`matmul_bf16`], on this thread) when `bf16`: the convolutions' products under CPU
/// autocast. Products narrower than the bf16 kernel's 32-column panels, or shallower than
/// 64, stay f32: there packing costs more than the doubled rate gives (measured on a
/// ResNet-18's layers, `sslab bench conv --precision bf16`: the 3-channel stem, 1×1
/// shortcuts at 4×4 output, 1.5-2× slower in bf16).
pub(crate) fn product(
    bf16: bool,
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    accumulate: bool,
    lhs: (&[f32], (usize, usize)),
    rhs: (&[f32], (usize, usize)),
) {
    product_ld(bf16, (m, n, k), (dst, n), accumulate, lhs, rhs)
}

/// Columns and depth from which a convolution's product takes bf16 (see [`product`]).
const BF16_MIN_COLS: usize = 32;
const BF16_MIN_DEPTH: usize = 64;

/// Whether a bf16 product of `cols` columns and `depth` depths takes the bf16 kernel (see
/// [`product`]).
pub(crate) fn bf16_product(cols: usize, depth: usize) -> bool {
    cols >= BF16_MIN_COLS && depth >= BF16_MIN_DEPTH
}

/// [`product`] into a `dst` whose rows lie `ld` apart.
pub(crate) fn product_ld(
    bf16: bool,
    dims: (usize, usize, usize),
    dst: (&mut [f32], usize),
    accumulate: bool,
    lhs: (&[f32], (usize, usize)),
    rhs: (&[f32], (usize, usize)),
) {
    if bf16 && bf16_product(dims.1, dims.2) {
        matmul_bf16(dims, dst, accumulate, lhs, rhs, false);
    } else {
        matmul_ld(dims, dst, accumulate, lhs, rhs);
    }
}

/// Output columns up to which a weight gradient takes [`matmul_nt_narrow`].
pub(super) const NARROW: usize = 32;

/// `dst (m×n) [+]= a (m×k) · bᵀ` for `b` (n×k), rows of both `ld` apart: the weight gradient
/// of a layer with few taps per output channel (the 3-channel stem has 27). Dot products over
/// k in 4×3 blocks of 8-lane accumulators, without packing: gemm's packed micro-kernel ran
/// the stem's 64×27 (k = 1024) at 44 GFLOP/s on one core, half of what it reaches on wide
/// matrices, because packing costs as much as the few products per packed value.
pub(super) fn matmul_nt_narrow(
    a: &[f32],
    b: &[f32],
    (m, n, k, ld): (usize, usize, usize, usize),
    dst: &mut [f32],
    accumulate: bool,
) {
    const R: usize = 4;
    const S: usize = 3;
    for i0 in (0..m).step_by(R) {
        for j0 in (0..n).step_by(S) {
            // Rows and columns past the edge repeat the last one; their sums are not stored.
            let rows: [usize; R] = std::array::from_fn(|r| (i0 + r).min(m - 1));
            let cols: [usize; S] = std::array::from_fn(|s| (j0 + s).min(n - 1));
            let mut sums = [[0f32; S]; R];
            let kk = narrow_dots(a, b, (ld, k), (rows, cols), &mut sums);
            for (r, &row) in rows.iter().enumerate().take(m - i0) {
                for (s, &col) in cols.iter().enumerate().take(n - j0) {
                    let tail: f32 = (kk..k).map(|t| a[row * ld + t] * b[col * ld + t]).sum();
                    let sum = sums[r][s] + tail;
                    let d = &mut dst[row * n + col];
                    *d = if accumulate { *d + sum } else { sum };
                }
            }
        }
    }
}

/// The vector part of [`matmul_nt_narrow`]'s dot products; returns where the scalar tail
/// starts (0 without AVX2).
fn narrow_dots(
    a: &[f32],
    b: &[f32],
    (ld, k): (usize, usize),
    (rows, cols): ([usize; 4], [usize; 3]),
    sums: &mut [[f32; 3]; 4],
) -> usize {
    #[cfg(target_arch = "x86_64")]
    if avx2() {
        // SAFETY: AVX2 and FMA were detected on this CPU.
        return unsafe { narrow_simd::dots(a, b, ld, k, rows, cols, sums) };
    }
    let _ = (a, b, ld, k, rows, cols, sums);
    0
}

#[cfg(target_arch = "x86_64")]
mod narrow_simd {
    use std::arch::x86_64::*;

    /// The 4×3 dot products of [`super::matmul_nt_narrow`] over `k` rounded down to 8; returns
    /// where the scalar tail starts.
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn dots(
        a: &[f32],
        b: &[f32],
        ld: usize,
        k: usize,
        rows: [usize; 4],
        cols: [usize; 3],
        sums: &mut [[f32; 3]; 4],
    ) -> usize {
        let mut acc = [[_mm256_setzero_ps(); 3]; 4];
        let end = k / 8 * 8;
        let ar = rows.map(|r| &a[r * ld..r * ld + end]);
        let bc = cols.map(|c| &b[c * ld..c * ld + end]);
        for kk in (0..end).step_by(8) {
            // SAFETY: every row slice holds `end` floats, and kk + 8 <= end.
            let av = ar.map(|row| unsafe { _mm256_loadu_ps(row[kk..kk + 8].as_ptr()) });
            let bv = bc.map(|col| unsafe { _mm256_loadu_ps(col[kk..kk + 8].as_ptr()) });
            for (acc_r, x) in acc.iter_mut().zip(av) {
                for (acc_rs, y) in acc_r.iter_mut().zip(bv) {
                    *acc_rs = _mm256_fmadd_ps(x, y, *acc_rs);
                }
            }
        }
        for (sum_r, acc_r) in sums.iter_mut().zip(acc) {
            for (sum, v) in sum_r.iter_mut().zip(acc_r) {
                let mut lanes = [0f32; 8];
                // SAFETY: `lanes` holds 8 floats.
                unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), v) };
                *sum = lanes.iter().sum();
            }
        }
        end
    }
}

/// `dst = bf16(lhs) · bf16(rhs) [+ bias]` ([`matmul_bf16_bias`]) for operands of either
/// storage type, f32 or bf16 (`precision::cpu_bf16_operands`).
fn bf16_values(
    dims: (usize, usize, usize),
    dst: (&mut [f32], usize),
    (a, sa): (Values, (usize, usize)),
    (b, sb): (Values, (usize, usize)),
    bias: Option<&[f32]>,
    parallel: bool,
) {
    use Values::{Bf16, F32};
    match (a, b) {
        (F32(a), F32(b)) => matmul_bf16_bias(dims, dst, false, (a, sa), (b, sb), bias, parallel),
        (F32(a), Bf16(b)) => matmul_bf16_bias(dims, dst, false, (a, sa), (b, sb), bias, parallel),
        (Bf16(a), F32(b)) => matmul_bf16_bias(dims, dst, false, (a, sa), (b, sb), bias, parallel),
        (Bf16(a), Bf16(b)) => matmul_bf16_bias(dims, dst, false, (a, sa), (b, sb), bias, parallel),
    }
}

/// Batched matrix product `C[b] = op(A[b]) · op(B[b])` (`op` = transpose where flagged) with
/// the batch spread over threads. candle's CPU matmul loops over the batch on one thread, so a
/// ViT's per-head attention products (hundreds of 65×64 matrices) used one core; here each
/// matrix is one single-threaded GEMM and the transposes are strides, not copies.
///
/// With `bf16` the products take bf16-rounded operands with f32 sums (`matmul_bf16.rs`), in
/// the backward too, as PyTorch's CPU autocast computes both passes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BatchedMatmulOp {
    pub ta: bool,
    pub tb: bool,
    pub bf16: bool,
}

impl BatchedMatmulOp {
    /// `(batch, m, k, n)` of the product, checking the operands agree.
    fn dims(&self, a: &[usize], b: &[usize]) -> CResult<(usize, usize, usize, usize)> {
        let (&[ba, a1, a2], &[bb, b1, b2]) = (a, b) else {
            candle_core::bail!("batched matmul takes two 3-D tensors, got {a:?} and {b:?}")
        };
        let (m, k) = if self.ta { (a2, a1) } else { (a1, a2) };
        let (k2, n) = if self.tb { (b2, b1) } else { (b1, b2) };
        if ba != bb || k != k2 {
            candle_core::bail!(
                "batched matmul: {a:?}{} · {b:?}{} do not fit",
                if self.ta { "ᵀ" } else { "" },
                if self.tb { "ᵀ" } else { "" }
            );
        }
        Ok((ba, m, k, n))
    }
}

impl CustomOp2 for BatchedMatmulOp {
    fn name(&self) -> &'static str {
        "sslab-batched-matmul"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let (batch, m, k, n) = self.dims(l1.dims(), l2.dims())?;
        let a = values(s1, l1, "batched matmul lhs")?;
        let b = values(s2, l2, "batched matmul rhs")?;
        // The f32 product's operands; the bf16 one takes f32 or bf16 values.
        let f32_operands = match (self.bf16, a, b) {
            (true, ..) => None,
            (false, Values::F32(a), Values::F32(b)) => Some((a, b)),
            (false, ..) => candle_core::bail!("batched matmul in f32: expected two f32 tensors"),
        };
        let a_strides = if self.ta { (1, m) } else { (k, 1) };
        let b_strides = if self.tb { (1, k) } else { (n, 1) };
        // One product per thread over the batch; a single product (a linear layer) splits
        // its rows over the threads instead (candle's own f32 matmul does the same). Both
        // kernels write every element of their result (zeros when k = 0).
        let threads = rayon::current_num_threads();
        let split_rows = batch < threads;
        let c = written(batch * m * n, |c| {
            if m * n == 0 {
                return;
            }
            c.par_chunks_mut(m * n).enumerate().for_each(|(i, ci)| {
                let (ar, br) = (i * m * k..(i + 1) * m * k, i * k * n..(i + 1) * k * n);
                let Some((a, b)) = f32_operands else {
                    let (l, r) = ((a.range(ar), a_strides), (b.range(br), b_strides));
                    return bf16_values((m, n, k), (ci, n), l, r, None, split_rows);
                };
                let (ai, bi) = (&a[ar], &b[br]);
                if split_rows && m >= 2 * ROW_SPLIT_MIN {
                    // Blocks of whole rows, one or two per thread; row r0 of A starts at
                    // r0 · (A's row stride), whichever way A is laid out.
                    let rows = m.div_ceil(threads).max(ROW_SPLIT_MIN);
                    ci.par_chunks_mut(rows * n).enumerate().for_each(|(j, cj)| {
                        let (r0, mj) = (j * rows, cj.len() / n);
                        let aj = &ai[r0 * a_strides.0..];
                        matmul(mj, n, k, cj, false, aj, a_strides, bi, b_strides);
                    });
                } else {
                    matmul(m, n, k, ci, false, ai, a_strides, bi, b_strides);
                }
            });
        });
        Ok((CpuStorage::F32(c), Shape::from((batch, m, n))))
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        dc: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>)> {
        let (da, db) = self.grads(a, b, dc)?;
        Ok((Some(da), Some(db)))
    }
}

impl BatchedMatmulOp {
    /// The gradients of both operands from the output's gradient `dc`.
    fn grads(&self, a: &Tensor, b: &Tensor, dc: &Tensor) -> CResult<(Tensor, Tensor)> {
        let dc = dc.contiguous()?;
        let bf16 = self.bf16;
        let op = |ta, tb| BatchedMatmulOp { ta, tb, bf16 };
        // With A' = op(A), B' = op(B): dA' = dC·B'ᵀ and dB' = A'ᵀ·dC, transposed back where
        // the operand itself was transposed.
        let da = match (self.ta, self.tb) {
            (false, false) => dc.apply_op2(b, op(false, true))?,
            (false, true) => dc.apply_op2(b, op(false, false))?,
            (true, false) => b.apply_op2(&dc, op(false, true))?,
            (true, true) => b.apply_op2(&dc, op(true, true))?,
        };
        let db = match (self.ta, self.tb) {
            (false, false) => a.apply_op2(&dc, op(true, false))?,
            (true, false) => a.apply_op2(&dc, op(false, false))?,
            (false, true) => dc.apply_op2(a, op(true, false))?,
            (true, true) => dc.apply_op2(a, op(true, true))?,
        };
        Ok((da, db))
    }
}

/// `op(a) · op(b)` over a leading batch axis (`(batch, m, k)`-shaped operands, `op` = transpose
/// where flagged): sslab's thread-parallel kernel on the CPU (`fused`), else candle's matmul;
/// bf16 operands with an f32 result under a bf16 [`autocast`](crate::kernels::autocast).
pub fn batched_matmul(a: &Tensor, b: &Tensor, ta: bool, tb: bool, fused: bool) -> Result<Tensor> {
    if super::precision::cpu_bf16(a, b) {
        return cpu_product(a, b, ta, tb, true);
    }
    super::precision::autocast_pair(a, b, false, |a, b| batched_in(a, b, ta, tb, fused))
}

/// sslab's CPU product of f32 tensors (`(batch, m, k)`-shaped, transposed where flagged), in
/// f32 or with bf16-rounded operands.
fn cpu_product(a: &Tensor, b: &Tensor, ta: bool, tb: bool, bf16: bool) -> Result<Tensor> {
    let op = BatchedMatmulOp { ta, tb, bf16 };
    Ok(a.contiguous()?.apply_op2(&b.contiguous()?, op)?)
}

/// Rows per thread below which a single f32 product is not split over the threads.
const ROW_SPLIT_MIN: usize = 16;

/// A linear layer's product `x · wᵀ` for `x` `(rows, in)` and a weight `w` `(out, in)`, in this
/// thread's precision (as [`autocast_matmul`]).
///
/// On the CPU it is one op that reads `w` transposed in place, so the weight gradient comes
/// back in `w`'s own layout. `x.matmul(&w.t())` gave autograd a transposed view of it, which
/// candle then copied element by element to make it contiguous: a strided copy of every
/// weight gradient per step (3% of a Barlow Twins step with its 2048×2048 projector, `perf`).
/// Elsewhere it is `x · wᵀ` through [`autocast_matmul`], except under a bf16 autocast on a
/// device that keeps activations in bf16 (CUDA): there the product returns bf16, the dtype the
/// next op reads (`kernels::precision`).
///
/// ```
/// use candle_core::{Device, Tensor};
/// let x = Tensor::new(&[[1f32, 2.0], [3.0, 4.0]], &Device::Cpu)?;
/// let w = Tensor::new(&[[1f32, 0.0], [1.0, 1.0], [0.0, 2.0]], &Device::Cpu)?;
/// let y = sslab::kernels::linear(&x, &w)?;
/// assert_eq!(y.to_vec2::<f32>()?, [[1.0, 3.0, 4.0], [3.0, 7.0, 8.0]]);
/// # Ok::<(), sslab::Error>(())
/// ```
pub fn linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    if super::precision::bf16_activations(x.device()) {
        // `w` cast first and read transposed: cuBLAS takes the transpose as a flag.
        return super::precision::autocast_pair(x, w, true, |x, w| Ok(x.matmul(&w.t()?)?));
    }
    let on_cpu = super::storage::on_cpu_f32(x) && super::storage::on_cpu_f32(w);
    if on_cpu && x.rank() == 2 && w.rank() == 2 {
        let bf16 = super::precision::cpu_bf16(x, w);
        let y = cpu_product(&x.unsqueeze(0)?, &w.unsqueeze(0)?, false, true, bf16)?;
        return Ok(y.squeeze(0)?);
    }
    autocast_matmul(x, &w.t()?)
}

/// A linear layer with its bias, `x · wᵀ + b` for `x` `(rows, in)`, `w` `(out, in)` and `b`
/// `(out,)`: [`linear`] then [`add_bias`](super::add_bias), the same numbers and gradients.
/// Under a bf16 autocast on the CPU it is one op whose product adds the bias as it stores
/// its tiles, which saves a pass over the output (3-4% of a ViT-tiny bf16 step).
///
/// ```
/// use candle_core::{Device, Tensor};
/// let x = Tensor::new(&[[1f32, 2.0], [3.0, 4.0]], &Device::Cpu)?;
/// let w = Tensor::new(&[[1f32, 0.0], [1.0, 1.0], [0.0, 2.0]], &Device::Cpu)?;
/// let b = Tensor::new(&[0.5f32, 0.0, -1.0], &Device::Cpu)?;
/// let y = sslab::kernels::linear_bias(&x, &w, &b)?;
/// assert_eq!(y.to_vec2::<f32>()?, [[1.5, 3.0, 3.0], [3.5, 7.0, 7.0]]);
/// # Ok::<(), sslab::Error>(())
/// ```
pub fn linear_bias(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    let fused = x.rank() == 2
        && w.rank() == 2
        && b.rank() == 1
        && super::precision::cpu_bf16(x, w)
        && super::storage::on_cpu_f32(b)
        && !super::precision::bf16_activations(x.device());
    if fused {
        return Ok(x
            .contiguous()?
            .apply_op3(&w.contiguous()?, &b.contiguous()?, LinearBiasOp)?);
    }
    super::affine::add_bias(&linear(x, w)?, b)
}

/// [`linear_bias`]'s op on the CPU under a bf16 autocast (operands rounded to bf16, f32 sums
/// and result). Its backward is the products [`linear`]'s op runs and the bias gradient
/// [`add_bias`](super::add_bias) sums.
struct LinearBiasOp;

impl CustomOp3 for LinearBiasOp {
    fn name(&self) -> &'static str {
        "sslab-linear-bias"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let (&[rows, inp], &[out, inp_w], &[out_b]) = (l1.dims(), l2.dims(), l3.dims()) else {
            candle_core::bail!(
                "linear with bias: input {:?}, weight {:?}, bias {:?}",
                l1.dims(),
                l2.dims(),
                l3.dims()
            )
        };
        if inp != inp_w || out != out_b {
            candle_core::bail!(
                "linear with bias: input {:?}, weight {:?} and bias {:?} do not fit",
                l1.dims(),
                l2.dims(),
                l3.dims()
            );
        }
        let x = values(s1, l1, "linear input")?;
        let w = values(s2, l2, "linear weight")?;
        let b = slice(s3, l3, "linear bias")?;
        let y = written(rows * out, |y| {
            if rows * out > 0 {
                let (x, w) = ((x, (inp, 1)), (w, (1, inp)));
                bf16_values((rows, out, inp), (y, out), x, w, Some(b), true);
            }
        });
        Ok((CpuStorage::F32(y), Shape::from((rows, out))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // The product's gradients as `linear`'s op takes them (x · wᵀ, over a batch of one).
        let product = BatchedMatmulOp {
            ta: false,
            tb: true,
            bf16: true,
        };
        let (dx, dw) = product.grads(&x.unsqueeze(0)?, &w.unsqueeze(0)?, &g.unsqueeze(0)?)?;
        let db = bias_grad(g, b)?;
        Ok((Some(dx.squeeze(0)?), Some(dw.squeeze(0)?), Some(db)))
    }
}

/// `a · b` (candle's matmul: cuBLAS on CUDA, gemm on the CPU) in this thread's precision: under
/// bf16 on the CPU, sslab's AVX512-BF16 kernel for 2-D products and products over a batch.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use sslab::kernels::{autocast, autocast_matmul, Precision};
/// let a = Tensor::new(&[[1f32, 2.0], [3.0, 4.0]], &Device::Cpu)?;
/// let b = Tensor::new(&[[1.001f32, 0.0], [0.0, 1.0]], &Device::Cpu)?;
/// let _bf16 = autocast(Precision::Bf16);
/// // 1.001 is 1 in bf16 (8 bits of mantissa): the product is exact in the rounded operands.
/// let y = autocast_matmul(&a, &b)?;
/// assert_eq!(y.to_vec2::<f32>()?, [[1.0, 2.0], [3.0, 4.0]]);
/// # Ok::<(), sslab::Error>(())
/// ```
pub fn autocast_matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if super::precision::cpu_bf16(a, b) {
        match (a.rank(), b.rank()) {
            (2, 2) => {
                // A weight passed as `w.t()` is a transposed view: read it as one, as [`linear`]
                // does (the model's linear layers call that directly).
                let (b, tb) = if !b.is_contiguous() && b.t()?.is_contiguous() {
                    (b.t()?, true)
                } else {
                    (b.clone(), false)
                };
                let y = cpu_product(&a.unsqueeze(0)?, &b.unsqueeze(0)?, false, tb, true)?;
                return Ok(y.squeeze(0)?);
            }
            (3, 3) => return cpu_product(a, b, false, false, true),
            _ => {}
        }
    }
    super::precision::autocast_pair(a, b, false, |a, b| Ok(a.matmul(b)?))
}

/// [`batched_matmul`] in the operands' own dtype.
fn batched_in(a: &Tensor, b: &Tensor, ta: bool, tb: bool, fused: bool) -> Result<Tensor> {
    if fused && super::storage::on_cpu_f32(a) && super::storage::on_cpu_f32(b) {
        return cpu_product(a, b, ta, tb, false);
    }
    let a = if ta { a.transpose(1, 2)? } else { a.clone() };
    let b = if tb { b.transpose(1, 2)? } else { b.clone() };
    Ok(a.matmul(&b)?)
}
