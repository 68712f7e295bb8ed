// Per-column affine work on (rows, d) data on CUDA, as the CPU kernels in kernels/affine.rs: a
// linear layer's bias add and its column-sum gradient (f32 or bf16 data, elements.cuh; the bias
// and its gradient f32), LayerNorm's scale and shift and their gradients (f32: LayerNorm runs in
// f32 under autocast).

#include "elements.cuh"

// out = y + b (b broadcast over the rows).
#define ADD_COLS(T, sfx)                                                                    \
    extern "C" __global__ void add_cols_##sfx(const T *y, const float *b, T *out,           \
                                              long long n, long long d) {                   \
        GRID_STRIDE(i, n) { st(out, i, ld(y, i) + b[i % d]); }                              \
    }
FOR_F32_AND_BF16(ADD_COLS)

// out = x·w + b.
extern "C" __global__ void scale_shift_f32(const float *x, const float *w, const float *b,
                                           float *out, long long n, long long d) {
    GRID_STRIDE(i, n) {
        long long j = i % d;
        out[i] = x[i] * w[j] + b[j];
    }
}

// out = g·w.
extern "C" __global__ void scale_cols_f32(const float *g, const float *w, float *out,
                                          long long n, long long d) {
    GRID_STRIDE(i, n) { out[i] = g[i] * w[i % d]; }
}

// Column sums over a chunk of rows per block row (blockIdx.y), added into the zeroed out[d]:
// threads of a block take adjacent columns, so each row is read coalesced.
// The sums are f32 whatever g holds.
#define COL_SUMS(T, sfx)                                                                    \
    extern "C" __global__ void col_sums_##sfx(const T *g, float *out, long long rows,       \
                                              long long d, long long chunk) {               \
        long long j = blockIdx.x * (long long)blockDim.x + threadIdx.x;                     \
        if (j >= d) return;                                                                 \
        long long r0 = blockIdx.y * chunk, r1 = min(rows, r0 + chunk);                      \
        float s = 0.f;                                                                      \
        for (long long r = r0; r < r1; ++r) s += ld(g, r * d + j);                          \
        atomicAdd(out + j, s);                                                              \
    }
FOR_F32_AND_BF16(COL_SUMS)

// out[0..d) += Σ g·x and out[d..2d) += Σ g over a chunk of rows, as col_sums_f32.
extern "C" __global__ void col_sums2_f32(const float *g, const float *x, float *out,
                                         long long rows, long long d, long long chunk) {
    long long j = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (j >= d) return;
    long long r0 = blockIdx.y * chunk, r1 = min(rows, r0 + chunk);
    float sgx = 0.f, sg = 0.f;
    for (long long r = r0; r < r1; ++r) {
        float gv = g[r * d + j];
        sgx += gv * x[r * d + j];
        sg += gv;
    }
    atomicAdd(out + j, sgx);
    atomicAdd(out + d + j, sg);
}
