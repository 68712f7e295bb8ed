// Training-mode BatchNorm on CUDA, NCHW data seen as (n, c, inner): the statistics in one
// pass, the normalisation (with the affine part and an optional ReLU) in one more, and the
// gradient as one reduction and one element-wise pass, as the CPU kernels in
// kernels/batch_norm/mod.rs. Statistics accumulate in double, like the CPU's. The data (x, y and their gradients) is f32 or
// bf16 (elements.cuh: _f32 and _bf16 kernels); statistics, γ, β and their gradients are f32.
//
// Reductions run one block per channel: a channel's n*inner values are read with the block's
// threads walking `inner` contiguously, image after image.

#include "elements.cuh"

#define BLOCK 256

// Sums a and b over the block; thread 0 gets the totals.
__device__ void block_sum2(double &a, double &b) {
    __shared__ double sa[BLOCK / 32], sb[BLOCK / 32];
    for (int o = 16; o > 0; o >>= 1) {
        a += __shfl_down_sync(0xffffffff, a, o);
        b += __shfl_down_sync(0xffffffff, b, o);
    }
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    if (lane == 0) { sa[warp] = a; sb[warp] = b; }
    __syncthreads();
    if (warp == 0) {
        a = lane < BLOCK / 32 ? sa[lane] : 0.0;
        b = lane < BLOCK / 32 ? sb[lane] : 0.0;
        for (int o = 16; o > 0; o >>= 1) {
            a += __shfl_down_sync(0xffffffff, a, o);
            b += __shfl_down_sync(0xffffffff, b, o);
        }
    }
}

// stats[0..c) = mean, stats[c..2c) = biased variance, stats[2c..3c) = 1/sqrt(var + eps).
#define BN_STATS(T, sfx)                                                                    \
    extern "C" __global__ void bn_stats_##sfx(const T *x, float *stats, int n, int c,       \
                                              int inner, float eps) {                       \
        const int ch = blockIdx.x;                                                          \
        double s = 0.0, ss = 0.0;                                                           \
        for (int b = 0; b < n; ++b) {                                                       \
            long long row = ((long long)b * c + ch) * inner;                                \
            for (int j = threadIdx.x; j < inner; j += BLOCK) {                              \
                double v = ld(x, row + j);                                                  \
                s += v;                                                                     \
                ss += v * v;                                                                \
            }                                                                               \
        }                                                                                   \
        block_sum2(s, ss);                                                                  \
        if (threadIdx.x == 0) {                                                             \
            double m = (double)n * inner;                                                   \
            double mean = s / m;                                                            \
            double var = ss / m - mean * mean;                                              \
            if (var < 0.0) var = 0.0;                                                       \
            stats[ch] = (float)mean;                                                        \
            stats[c + ch] = (float)var;                                                     \
            stats[2 * c + ch] = (float)(1.0 / sqrt(var + (double)eps));                     \
        }                                                                                   \
    }
FOR_F32_AND_BF16(BN_STATS)

// y = (x - mean) * inv_std * gamma + beta, then max(y, 0) when relu != 0.
#define BN_APPLY(T, sfx)                                                                    \
    extern "C" __global__ void bn_apply_##sfx(const T *x, const float *stats,               \
                                              const float *gamma, const float *beta, T *y,  \
                                              long long total, int c, int inner, int relu) { \
        GRID_STRIDE(i, total) {                                                             \
            int ch = (int)((i / inner) % c);                                                \
            float v = (ld(x, i) - stats[ch]) * (stats[2 * c + ch] * gamma[ch]) + beta[ch];  \
            st(y, i, relu && v < 0.f ? 0.f : v);                                            \
        }                                                                                   \
    }
FOR_F32_AND_BF16(BN_APPLY)

// The gradient reaching the normalisation: dy, masked by the ReLU's output when relu != 0.
template <typename T>
__device__ __forceinline__ float masked(const T *dy, const T *y, long long i, int relu) {
    return relu && !(ld(y, i) > 0.f) ? 0.f : ld(dy, i);
}

// sums[0..c) = sum of g (dbeta), sums[c..2c) = sum of g * xhat (dgamma), g the masked gradient.
#define BN_GRAD_SUMS(T, sfx)                                                                \
    extern "C" __global__ void bn_grad_sums_##sfx(const T *x, const T *dy, const T *y,      \
                                                  const float *stats, float *sums, int n,   \
                                                  int c, int inner, int relu) {             \
        const int ch = blockIdx.x;                                                          \
        const float mean = stats[ch], inv_std = stats[2 * c + ch];                          \
        double sg = 0.0, sgx = 0.0;                                                         \
        for (int b = 0; b < n; ++b) {                                                       \
            long long o = ((long long)b * c + ch) * inner;                                  \
            for (int j = threadIdx.x; j < inner; j += BLOCK) {                              \
                double g = masked(dy, y, o + j, relu);                                      \
                sg += g;                                                                    \
                sgx += g * (double)((ld(x, o + j) - mean) * inv_std);                       \
            }                                                                               \
        }                                                                                   \
        block_sum2(sg, sgx);                                                                \
        if (threadIdx.x == 0) {                                                             \
            sums[ch] = (float)sg;                                                           \
            sums[c + ch] = (float)sgx;                                                      \
        }                                                                                   \
    }
FOR_F32_AND_BF16(BN_GRAD_SUMS)

// dx = gamma * inv_std * (g - mean(g) - xhat * mean(g * xhat)).
#define BN_GRAD_INPUT(T, sfx)                                                               \
    extern "C" __global__ void bn_grad_input_##sfx(                                         \
        const T *x, const T *dy, const T *y, const float *stats, const float *sums,         \
        const float *gamma, T *dx, long long total, int c, int inner, float count,          \
        int relu) {                                                                         \
        GRID_STRIDE(i, total) {                                                             \
            int ch = (int)((i / inner) % c);                                                \
            float inv_std = stats[2 * c + ch];                                              \
            float xhat = (ld(x, i) - stats[ch]) * inv_std;                                  \
            float g = masked(dy, y, i, relu);                                               \
            st(dx, i,                                                                       \
               gamma[ch] * inv_std * (g - sums[ch] / count - xhat * (sums[c + ch] / count))); \
        }                                                                                   \
    }
FOR_F32_AND_BF16(BN_GRAD_INPUT)
