// Element-wise activations on CUDA, f32: ReLU, the residual relu(a + b), exact GELU, and their
// one-pass backward kernels, as the CPU kernels in kernels/activation.rs.

#define GRID_STRIDE(i, n)                                                                   \
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < (n);           \
         i += (long long)gridDim.x * blockDim.x)

extern "C" __global__ void relu_f32(const float *x, float *y, long long n) {
    GRID_STRIDE(i, n) { y[i] = fmaxf(x[i], 0.f); }
}

extern "C" __global__ void add_relu_f32(const float *a, const float *b, float *y, long long n) {
    GRID_STRIDE(i, n) { y[i] = fmaxf(a[i] + b[i], 0.f); }
}

// dx = g where the ReLU's output is positive, else 0.
extern "C" __global__ void relu_grad_f32(const float *y, const float *g, float *dx, long long n) {
    GRID_STRIDE(i, n) { dx[i] = y[i] > 0.f ? g[i] : 0.f; }
}

// y = x·Φ(x), Φ the standard normal CDF (exact, through erf).
extern "C" __global__ void gelu_f32(const float *x, float *y, long long n) {
    GRID_STRIDE(i, n) {
        float v = x[i];
        y[i] = 0.5f * v * (1.f + erff(v * 0.70710678118654752f));
    }
}

// dx = g·(Φ(x) + x·φ(x)).
extern "C" __global__ void gelu_grad_f32(const float *x, const float *g, float *dx,
                                         long long n) {
    GRID_STRIDE(i, n) {
        float v = x[i];
        float cdf = 0.5f * (1.f + erff(v * 0.70710678118654752f));
        float pdf = 0.39894228040143268f * expf(-0.5f * v * v);
        dx[i] = g[i] * (cdf + v * pdf);
    }
}
