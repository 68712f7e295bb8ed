// Per-column affine work on (rows, d) data on CUDA, f32, as the CPU kernels in
// kernels/affine.rs: a linear layer's bias add and its column-sum gradient, LayerNorm's scale and
// shift and their gradients.

#define GRID_STRIDE(i, n)                                                                   \
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < (n);           \
         i += (long long)gridDim.x * blockDim.x)

// out = y + b (b broadcast over the rows).
extern "C" __global__ void add_cols_f32(const float *y, const float *b, float *out, long long n,
                                        long long d) {
    GRID_STRIDE(i, n) { out[i] = y[i] + b[i % d]; }
}

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
extern "C" __global__ void col_sums_f32(const float *g, float *out, long long rows,
                                        long long d, long long chunk) {
    long long j = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (j >= d) return;
    long long r0 = blockIdx.y * chunk, r1 = min(rows, r0 + chunk);
    float s = 0.f;
    for (long long r = r0; r < r1; ++r) s += g[r * d + j];
    atomicAdd(out + j, s);
}

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
