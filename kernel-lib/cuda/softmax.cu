// Softmax over the last axis with attention's scale folded in, and its backward, on CUDA, f32,
// as the CPU kernels in kernels/softmax.rs. One warp per row: attention rows are a few hundred
// values long.

#define FULL 0xffffffffu

__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(FULL, v, o));
    return v;
}

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL, v, o);
    return v;
}

// y = softmax(scale·x) per row of d values.
extern "C" __global__ void softmax_f32(const float *x, float *y, long long rows, int d,
                                       float scale) {
    long long row = (blockIdx.x * (long long)blockDim.x + threadIdx.x) / 32;
    int lane = threadIdx.x % 32;
    // Uniform per warp: every lane of a warp has the same row.
    if (row >= rows) return;
    const float *xr = x + row * d;
    float *yr = y + row * d;
    float m = -INFINITY;
    for (int j = lane; j < d; j += 32) m = fmaxf(m, xr[j] * scale);
    m = warp_max(m);
    float s = 0.f;
    for (int j = lane; j < d; j += 32) {
        float e = expf(xr[j] * scale - m);
        yr[j] = e;
        s += e;
    }
    float inv = 1.f / warp_sum(s);
    for (int j = lane; j < d; j += 32) yr[j] *= inv;
}

// dx = scale·y⊙(g − Σ g⊙y) per row.
extern "C" __global__ void softmax_grad_f32(const float *y, const float *g, float *dx,
                                            long long rows, int d, float scale) {
    long long row = (blockIdx.x * (long long)blockDim.x + threadIdx.x) / 32;
    int lane = threadIdx.x % 32;
    if (row >= rows) return;
    const float *yr = y + row * d, *gr = g + row * d;
    float dot = 0.f;
    for (int j = lane; j < d; j += 32) dot += yr[j] * gr[j];
    dot = warp_sum(dot);
    for (int j = lane; j < d; j += 32) dx[row * d + j] = scale * yr[j] * (gr[j] - dot);
}
