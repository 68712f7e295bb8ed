//! Instruction sets chosen at run time: the AVX2 + FMA test and a macro that compiles a plain
//! element loop a second time with those features enabled.

/// `$name` runs `$body` with AVX2 + FMA code generation where the CPU has them (the element
/// loops are written to vectorise), else as compiled.
macro_rules! wide {
    ($vis:vis $name:ident = $body:ident($($arg:ident: $ty:ty),*)) => {
        $vis fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            if $crate::kernels::simd::avx512() {
                #[target_feature(enable = "avx512f,avx2,fma")]
                unsafe fn wide512($($arg: $ty),*) {
                    $body($($arg),*)
                }
                // SAFETY: AVX-512F, AVX2 and FMA were detected on this CPU.
                return unsafe { wide512($($arg),*) };
            }
            #[cfg(target_arch = "x86_64")]
            if $crate::kernels::simd::avx2() {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn wide($($arg: $ty),*) {
                    $body($($arg),*)
                }
                // SAFETY: AVX2 and FMA were detected on this CPU.
                return unsafe { wide($($arg),*) };
            }
            $body($($arg),*)
        }
    };
}

/// `f(args)` compiled, as [`wide!`] does for a named loop, for the widest vectors this CPU has
/// (AVX-512, else AVX2 + FMA, else the baseline): for element loops that arrive as closures
/// (the optimizer's passes), which `wide!` cannot name. The closure is inlined into the
/// function that enables the features, so its loops vectorise at that width. The results are
/// the same bits at every width: Rust never fuses a multiply and an add into an FMA, so the
/// wider code performs the same IEEE operations.
#[inline(always)]
pub(crate) fn widest<A, R>(args: A, f: impl FnOnce(A) -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,avx2,fma")]
        unsafe fn wide512<A, R>(args: A, f: impl FnOnce(A) -> R) -> R {
            f(args)
        }
        #[target_feature(enable = "avx2,fma")]
        unsafe fn wide<A, R>(args: A, f: impl FnOnce(A) -> R) -> R {
            f(args)
        }
        if avx512() {
            // SAFETY: AVX-512F, AVX2 and FMA were detected on this CPU.
            return unsafe { wide512(args, f) };
        }
        if avx2() {
            // SAFETY: AVX2 and FMA were detected on this CPU.
            return unsafe { wide(args, f) };
        }
    }
    f(args)
}

/// Asks the cache for the line holding `p` ahead of its use. It never faults, so `p` may lie
/// past the end of its buffer. The hardware prefetchers stop at 4 KB page boundaries, which is
/// exactly one channel's plane of a 32×32 feature map: a kernel that reads plane after plane,
/// with work in between, stalls on every page unless it asks for the next one itself.
#[inline(always)]
pub(crate) fn prefetch<T>(p: *const T) {
    // SAFETY: SSE is part of x86-64; a prefetch reads nothing that could fault.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p as *const i8)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Whether this CPU has AVX2 and FMA (the hand-vectorised kernels of `wide!`, the narrow products and Winograd).
pub(crate) fn avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether the element kernels of `wide!` take 512-bit vectors: AVX-512F besides AVX2 and FMA.
/// On Intel's server cores (two 512-bit FMA units) that doubles their arithmetic per
/// instruction; Zen 4 runs each 512-bit instruction as two 256-bit halves, as many per cycle as
/// AVX2's, with half the instructions to decode.
pub(crate) fn avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        avx2() && is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether this CPU runs the bf16 GEMM (`matmul_bf16.rs`): AVX-512F with AVX512-BF16 (Intel
/// since Cooper Lake, AMD since Zen 4).
pub(crate) fn avx512_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        avx512() && is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Lanes of the element kernels' reductions: one AVX-512 register, two AVX2 ones. A single
/// float accumulator is a serial chain the compiler must keep in order (float addition does
/// not reassociate), which kept whole loops scalar; sixteen independent partial results
/// vectorise.
pub(crate) const LANES: usize = 16;

/// `Σ f(aᵢ, bᵢ)` over equally long slices, in [`LANES`] partial sums.
#[inline(always)]
pub(crate) fn lane_fold(
    a: &[f32],
    b: &[f32],
    init: f32,
    f: impl Fn(f32, f32, f32) -> f32,
) -> [f32; LANES] {
    let mut acc = [init; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ta, tb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..LANES {
            acc[i] = f(acc[i], x[i], y[i]);
        }
    }
    for (&x, &y) in ta.iter().zip(tb) {
        acc[0] = f(acc[0], x, y);
    }
    acc
}

/// `Σ aᵢ·bᵢ`, vectorised (see [`LANES`]).
#[inline(always)]
pub(crate) fn lane_dot(a: &[f32], b: &[f32]) -> f32 {
    lane_fold(a, b, 0.0, |s, x, y| s + x * y).iter().sum()
}

/// The processor's model name as the OS reports it (`/proc/cpuinfo`), or `unknown`.
fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// The vector instruction sets of this CPU that matter to sslab's kernels, by name.
fn vector_features() -> Vec<&'static str> {
    #[cfg(target_arch = "x86_64")]
    {
        let mut have = Vec::new();
        macro_rules! probe {
            ($($f:tt),*) => {$(
                if is_x86_feature_detected!($f) {
                    have.push($f);
                }
            )*};
        }
        probe!(
            "avx2",
            "fma",
            "avx512f",
            "avx512bw",
            "avx512vl",
            "avx512bf16"
        );
        // std's AMX detection is not stable yet: the kernel's flags say whether the tiles are
        // there (and usable: Linux lists them only once enabled).
        let flags = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        for (flag, name) in [("amx_tile", "amx-tile"), ("amx_bf16", "amx-bf16")] {
            if flags.split_whitespace().any(|w| w == flag) {
                have.push(name);
            }
        }
        have
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        Vec::new()
    }
}

/// One line on what this CPU is and which kernels sslab takes on it (printed by `sslab bench`
/// and `benches/compare.sh`, so that a figure says where it was measured).
///
/// ```
/// let line = sslab::kernels::cpu_report();
/// assert!(line.starts_with("CPU ") && line.contains("GEMM"));
/// ```
pub fn cpu_report() -> String {
    let features = vector_features();
    let has = |f: &str| features.contains(&f);
    let element = if avx512() {
        "AVX-512"
    } else if avx2() {
        "AVX2+FMA"
    } else {
        "scalar"
    };
    let winograd = if avx2() { "AVX2+FMA" } else { "scalar" };
    // gemm (with its `x86-v4` feature) picks its AVX-512 micro-kernels itself at run time.
    let gemm = if has("avx512f") {
        "AVX-512"
    } else if avx2() {
        "AVX2+FMA"
    } else {
        "scalar"
    };
    let bf16 = if avx512_bf16() {
        "AVX512-BF16"
    } else {
        "none (precision = \"bf16\" refused)"
    };
    format!(
        "CPU {} | {} | element kernels: {element} | Winograd: {winograd} | GEMM (gemm crate): {gemm} | bf16 GEMM: {bf16}",
        cpu_model(),
        if features.is_empty() {
            "no x86 vector extensions detected".to_string()
        } else {
            features.join(" ")
        },
    )
}
