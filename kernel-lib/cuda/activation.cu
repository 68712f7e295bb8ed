// Element-wise activations on CUDA: ReLU, the residual relu(a + b), exact GELU, and their
// one-pass backward kernels, as the CPU kernels in kernels/activation.rs. Each comes as _f32 and
// _bf16 (elements.cuh): f32 arithmetic, the data in the dtype the activations are kept in.

#include "elements.cuh"

#define RELU(T, sfx)                                                                        \
    extern "C" __global__ void relu_##sfx(const T *x, T *y, long long n) {                  \
        GRID_STRIDE(i, n) { st(y, i, fmaxf(ld(x, i), 0.f)); }                               \
    }
FOR_F32_AND_BF16(RELU)

#define ADD_RELU(T, sfx)                                                                    \
    extern "C" __global__ void add_relu_##sfx(const T *a, const T *b, T *y, long long n) {  \
        GRID_STRIDE(i, n) { st(y, i, fmaxf(ld(a, i) + ld(b, i), 0.f)); }                    \
    }
FOR_F32_AND_BF16(ADD_RELU)

// dx = g where the ReLU's output is positive, else 0.
#define RELU_GRAD(T, sfx)                                                                   \
    extern "C" __global__ void relu_grad_##sfx(const T *y, const T *g, T *dx, long long n) { \
        GRID_STRIDE(i, n) { st(dx, i, ld(y, i) > 0.f ? ld(g, i) : 0.f); }                   \
    }
FOR_F32_AND_BF16(RELU_GRAD)

// y = x·Φ(x), Φ the standard normal CDF (exact, through erf).
#define GELU(T, sfx)                                                                        \
    extern "C" __global__ void gelu_##sfx(const T *x, T *y, long long n) {                  \
        GRID_STRIDE(i, n) {                                                                 \
            float v = ld(x, i);                                                             \
            st(y, i, 0.5f * v * (1.f + erff(v * 0.70710678118654752f)));                   \
        }                                                                                   \
    }
FOR_F32_AND_BF16(GELU)

// dx = g·(Φ(x) + x·φ(x)).
#define GELU_GRAD(T, sfx)                                                                   \
    extern "C" __global__ void gelu_grad_##sfx(const T *x, const T *g, T *dx, long long n) { \
        GRID_STRIDE(i, n) {                                                                 \
            float v = ld(x, i);                                                             \
            float cdf = 0.5f * (1.f + erff(v * 0.70710678118654752f));                      \
            float pdf = 0.39894228040143268f * expf(-0.5f * v * v);                         \
            st(dx, i, ld(g, i) * (cdf + v * pdf));                                          \
        }                                                                                   \
    }
FOR_F32_AND_BF16(GELU_GRAD)
