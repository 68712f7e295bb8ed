// Softmax over the last axis with attention's scale folded in, and its backward, on CUDA, as the
// CPU kernels in kernels/softmax.rs. One warp per row: attention rows are a few hundred values
// long. The scores and the incoming gradient are f32 (a product's f32 result); the
// probabilities and the outgoing gradient are written as f32 (`_f32`) or, for a bf16 product
// that reads them next, as bf16 (`softmax_to_bf16`, `softmax_grad_bf16`; elements.cuh).

#include "elements.cuh"

#define FULL 0xffffffffu

__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(FULL, v, o));
    return v;
}

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL, v, o);
    return v;
}

// y = softmax(scale·x) per row of d values. Each output is stored once (exp recomputed in the
// last pass), so a bf16 output is rounded once.
template <typename TY>
__device__ __forceinline__ void softmax_rows(const float *x, TY *y, long long rows, int d,
                                             float scale) {
    long long row = (blockIdx.x * (long long)blockDim.x + threadIdx.x) / 32;
    int lane = threadIdx.x % 32;
    // Uniform per warp: every lane of a warp has the same row.
    if (row >= rows) return;
    const float *xr = x + row * d;
    long long o = row * d;
    float m = -INFINITY;
    for (int j = lane; j < d; j += 32) m = fmaxf(m, xr[j] * scale);
    m = warp_max(m);
    float s = 0.f;
    for (int j = lane; j < d; j += 32) s += expf(xr[j] * scale - m);
    float inv = 1.f / warp_sum(s);
    for (int j = lane; j < d; j += 32) st(y, o + j, expf(xr[j] * scale - m) * inv);
}

extern "C" __global__ void softmax_f32(const float *x, float *y, long long rows, int d,
                                       float scale) {
    softmax_rows(x, y, rows, d, scale);
}

extern "C" __global__ void softmax_to_bf16(const float *x, bf16 *y, long long rows, int d,
                                           float scale) {
    softmax_rows(x, y, rows, d, scale);
}

// dx = scale·y⊙(g − Σ g⊙y) per row.
template <typename T>
__device__ __forceinline__ void softmax_grad_rows(const T *y, const float *g, T *dx,
                                                  long long rows, int d, float scale) {
    long long row = (blockIdx.x * (long long)blockDim.x + threadIdx.x) / 32;
    int lane = threadIdx.x % 32;
    if (row >= rows) return;
    long long o = row * d;
    const float *gr = g + o;
    float dot = 0.f;
    for (int j = lane; j < d; j += 32) dot += ld(y, o + j) * gr[j];
    dot = warp_sum(dot);
    for (int j = lane; j < d; j += 32) st(dx, o + j, scale * ld(y, o + j) * (gr[j] - dot));
}

extern "C" __global__ void softmax_grad_f32(const float *y, const float *g, float *dx,
                                            long long rows, int d, float scale) {
    softmax_grad_rows(y, g, dx, rows, d, scale);
}

// From bf16 probabilities (the ones the forward's bf16 product read) to a bf16 dS.
extern "C" __global__ void softmax_grad_bf16(const bf16 *y, const float *g, bf16 *dx,
                                             long long rows, int d, float scale) {
    softmax_grad_rows(y, g, dx, rows, d, scale);
}
