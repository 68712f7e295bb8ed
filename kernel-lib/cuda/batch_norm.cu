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

// (rows, c) data: BatchNorm1d, and channels-last (NHWC) activations seen as (n·h·w, c). With one
// value per (row, channel) the kernels above would give each channel's block one busy thread;
// here a block of ROWS_X × ROWS_Y threads takes ROWS_X adjacent columns (coalesced reads of each
// row) over a chunk of rows, sums them in double, and adds its partial sums into acc[2·c]
// (double atomics); bn_finish_stats / bn_finish_sums turn acc into what the kernels above write.

#define ROWS_X 32
#define ROWS_Y 8

// Adds a block's column partials a, b (per thread) into acc[col], acc[c + col].
__device__ void columns_add(double a, double b, double *acc, int c, int col) {
    __shared__ double sa[ROWS_Y][ROWS_X], sb[ROWS_Y][ROWS_X];
    sa[threadIdx.y][threadIdx.x] = a;
    sb[threadIdx.y][threadIdx.x] = b;
    __syncthreads();
    if (threadIdx.y == 0 && col < c) {
        for (int k = 1; k < ROWS_Y; ++k) {
            a += sa[k][threadIdx.x];
            b += sb[k][threadIdx.x];
        }
        atomicAdd(acc + col, a);
        atomicAdd(acc + c + col, b);
    }
}

// acc[0..c) += Σ x, acc[c..2c) += Σ x² over this block's rows.
#define BN_STATS_ROWS(T, sfx)                                                               \
    extern "C" __global__ void bn_stats_rows_##sfx(const T *x, double *acc, long long rows, \
                                                   int c, long long chunk) {                \
        int col = blockIdx.x * ROWS_X + threadIdx.x;                                        \
        long long r0 = blockIdx.y * chunk, r1 = min(rows, r0 + chunk);                      \
        double s = 0.0, ss = 0.0;                                                           \
        if (col < c) {                                                                      \
            for (long long r = r0 + threadIdx.y; r < r1; r += ROWS_Y) {                     \
                double v = ld(x, r * c + col);                                              \
                s += v;                                                                     \
                ss += v * v;                                                                \
            }                                                                               \
        }                                                                                   \
        columns_add(s, ss, acc, c, col);                                                    \
    }
FOR_F32_AND_BF16(BN_STATS_ROWS)

// stats as bn_stats writes them, from acc of `count` values per channel.
extern "C" __global__ void bn_finish_stats(const double *acc, float *stats, int c, double count,
                                           float eps) {
    int ch = blockIdx.x * blockDim.x + threadIdx.x;
    if (ch >= c) return;
    double mean = acc[ch] / count;
    double var = acc[c + ch] / count - mean * mean;
    if (var < 0.0) var = 0.0;
    stats[ch] = (float)mean;
    stats[c + ch] = (float)var;
    stats[2 * c + ch] = (float)(1.0 / sqrt(var + (double)eps));
}

// acc[0..c) += Σ g, acc[c..2c) += Σ g·x̂ over this block's rows, g masked as in bn_grad_sums.
#define BN_GRAD_SUMS_ROWS(T, sfx)                                                           \
    extern "C" __global__ void bn_grad_sums_rows_##sfx(                                     \
        const T *x, const T *dy, const T *y, const float *stats, double *acc,               \
        long long rows, int c, long long chunk, int relu) {                                 \
        int col = blockIdx.x * ROWS_X + threadIdx.x;                                        \
        long long r0 = blockIdx.y * chunk, r1 = min(rows, r0 + chunk);                      \
        double sg = 0.0, sgx = 0.0;                                                         \
        if (col < c) {                                                                      \
            const float mean = stats[col], inv_std = stats[2 * c + col];                    \
            for (long long r = r0 + threadIdx.y; r < r1; r += ROWS_Y) {                     \
                long long i = r * c + col;                                                  \
                double g = masked(dy, y, i, relu);                                          \
                sg += g;                                                                    \
                sgx += g * (double)((ld(x, i) - mean) * inv_std);                           \
            }                                                                               \
        }                                                                                   \
        columns_add(sg, sgx, acc, c, col);                                                  \
    }
FOR_F32_AND_BF16(BN_GRAD_SUMS_ROWS)

// sums as bn_grad_sums writes them, from acc.
extern "C" __global__ void bn_finish_sums(const double *acc, float *sums, int c) {
    int ch = blockIdx.x * blockDim.x + threadIdx.x;
    if (ch >= c) return;
    sums[ch] = (float)acc[ch];
    sums[c + ch] = (float)acc[c + ch];
}
