//! Instruction sets chosen at run time: the AVX2 + FMA test and a macro that compiles a plain
//! element loop a second time with those features enabled.

/// `$name` runs `$body` with AVX2 + FMA code generation where the CPU has them (the element
/// loops are written to vectorise), else as compiled.
macro_rules! wide {
    ($name:ident = $body:ident($($arg:ident: $ty:ty),*)) => {
        fn $name($($arg: $ty),*) {
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
