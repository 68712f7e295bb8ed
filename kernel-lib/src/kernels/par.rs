//! Thread helpers shared by the CPU kernels: element-wise maps in parallel chunks, and sums over
//! groups of images whose rounding does not depend on scheduling. Their element loops run at
//! the CPU's vector width ([`widest`]).

use super::simd::widest;
use super::storage::written;
use rayon::prelude::*;

/// Elements per parallel work unit of the element-wise kernels.
pub(crate) const CHUNK: usize = 1 << 14;

/// `Σ` over the groups of `group` images out of `n` of what `f(state, acc, images, first)`
/// adds into `acc` (`len` floats). With `first`, `acc` holds no values yet (it is not zeroed:
/// a zero fill of every partial was a serial memset of up to 10 MB per weight gradient) and
/// `f` must store all `len` of them rather than add.
/// The groups are split into one contiguous range per thread, each summed in order into its
/// own partial, and the partials summed in order: the result is the same in every run with the
/// same thread count (rayon's `fold` splits where work-stealing happens to, which moved
/// training results by float rounding between runs on a busy machine). `state` is one
/// `init()` per range, for buffers reused across its groups.
pub(crate) fn sum_over_groups<S>(
    (n, group): (usize, usize),
    len: usize,
    init: impl Fn() -> S + Sync,
    f: impl Fn(&mut S, &mut [f32], std::ops::Range<usize>, bool) + Sync,
) -> Vec<f32> {
    let groups = n.div_ceil(group.max(1));
    if groups == 0 {
        return vec![0f32; len];
    }
    let per = groups.div_ceil(rayon::current_num_threads().clamp(1, groups));
    // Every range holds at least one group, so that each partial is written.
    let parts = groups.div_ceil(per);
    let partials: Vec<Vec<f32>> = (0..parts)
        .into_par_iter()
        .map(|p| {
            let mut state = init();
            written(len, |acc| {
                for (i, gi) in (p * per..((p + 1) * per).min(groups)).enumerate() {
                    let images = gi * group..((gi + 1) * group).min(n);
                    f(&mut state, acc, images, i == 0);
                }
            })
        })
        .collect();
    sum_partials(partials, len)
}

/// The element-wise sum of per-thread partial results of length `len`, added in the order
/// given (so the result does not depend on scheduling), in parallel chunks.
pub(crate) fn sum_partials(parts: Vec<Vec<f32>>, len: usize) -> Vec<f32> {
    let mut parts = parts.into_iter();
    // The first partial is the start of the sum: `0 + p` is `p` in floats.
    let Some(mut out) = parts.next() else {
        return vec![0f32; len];
    };
    let rest: Vec<Vec<f32>> = parts.collect();
    out.par_chunks_mut(CHUNK).enumerate().for_each(|(i, o)| {
        widest(o, |o| {
            for p in &rest {
                o.iter_mut().zip(&p[i * CHUNK..]).for_each(|(a, v)| *a += v);
            }
        })
    });
    out
}

/// Images per group when `n` images of `per_image` columns each are cut into groups of about
/// `target` columns for one GEMM each, with at least one group per thread (and a multiple of
/// the thread count, so the threads get equal shares).
pub(crate) fn images_per_group(n: usize, per_image: usize, target: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    let groups = n
        .min(
            (n * per_image)
                .div_ceil(target)
                .max(threads)
                .next_multiple_of(threads),
        )
        .max(1);
    n.div_ceil(groups)
}

/// `f` applied to every element, in parallel chunks.
pub(crate) fn par_map(x: &[f32], f: impl Fn(f32) -> f32 + Sync) -> Vec<f32> {
    written(x.len(), |y| {
        y.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK))
            .for_each(|(o, i)| {
                widest((o, i), |(o, i)| {
                    o.iter_mut().zip(i).for_each(|(o, &v)| *o = f(v))
                })
            });
    })
}

/// `f(a, b)` of every pair of elements of two equally long slices, in parallel chunks.
pub(crate) fn par_zip_map(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32 + Sync) -> Vec<f32> {
    // Equal lengths: otherwise `written` would hand out values nobody wrote.
    assert_eq!(
        a.len(),
        b.len(),
        "par_zip_map: operands of different lengths"
    );
    written(a.len(), |y| {
        y.par_chunks_mut(CHUNK)
            .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
            .for_each(|(o, (a, b))| {
                widest((o, a, b), |(o, a, b)| {
                    for ((o, &a), &b) in o.iter_mut().zip(a).zip(b) {
                        *o = f(a, b);
                    }
                })
            });
    })
}
