//! The CPU's bf16 matrix product: f32 operands rounded to bf16 (round to nearest even, as
//! PyTorch's autocast casts them) while they are packed, products accumulated in f32 by
//! AVX512-BF16's `vdpbf16ps` (two bf16 products per f32 lane and instruction: twice the
//! arithmetic of an f32 FMA of the same width, on Intel's server cores and on Zen 4).
//!
//! The layout is the usual packed GEMM: for each block of `KC` depths, `B` is packed once into
//! panels of `NR` columns, each thread packs its own rows of `A` into panels of `MR` rows, and
//! a `MR × NR` micro-kernel keeps its 28 accumulators in registers. `vdpbf16ps` multiplies
//! pairs along the depth, so both panels hold depth pairs: `A`'s as one 32-bit word per row,
//! `B`'s as 32 words per pair (one per column). An odd depth is padded with a zero.

use half::bf16;
use rayon::prelude::*;
use std::ops::Range;

use super::storage::written;

/// Rows of the micro-kernel's tile.
const MR: usize = 14;
/// Columns of the micro-kernel's tile: two 16-lane registers.
const NR: usize = 32;
/// Depths per packed block (a multiple of 2): `B`'s panel of `KC × NR` bf16 (16 KB) stays
/// in L1 while the micro-kernel walks the rows.
const KC: usize = 256;
/// Rows per packed block of `A` at most (a multiple of `MR`; `MC × KC` bf16 = 56 KB in L2).
const MC: usize = 8 * MR;

/// Whether this CPU runs the bf16 kernels: AVX-512F with AVX512-BF16.
pub(crate) fn available() -> bool {
    super::simd::avx512_bf16()
}

/// An operand: its values (f32 by default, or [`bf16`] already rounded) and (row stride,
/// column stride).
pub(crate) type Operand<'a, T = f32> = (&'a [T], (usize, usize));

/// What an operand's values may be: f32, rounded to bf16 as they are packed, or bf16 that an
/// op stored for a product to read (`kernels::precision::cpu_bf16_operands`), packed as they
/// are. Both give the same packed words for the same values: rounding is to nearest even
/// either way.
pub(crate) trait Elem: Copy + Send + Sync + 'static {
    /// The bf16 bits of the value, rounded to nearest even.
    fn bf16_bits(self) -> u32;
    /// Depths `0..n` (`n` ≤ 32) from `src` as 16 words of bf16 pairs, zero past `n`.
    ///
    /// # Safety
    /// AVX-512F, AVX512-BW and AVX512-BF16 are present; `src..src + n` is readable.
    #[cfg(target_arch = "x86_64")]
    unsafe fn depth_words(src: *const Self, n: usize) -> std::arch::x86_64::__m512i;
    /// The lanes of `keep` from `lo` and from `hi` (zeros without it) as 32 bf16: `lo`'s
    /// 16, then `hi`'s.
    ///
    /// # Safety
    /// As [`Elem::depth_words`], for the kept lanes of both rows.
    #[cfg(target_arch = "x86_64")]
    unsafe fn lane_halves(
        lo: *const Self,
        hi: Option<*const Self>,
        keep: u16,
    ) -> std::arch::x86_64::__m512i;
}

impl Elem for f32 {
    #[inline(always)]
    fn bf16_bits(self) -> u32 {
        to_bf16(self)
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn depth_words(src: *const f32, n: usize) -> std::arch::x86_64::__m512i {
        use std::arch::x86_64::*;
        // SAFETY: the masks keep both loads inside src..src + n (the caller's contract).
        unsafe {
            let lo = _mm512_maskz_loadu_ps(simd::mask(n), src);
            let hi = _mm512_maskz_loadu_ps(simd::mask(n.saturating_sub(16)), src.wrapping_add(16));
            simd::to_bf16x32(lo, hi)
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn lane_halves(
        lo: *const f32,
        hi: Option<*const f32>,
        keep: u16,
    ) -> std::arch::x86_64::__m512i {
        use std::arch::x86_64::*;
        // SAFETY: masked loads of the kept lanes (the caller's contract).
        unsafe {
            let l = _mm512_maskz_loadu_ps(keep, lo);
            let h = hi.map_or(_mm512_setzero_ps(), |h| _mm512_maskz_loadu_ps(keep, h));
            simd::to_bf16x32(l, h)
        }
    }
}

impl Elem for bf16 {
    #[inline(always)]
    fn bf16_bits(self) -> u32 {
        self.to_bits() as u32
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn depth_words(src: *const bf16, n: usize) -> std::arch::x86_64::__m512i {
        use std::arch::x86_64::*;
        let keep = if n >= 32 { u32::MAX } else { (1u32 << n) - 1 };
        // SAFETY: the mask keeps the load inside src..src + n; a pair of depths is already
        // one 32-bit word in memory.
        unsafe { _mm512_maskz_loadu_epi16(keep, src as *const i16) }
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn lane_halves(
        lo: *const bf16,
        hi: Option<*const bf16>,
        keep: u16,
    ) -> std::arch::x86_64::__m512i {
        use std::arch::x86_64::*;
        // SAFETY: masked loads of the kept lanes (the caller's contract).
        unsafe {
            let l = _mm256_maskz_loadu_epi16(keep, lo as *const i16);
            let h = hi.map_or(_mm256_setzero_si256(), |h| {
                _mm256_maskz_loadu_epi16(keep, h as *const i16)
            });
            _mm512_inserti64x4::<1>(_mm512_castsi256_si512(l), h)
        }
    }
}

/// Whether `op`'s values hold an r×c matrix at its strides.
fn covers<T>((s, (rs, cs)): Operand<T>, r: usize, c: usize) -> bool {
    r == 0 || c == 0 || s.len() > (r - 1) * rs + (c - 1) * cs
}

/// Panics unless `dst` (rows `ld` apart) holds an m×n result and `rhs` a k×n operand.
fn check_dst_rhs<R>((m, n, k): (usize, usize, usize), (dst, ld): (&[f32], usize), rhs: Operand<R>) {
    assert!(
        m == 0 || n == 0 || dst.len() >= (m - 1) * ld + n,
        "bf16 matmul: destination too short"
    );
    assert!(covers(rhs, k, n), "bf16 matmul: right operand too short");
}

/// `dst (m×n, rows ld apart) = [dst +] bf16(lhs) (m×k) · bf16(rhs) (k×n)` with f32 sums,
/// threads splitting the rows when `parallel`. Falls back to plain f32 loops over the rounded
/// values on a CPU without AVX512-BF16 (the tests' reference; a run refuses such a CPU first).
pub(crate) fn matmul_bf16<L: Elem, R: Elem>(
    dims: (usize, usize, usize),
    dst: (&mut [f32], usize),
    accumulate: bool,
    lhs: Operand<L>,
    rhs: Operand<R>,
    parallel: bool,
) {
    matmul_bf16_bias(dims, dst, accumulate, lhs, rhs, None, parallel);
}

/// [`matmul_bf16`] with `bias` (n values) added to every row of the result as the last depth
/// block's tiles are stored: a linear layer's bias without a pass of its own over the output
/// (that pass was 3-4% of a ViT step). Each value is `(sums + bias)`, the same f32 additions
/// in the same order as adding the bias to the finished product.
pub(crate) fn matmul_bf16_bias<L: Elem, R: Elem>(
    (m, n, k): (usize, usize, usize),
    (dst, ld): (&mut [f32], usize),
    accumulate: bool,
    lhs: Operand<L>,
    rhs: Operand<R>,
    bias: Option<&[f32]>,
    parallel: bool,
) {
    assert!(covers(lhs, m, k), "bf16 matmul: left operand too short");
    assert!(
        bias.is_none_or(|b| b.len() >= n),
        "bf16 matmul: bias too short"
    );
    if m > 0 && n > 0 && (k == 0 || !available()) {
        check_dst_rhs((m, n, k), (dst, ld), rhs);
        if !accumulate {
            for r in 0..m {
                dst[r * ld..r * ld + n].fill(0.0);
            }
        }
        if k > 0 {
            reference(m, n, k, dst, ld, lhs, rhs);
        }
        if let Some(b) = bias {
            for r in 0..m {
                for (d, &bv) in dst[r * ld..r * ld + n].iter_mut().zip(b) {
                    *d += bv;
                }
            }
        }
        return;
    }
    product(
        (m, n, k),
        (dst, ld),
        accumulate,
        Lhs::Raw(lhs),
        rhs,
        bias,
        parallel,
    );
}

/// [`matmul_bf16`] with its left operand packed beforehand (one of a [`PackedLhs`] set), for
/// a left operand that several products share: a Winograd layer's transformed kernel meets
/// every group of images, and packing it again for each group cost as much as a fifth of the
/// layer's products at 4×4 and 8×8 pixels.
pub(crate) fn matmul_bf16_packed(
    n: usize,
    (dst, ld): (&mut [f32], usize),
    accumulate: bool,
    lhs: PackedRef,
    rhs: Operand,
    parallel: bool,
) {
    let (m, k) = (lhs.m, lhs.k);
    product::<f32, f32>(
        (m, n, k),
        (dst, ld),
        accumulate,
        Lhs::Packed(lhs),
        rhs,
        None,
        parallel,
    );
}

/// Where a product's left operand comes from.
#[derive(Clone, Copy)]
enum Lhs<'a, L> {
    /// Values, packed block by block as the product runs.
    Raw(Operand<'a, L>),
    /// Packed once beforehand.
    Packed(PackedRef<'a>),
}

/// `count` left operands of one shape (m×k), each packed whole as the product packs its row
/// blocks: for each block of `KC` depths, every row in panels of `MR`. Built panel by panel
/// from f32 rows that a caller computes on the fly ([`PackedLhs::by_panels`]), so that an
/// operand derived from something else (a transformed kernel) never exists in f32 whole:
/// at 512 channels a Winograd kernel transform was 16 MB of f32 written, read back and
/// packed per call, for 8 MB of packed words.
pub(crate) struct PackedLhs {
    words: Vec<u32>,
    m: usize,
    k: usize,
}

/// One operand of a [`PackedLhs`].
#[derive(Clone, Copy)]
pub(crate) struct PackedRef<'a> {
    words: &'a [u32],
    m: usize,
    k: usize,
}

impl PackedLhs {
    /// Packs `count` m×k operands, panels of `MR` rows in parallel: `fill(r0, rows, f)`
    /// writes rows `r0..r0 + rows` of every operand into `f`, row i of operand j at
    /// `f[(i·count + j)·k..][..k]`. `None` on a CPU without AVX512-BF16 or for an empty shape.
    pub(crate) fn by_panels(
        count: usize,
        (m, k): (usize, usize),
        fill: impl Fn(usize, usize, &mut [f32]) + Sync,
    ) -> Option<Self> {
        if m == 0 || k == 0 || count == 0 || !available() {
            return None;
        }
        let panels = m.div_ceil(MR);
        let per_operand = Self::operand_len(m, k);
        // Each panel task stores its own ranges, together every word (`block_start` and the
        // panel lengths add up to `operand_len`).
        let words = written(count * per_operand, |words: &mut [u32]| {
            let out = DstPtr(words.as_mut_ptr());
            (0..panels).into_par_iter().for_each(|p| {
                let (r0, rows) = (p * MR, MR.min(m - p * MR));
                let f32_rows = written(rows * count * k, |f: &mut [f32]| fill(r0, rows, f));
                for j in 0..count {
                    for i in 0..k.div_ceil(KC) {
                        let (k0, kc) = (i * KC, KC.min(k - i * KC));
                        let at = Self::block_range((m, k), i, (r0, rows));
                        let len = at.len();
                        // SAFETY: `at` (shifted to operand j) is panel p's range of depth
                        // block i: inside `words`, and no other task's. `pack` stores every
                        // word of it.
                        let dst = unsafe {
                            std::slice::from_raw_parts_mut(out.at(j * per_operand + at.start), len)
                        };
                        pack::<MR, _>(&f32_rows[j * k..], (count * k, 1), (0, rows), (k0, kc), dst);
                    }
                }
            });
        });
        Some(PackedLhs { words, m, k })
    }

    /// `lhs` (m×k) packed alone (the tests' way in).
    #[cfg(test)]
    fn new((m, k): (usize, usize), (s, (rs, cs)): Operand) -> Option<Self> {
        Self::by_panels(1, (m, k), |r0, rows, f| {
            for i in 0..rows {
                for d in 0..k {
                    f[i * k + d] = s[(r0 + i) * rs + d * cs];
                }
            }
        })
    }

    /// Words of one operand: each depth block's panels for all rows.
    fn operand_len(m: usize, k: usize) -> usize {
        Self::block_start(m, k.div_ceil(KC) - 1)
            + (k - (k.div_ceil(KC) - 1) * KC).div_ceil(2) * m.div_ceil(MR) * MR
    }

    /// Where depth block i starts in an operand (every earlier block is `KC` deep).
    fn block_start(m: usize, i: usize) -> usize {
        i * KC / 2 * m.div_ceil(MR) * MR
    }

    /// The words of rows `r0..r0 + rows` (`r0` a multiple of `MR`) in depth block `i` of an
    /// m×k operand: where `by_panels` stores them and `PackedRef::block` finds them.
    fn block_range((m, k): (usize, usize), i: usize, (r0, rows): (usize, usize)) -> Range<usize> {
        let pairs = KC.min(k - i * KC).div_ceil(2);
        let start = Self::block_start(m, i) + r0 / MR * pairs * MR;
        start..start + rows.div_ceil(MR) * pairs * MR
    }

    /// Operand j.
    pub(crate) fn operand(&self, j: usize) -> PackedRef<'_> {
        let len = Self::operand_len(self.m, self.k);
        PackedRef {
            words: &self.words[j * len..(j + 1) * len],
            m: self.m,
            k: self.k,
        }
    }
}

impl PackedRef<'_> {
    /// The panels of rows `r0..r0 + rows` (`r0` a multiple of `MR`) in depth block `i`: what
    /// `pack` gives for those rows and depths.
    fn block(&self, i: usize, rows: (usize, usize)) -> &[u32] {
        &self.words[PackedLhs::block_range((self.m, self.k), i, rows)]
    }
}

/// The packed product behind [`matmul_bf16`] and [`matmul_bf16_packed`] (AVX512-BF16 present,
/// or nothing to compute).
fn product<L: Elem, R: Elem>(
    (m, n, k): (usize, usize, usize),
    (dst, ld): (&mut [f32], usize),
    accumulate: bool,
    lhs: Lhs<L>,
    rhs: Operand<R>,
    bias: Option<&[f32]>,
    parallel: bool,
) {
    check_dst_rhs((m, n, k), (dst, ld), rhs);
    if m == 0 || n == 0 {
        return;
    }
    let workers = if parallel {
        rayon::current_num_threads().min(m.div_ceil(MR))
    } else {
        1
    };
    // Rows per thread block: all of them split evenly, in whole tiles, at most MC.
    let mc = m.div_ceil(workers).div_ceil(MR).clamp(1, MC / MR) * MR;
    // B packed whole first, block of KC depths after block (threads packing blocks side by
    // side), so that each row block then runs through every depth with its tile of dst in
    // cache, instead of dst streaming through once per depth block.
    let panel_cols = n.div_ceil(NR) * NR;
    let per_block = KC / 2 * panel_cols;
    let depth_blocks = k.div_ceil(KC);
    // Every depth block's panels are stored whole by `pack` (the last block's are shorter), so
    // the buffer needs no zero fill.
    let last = (k - (depth_blocks - 1) * KC).div_ceil(2) * panel_cols;
    let packed_b = written(
        per_block * (depth_blocks - 1) + last,
        |packed_b: &mut [u32]| {
            let pack_block = |(i, chunk): (usize, &mut [u32])| {
                let (k0, kc) = (i * KC, KC.min(k - i * KC));
                pack::<NR, _>(rhs.0, (rhs.1 .1, rhs.1 .0), (0, n), (k0, kc), chunk);
            };
            if parallel && depth_blocks > 1 {
                packed_b
                    .par_chunks_mut(per_block)
                    .enumerate()
                    .for_each(pack_block);
            } else {
                packed_b
                    .chunks_mut(per_block)
                    .enumerate()
                    .for_each(pack_block);
            }
        },
    );
    let packed_b = &packed_b[..];
    let dst_ptr = DstPtr(dst.as_mut_ptr());
    // The first depth block stores its sums (dst is not read, so it need not be zeroed:
    // [`written`] buffers), later ones add.
    let overwrite = |i: usize| !accumulate && i == 0;
    // The bias goes in with the last depth block's sums.
    let bias_at = |i: usize| bias.filter(|_| i + 1 == depth_blocks);
    let run = |block: usize| {
        let r0 = block * mc;
        let rows = mc.min(m - r0);
        let panel_rows = rows.div_ceil(MR) * MR;
        match lhs {
            // The first depth block (the longest) stores the whole buffer; later ones its
            // front.
            Lhs::Raw(lhs) => {
                let _: Vec<u32> = written(KC.min(k).div_ceil(2) * panel_rows, |packed_a| {
                    for (i, b) in packed_b.chunks(per_block).enumerate() {
                        let (k0, kc) = (i * KC, KC.min(k - i * KC));
                        let a = &mut packed_a[..kc.div_ceil(2) * panel_rows];
                        pack::<MR, _>(lhs.0, lhs.1, (r0, rows), (k0, kc), a);
                        // SAFETY: each block writes only its own rows r0..r0 + rows of dst,
                        // whose extent the assert above checked.
                        unsafe {
                            block_product(
                                (a, b),
                                (rows, n, kc),
                                (dst_ptr.at(r0 * ld), ld),
                                overwrite(i),
                                bias_at(i),
                            )
                        };
                    }
                });
            }
            Lhs::Packed(packed) => {
                for (i, b) in packed_b.chunks(per_block).enumerate() {
                    let kc = KC.min(k - i * KC);
                    let a = packed.block(i, (r0, rows));
                    // SAFETY: as above.
                    unsafe {
                        let dst = (dst_ptr.at(r0 * ld), ld);
                        block_product((a, b), (rows, n, kc), dst, overwrite(i), bias_at(i))
                    };
                }
            }
        }
    };
    let blocks = m.div_ceil(mc);
    if workers > 1 && blocks > 1 {
        (0..blocks).into_par_iter().for_each(run);
    } else {
        (0..blocks).for_each(run);
    }
}

/// An output shared by parallel tasks that each write their own part of it: the row blocks of
/// a product's destination, the panels of a [`PackedLhs`].
#[derive(Clone, Copy)]
struct DstPtr<T>(*mut T);
// SAFETY: the tasks write disjoint ranges (see `product` and `PackedLhs::by_panels`).
unsafe impl<T> Send for DstPtr<T> {}
unsafe impl<T> Sync for DstPtr<T> {}
impl<T> DstPtr<T> {
    fn at(self, offset: usize) -> *mut T {
        // SAFETY: callers stay inside the output they were given.
        unsafe { self.0.add(offset) }
    }
}

/// The bf16 bits of `x`, rounded to nearest even (NaN stays NaN).
#[inline(always)]
fn to_bf16(x: f32) -> u32 {
    bf16::from_f32(x).to_bits() as u32
}

/// `dst = bf16(src)`, rounded to nearest even as [`pack`] rounds f32 operands: an op that
/// stores a product's operand in bf16 gives it the words packing its f32 values would.
pub(crate) fn round_into(src: &[f32], dst: &mut [bf16]) {
    assert_eq!(src.len(), dst.len(), "bf16 rounding: lengths differ");
    #[cfg(target_arch = "x86_64")]
    if available() {
        // SAFETY: AVX512-BF16 is present; the lengths are equal.
        unsafe { simd::round_into(src, dst) };
        return;
    }
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = bf16::from_bits(to_bf16(s) as u16);
    }
}

/// Packs lanes `l0..l0 + lanes` (rows of `A`, columns of `B`), depths `k0..k0 + kc` of an
/// operand given by (lane stride, depth stride) into panels of `W` lanes: for each depth pair
/// `p`, `W` words `lo = X[l, 2p], hi = X[l, 2p + 1]`. Lanes past the end and an odd last depth
/// are 0. Vectorised where the depths or the lanes lie next to each other in memory (every
/// layout sslab's products take), element by element otherwise.
fn pack<const W: usize, T: Elem>(
    x: &[T],
    (ls, ds): (usize, usize),
    (l0, lanes): (usize, usize),
    (k0, kc): (usize, usize),
    out: &mut [u32],
) {
    let pairs = kc.div_ceil(2);
    let panels = lanes.div_ceil(W);
    let out = &mut out[..panels * pairs * W];
    #[cfg(target_arch = "x86_64")]
    if available() && (ds == 1 || ls == 1) {
        // SAFETY: AVX512-BF16 is present, and every read stays inside the extent that
        // `matmul_bf16` checked (masked loads for the partial vectors).
        unsafe {
            if ds == 1 {
                simd::pack_depth_rows::<W, _>(x, ls, (l0, lanes), (k0, kc), out);
            } else {
                simd::pack_lane_rows::<W, _>(x, ds, (l0, lanes), (k0, kc), out);
            }
        }
        return;
    }
    for (panel, chunk) in out.chunks_mut(pairs * W).enumerate() {
        for p in 0..pairs {
            for (w, word) in chunk[p * W..(p + 1) * W].iter_mut().enumerate() {
                let l = panel * W + w;
                *word = if l < lanes {
                    let at = |d: usize| x[(l0 + l) * ls + (k0 + d) * ds];
                    let hi = if 2 * p + 1 < kc {
                        at(2 * p + 1).bf16_bits()
                    } else {
                        0
                    };
                    at(2 * p).bf16_bits() | hi << 16
                } else {
                    0
                };
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod simd {
    use std::arch::x86_64::*;

    /// 32 floats as 32 bf16 (rounded to nearest even) in their order: `lo`'s 16, then `hi`'s.
    #[inline(always)]
    pub(super) unsafe fn to_bf16x32(lo: __m512, hi: __m512) -> __m512i {
        // SAFETY: the caller enabled AVX512-BF16; the two types are the same 512 bits.
        unsafe { std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo)) }
    }

    /// [`super::round_into`]'s vector loop, 16 values per instruction, the tail masked.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    pub(super) unsafe fn round_into(src: &[f32], dst: &mut [super::bf16]) {
        for (s, d) in src.chunks(16).zip(dst.chunks_mut(16)) {
            let keep = mask(s.len());
            // SAFETY: the mask keeps the load and the store inside this chunk of both.
            unsafe {
                let v = _mm512_maskz_loadu_ps(keep, s.as_ptr());
                let r: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(v));
                _mm256_mask_storeu_epi16(d.as_mut_ptr() as *mut i16, keep, r);
            }
        }
    }

    /// The first `n` (at most 16) lanes.
    #[inline(always)]
    pub(super) fn mask(n: usize) -> u16 {
        if n >= 16 {
            u16::MAX
        } else {
            (1u16 << n) - 1
        }
    }

    /// `r[j][i] = r[i][j]` for a 16 × 16 block of 32-bit words: 32-bit and 64-bit interleaves
    /// within 128-bit lanes, then two rounds of 128-bit lane shuffles.
    #[inline(always)]
    unsafe fn transpose16(r: &mut [__m512i; 16]) {
        // SAFETY (whole body): register operations only; the caller enabled AVX-512F.
        unsafe {
            let mut t = [_mm512_setzero_si512(); 16];
            for i in 0..8 {
                t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
                t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
            }
            // u[4g + c], 128-bit lane q: column 4q + c of rows 4g..4g + 4.
            let mut u = [_mm512_setzero_si512(); 16];
            for g in 0..4 {
                let (a, b) = (t[4 * g], t[4 * g + 2]);
                let (c, d) = (t[4 * g + 1], t[4 * g + 3]);
                u[4 * g] = _mm512_unpacklo_epi64(a, b);
                u[4 * g + 1] = _mm512_unpackhi_epi64(a, b);
                u[4 * g + 2] = _mm512_unpacklo_epi64(c, d);
                u[4 * g + 3] = _mm512_unpackhi_epi64(c, d);
            }
            for c in 0..4 {
                let v0 = _mm512_shuffle_i32x4::<0x88>(u[c], u[4 + c]);
                let v1 = _mm512_shuffle_i32x4::<0xDD>(u[c], u[4 + c]);
                let v2 = _mm512_shuffle_i32x4::<0x88>(u[8 + c], u[12 + c]);
                let v3 = _mm512_shuffle_i32x4::<0xDD>(u[8 + c], u[12 + c]);
                r[c] = _mm512_shuffle_i32x4::<0x88>(v0, v2);
                r[4 + c] = _mm512_shuffle_i32x4::<0x88>(v1, v3);
                r[8 + c] = _mm512_shuffle_i32x4::<0xDD>(v0, v2);
                r[12 + c] = _mm512_shuffle_i32x4::<0xDD>(v1, v3);
            }
        }
    }

    /// Panels when the depths of one lane are contiguous (`A` by rows, `B` transposed): 32
    /// depths of each of 16 lanes become 16 words per lane, and the 16 × 16 block is
    /// transposed in registers so that each depth pair's words are stored as one vector (a
    /// scalar store per word was most of this packing's time).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    pub(super) unsafe fn pack_depth_rows<const W: usize, T: super::Elem>(
        x: &[T],
        ls: usize,
        (l0, lanes): (usize, usize),
        (k0, kc): (usize, usize),
        out: &mut [u32],
    ) {
        let pairs = kc.div_ceil(2);
        // Once for all the raw loads and stores below: the last lane's depths lie inside `x`,
        // and every panel's words inside `out`.
        assert!(
            lanes == 0 || (l0 + lanes - 1) * ls + k0 + kc <= x.len(),
            "bf16 pack: operand too short"
        );
        assert!(
            lanes.div_ceil(W) * pairs * W <= out.len(),
            "bf16 pack: panels out of range"
        );
        for panel in 0..lanes.div_ceil(W) {
            let base = panel * pairs * W;
            for g0 in (0..W).step_by(16) {
                let width = (W - g0).min(16);
                for p0 in (0..pairs).step_by(16) {
                    let d = 2 * p0;
                    let n = (kc - d).min(32);
                    // Lanes past the operand's end (and past the panel's width) stay zero.
                    let mut r = [_mm512_setzero_si512(); 16];
                    for (i, ri) in r.iter_mut().enumerate().take(width) {
                        let l = panel * W + g0 + i;
                        if l >= lanes {
                            break;
                        }
                        // SAFETY: the masks keep the loads inside lane l's row of depths
                        // k0..k0 + kc, which the first assert keeps inside `x`.
                        unsafe {
                            let src = x.as_ptr().add((l0 + l) * ls + k0 + d);
                            _mm_prefetch::<_MM_HINT_T0>(src.wrapping_add(64) as *const i8);
                            _mm_prefetch::<_MM_HINT_T0>(src.wrapping_add(80) as *const i8);
                            *ri = T::depth_words(src, n);
                        }
                    }
                    // SAFETY: AVX-512F is enabled here.
                    unsafe { transpose16(&mut r) };
                    for (j, rj) in r.iter().enumerate().take((pairs - p0).min(16)) {
                        let at = base + (p0 + j) * W + g0;
                        // SAFETY: the `width` masked words end within this panel, which the
                        // second assert keeps inside `out`.
                        unsafe {
                            _mm512_mask_storeu_epi32(
                                out.as_mut_ptr().add(at) as *mut _,
                                mask(width),
                                *rj,
                            )
                        };
                    }
                }
            }
        }
    }

    /// Panels when the lanes of one depth are contiguous (`B` by rows, `A` transposed): the
    /// rows of depths 2p and 2p + 1 are rounded 16 lanes at a time and interleaved into words.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    pub(super) unsafe fn pack_lane_rows<const W: usize, T: super::Elem>(
        x: &[T],
        ds: usize,
        (l0, lanes): (usize, usize),
        (k0, kc): (usize, usize),
        out: &mut [u32],
    ) {
        // Word i takes bf16 i (depth 2p) and bf16 16 + i (depth 2p + 1).
        const ZIP: [u16; 32] = {
            let mut z = [0u16; 32];
            let mut i = 0;
            while i < 16 {
                z[2 * i] = i as u16;
                z[2 * i + 1] = 16 + i as u16;
                i += 1;
            }
            z
        };
        // SAFETY: ZIP holds 32 u16.
        let zip = unsafe { _mm512_loadu_si512(ZIP.as_ptr() as *const _) };
        let pairs = kc.div_ceil(2);
        for panel in 0..lanes.div_ceil(W) {
            for p in 0..pairs {
                let (d0, odd) = (k0 + 2 * p, 2 * p + 1 < kc);
                for c in (0..W).step_by(16) {
                    let first = panel * W + c;
                    let n = lanes.saturating_sub(first).min(16);
                    let keep = mask(n);
                    // SAFETY: masked loads read lanes first..first + n of depth rows d0 and
                    // d0 + 1 (when it exists); the store writes this chunk's words of the panel.
                    unsafe {
                        let src = x.as_ptr().add(d0 * ds + l0 + first.min(lanes));
                        let halves = T::lane_halves(src, odd.then(|| src.add(ds)), keep);
                        let words = _mm512_permutexvar_epi16(zip, halves);
                        let dst = out.as_mut_ptr().add(panel * pairs * W + p * W + c);
                        _mm512_mask_storeu_epi32(dst as *mut _, mask(W - c), words);
                    }
                }
            }
        }
    }
}

/// `dst += A · B` (`dst = A · B` when `overwrite`) for one packed row block against the packed
/// depth block, tile by tile.
///
/// # Safety
/// `dst` points at `rows` rows of at least `n` floats, `ld` apart; AVX512-BF16 is present.
unsafe fn block_product(
    (a, b): (&[u32], &[u32]),
    (rows, n, kc): (usize, usize, usize),
    (dst, ld): (*mut f32, usize),
    overwrite: bool,
    bias: Option<&[f32]>,
) {
    let pairs = kc.div_ceil(2);
    for (jp, b_panel) in b.chunks(pairs * NR).take(n.div_ceil(NR)).enumerate() {
        let j0 = jp * NR;
        let cols = NR.min(n - j0);
        for (ip, a_panel) in a.chunks(pairs * MR).take(rows.div_ceil(MR)).enumerate() {
            let i0 = ip * MR;
            let valid = MR.min(rows - i0);
            // SAFETY: the tile lies inside dst (rows i0..i0 + valid, columns j0..j0 + cols).
            unsafe {
                tile(
                    (a_panel, b_panel),
                    pairs,
                    (dst.add(i0 * ld + j0), ld, overwrite),
                    bias.map(|b| &b[j0..j0 + cols]),
                    (valid, cols),
                )
            };
        }
    }
}

/// One MR × NR tile: sums over `pairs` depth pairs, added into `dst` (a `rows × cols` corner),
/// or stored there when `overwrite` (`dst` is then not read); `bias` (`cols` values), when
/// given, is added to each row after that.
///
/// # Safety
/// As [`block_product`], for the tile's corner of `dst`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn tile(
    (a, b): (&[u32], &[u32]),
    pairs: usize,
    (dst, ld, overwrite): (*mut f32, usize, bool),
    bias: Option<&[f32]>,
    (rows, cols): (usize, usize),
) {
    use std::arch::x86_64::*;
    debug_assert!(a.len() >= pairs * MR && b.len() >= pairs * NR);
    debug_assert!(bias.is_none_or(|b| b.len() >= cols));
    let mut acc = [[_mm512_setzero_ps(); 2]; MR];
    // The tile's rows of dst are read or written once the sums are done, thousands of cycles
    // from now: fetched early, their misses overlap the products instead of stalling the
    // stores (4-7% on a ViT block's forward products, `sslab bench gemm`).
    for i in 0..rows {
        // SAFETY: prefetches do not fault; the addresses are this tile's rows of dst.
        unsafe {
            let d = dst.add(i * ld) as *const i8;
            _mm_prefetch::<_MM_HINT_T0>(d);
            _mm_prefetch::<_MM_HINT_T0>(d.wrapping_add(64));
        }
    }
    let (mut pa, mut pb) = (a.as_ptr(), b.as_ptr());
    for _ in 0..pairs {
        // SAFETY: both panels hold `pairs` groups of MR (A) and NR (B) words.
        unsafe {
            let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(pb as *const _));
            let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(pb.add(16) as *const _));
            for (i, acc_i) in acc.iter_mut().enumerate() {
                let ai: __m512bh = std::mem::transmute(_mm512_set1_epi32(*pa.add(i) as i32));
                acc_i[0] = _mm512_dpbf16_ps(acc_i[0], ai, b0);
                acc_i[1] = _mm512_dpbf16_ps(acc_i[1], ai, b1);
            }
            pa = pa.add(MR);
            pb = pb.add(NR);
        }
    }
    let masks = [simd::mask(cols), simd::mask(cols.saturating_sub(16))];
    // SAFETY: the masks keep the loads within the `cols` values of `bias`.
    let bias = bias.map(|b| unsafe {
        [
            _mm512_maskz_loadu_ps(masks[0], b.as_ptr()),
            _mm512_maskz_loadu_ps(masks[1], b.as_ptr().wrapping_add(16)),
        ]
    });
    // The tile's value of half h of row i: the sums, plus what dst held, plus the bias.
    let value = |acc: __m512, d: *const f32, h: usize, whole: bool| {
        // SAFETY: d is inside this row of the tile (masked where the row is partial).
        let mut v = unsafe {
            match (overwrite, whole) {
                (true, _) => acc,
                (false, true) => _mm512_add_ps(_mm512_loadu_ps(d), acc),
                (false, false) => _mm512_add_ps(_mm512_maskz_loadu_ps(masks[h], d), acc),
            }
        };
        if let Some(bias) = bias {
            v = _mm512_add_ps(v, bias[h]);
        }
        v
    };
    if cols == NR {
        for (i, acc_i) in acc.iter().enumerate().take(rows) {
            // SAFETY: a whole row of NR floats lies at dst + i·ld.
            unsafe {
                let d = dst.add(i * ld);
                _mm512_storeu_ps(d, value(acc_i[0], d, 0, true));
                _mm512_storeu_ps(d.add(16), value(acc_i[1], d.add(16), 1, true));
            }
        }
    } else {
        for (i, acc_i) in acc.iter().enumerate().take(rows) {
            for (h, &mask) in masks.iter().enumerate() {
                // SAFETY: the mask keeps the lanes below `cols`, inside the row.
                unsafe {
                    let d = dst.add(i * ld + 16 * h);
                    _mm512_mask_storeu_ps(d, mask, value(acc_i[h], d, h, false));
                }
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn tile(
    _: (&[u32], &[u32]),
    _: usize,
    _: (*mut f32, usize, bool),
    _: Option<&[f32]>,
    _: (usize, usize),
) {
    unreachable!("the bf16 kernels run only where `available()`")
}

/// The same numbers in plain loops: operands rounded to bf16, f32 sums in depth order.
fn reference<L: Elem, R: Elem>(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    ld: usize,
    (a, (ars, acs)): Operand<L>,
    (b, (brs, bcs)): Operand<R>,
) {
    let round = |x: u32| bf16::from_bits(x as u16).to_f32();
    for i in 0..m {
        for j in 0..n {
            let mut s = 0f32;
            for d in 0..k {
                let (x, y) = (a[i * ars + d * acs], b[d * brs + j * bcs]);
                s += round(x.bf16_bits()) * round(y.bf16_bits());
            }
            dst[i * ld + j] += s;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(len: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s as f32 / u32::MAX as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// f64 sums of the bf16-rounded operands: what any order of f32 sums approximates.
    fn exact(m: usize, n: usize, k: usize, a: Operand, b: Operand) -> Vec<f64> {
        let r = |x: f32| bf16::from_f32(x).to_f32() as f64;
        let mut out = vec![0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = (0..k)
                    .map(|d| r(a.0[i * a.1 .0 + d * a.1 .1]) * r(b.0[d * b.1 .0 + j * b.1 .1]))
                    .sum();
            }
        }
        out
    }

    /// Whether the kernel's tests can run here (a CPU with AVX512-BF16; they say so if not),
    /// with new buffers poisoned: every packed word must be stored before it is read, and
    /// poisoned scratch shows a miss.
    fn kernel_runs() -> bool {
        if !available() {
            eprintln!("skipped: this CPU has no AVX512-BF16");
            return false;
        }
        crate::kernels::storage::poison_outputs(true);
        true
    }

    #[test]
    fn products_match_the_rounded_operands_in_every_shape_and_layout() {
        if !kernel_runs() {
            return;
        }
        // Edges in every dimension: one tile, partial tiles, odd depths, several depth blocks,
        // several row blocks and threads, transposed operands.
        for &(m, n, k) in &[
            (1, 1, 1),
            (14, 32, 2),
            (15, 33, 3),
            (29, 70, 257),
            (130, 45, 600),
            (300, 31, 17),
        ] {
            for &(ta, tb) in &[(false, false), (true, false), (false, true), (true, true)] {
                let a = values(m * k, (m * 7 + k) as u32);
                let b = values(k * n, (n * 5 + k) as u32);
                let sa = if ta { (1, m) } else { (k, 1) };
                let sb = if tb { (1, k) } else { (n, 1) };
                let want = exact(m, n, k, (&a, sa), (&b, sb));
                for &(accumulate, parallel) in &[(false, false), (true, true)] {
                    let start = values(m * n, 99);
                    let mut got = start.clone();
                    matmul_bf16(
                        (m, n, k),
                        (&mut got, n),
                        accumulate,
                        (&a, sa),
                        (&b, sb),
                        parallel,
                    );
                    for (idx, (&g, &w)) in got.iter().zip(&want).enumerate() {
                        let w = w + if accumulate { start[idx] as f64 } else { 0.0 };
                        // f32 sums of k products of magnitude ≤ 1.
                        let tol = 1e-6 * (k as f64).sqrt() * 4.0 + 1e-6;
                        assert!(
                            (g as f64 - w).abs() <= tol,
                            "{m}×{n}×{k} ta {ta} tb {tb} acc {accumulate}: [{idx}] {g} vs {w}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn bf16_operands_give_the_bits_of_their_f32_values() {
        if !kernel_runs() {
            return;
        }
        // An operand stored as bf16 packs to the words its f32 values round to, in both
        // layouts, at partial tiles, odd depths and several depth blocks.
        for &(m, n, k) in &[(1, 1, 1), (15, 33, 3), (29, 70, 257), (130, 45, 600)] {
            for &(ta, tb) in &[(false, false), (true, false), (false, true), (true, true)] {
                let a = values(m * k, (m * 3 + k) as u32);
                let b = values(k * n, (n * 13 + k) as u32);
                let round = |v: &[f32]| v.iter().map(|&x| bf16::from_f32(x)).collect::<Vec<_>>();
                let (ah, bh) = (round(&a), round(&b));
                let sa = if ta { (1, m) } else { (k, 1) };
                let sb = if tb { (1, k) } else { (n, 1) };
                let run = |f: &dyn Fn(&mut [f32])| {
                    let mut c = values(m * n, 7);
                    f(&mut c);
                    c.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
                };
                for parallel in [false, true] {
                    let dims = (m, n, k);
                    let want =
                        run(&|c| matmul_bf16(dims, (c, n), true, (&a, sa), (&b, sb), parallel));
                    let lhs =
                        run(&|c| matmul_bf16(dims, (c, n), true, (&ah, sa), (&b, sb), parallel));
                    let rhs =
                        run(&|c| matmul_bf16(dims, (c, n), true, (&a, sa), (&bh, sb), parallel));
                    let both =
                        run(&|c| matmul_bf16(dims, (c, n), true, (&ah, sa), (&bh, sb), parallel));
                    for (what, got) in [("lhs", lhs), ("rhs", rhs), ("both", both)] {
                        assert_eq!(got, want, "{m}×{n}×{k} ta {ta} tb {tb}: bf16 {what}");
                    }
                }
            }
        }
    }

    #[test]
    fn packed_left_operands_give_the_same_bits() {
        if !kernel_runs() {
            return;
        }
        // Partial tiles, several depth and row blocks (several panels per task's rows), both
        // layouts of the left operand, and a set of three operands packed together.
        for &(m, n, k) in &[(1, 1, 1), (15, 33, 3), (130, 45, 600), (300, 64, 257)] {
            for ta in [false, true] {
                let sa = if ta { (1, m) } else { (k, 1) };
                let ops: Vec<Vec<f32>> = (0..3)
                    .map(|j| values(m * k, (m + 3 * k + 17 * j) as u32))
                    .collect();
                let single = PackedLhs::new((m, k), (&ops[0], sa)).expect("AVX512-BF16 is present");
                let set = PackedLhs::by_panels(3, (m, k), |r0, rows, f| {
                    for i in 0..rows {
                        for (j, op) in ops.iter().enumerate() {
                            for d in 0..k {
                                f[(i * 3 + j) * k + d] = op[(r0 + i) * sa.0 + d * sa.1];
                            }
                        }
                    }
                })
                .expect("AVX512-BF16 is present");
                let b = values(k * n, (n + 11 * k) as u32);
                let cases = [
                    (0, single.operand(0)),
                    (0, set.operand(0)),
                    (1, set.operand(1)),
                    (2, set.operand(2)),
                ];
                for (j, packed) in cases {
                    for (accumulate, parallel) in [(false, false), (true, true)] {
                        let start = values(m * n, 5);
                        let (mut want, mut got) = (start.clone(), start);
                        let (a, b) = ((&ops[j][..], sa), (&b[..], (n, 1)));
                        matmul_bf16((m, n, k), (&mut want, n), accumulate, a, b, parallel);
                        matmul_bf16_packed(n, (&mut got, n), accumulate, packed, b, parallel);
                        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                        assert_eq!(
                            bits(&got),
                            bits(&want),
                            "{m}×{n}×{k} ta {ta} operand {j} acc {accumulate}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn rounding_is_to_nearest_even_as_pytorch_casts() {
        // 1 + 2⁻⁸ lies halfway between bf16's 1 and 1 + 2⁻⁷: ties go to the even one (1).
        assert_eq!(to_bf16(1.0 + 1.0 / 256.0), to_bf16(1.0));
        // Just above the half rounds up.
        assert_eq!(
            to_bf16(1.0 + 1.0 / 256.0 + 1.0 / 65536.0),
            to_bf16(1.0 + 1.0 / 128.0)
        );
        assert!(bf16::from_bits(to_bf16(f32::NAN) as u16).is_nan());
    }
}
