// Optimizer updates and the momentum encoder's EMA on CUDA, f32, in place: the rules of
// kernels/optim_update/mod.rs (SGD, LARS in both variants, AdamW, LAMB) as a few element-wise
// passes per tensor. Trust ratios never leave the device: a reduction adds the squared norms
// into a double[3] and the update kernel computes the ratio from them.
//
// Every kernel takes (dst, sources..., norms, n, scalars...): `norms` is null where the rule
// needs none.

#define BLOCK 256

#define GRID_STRIDE(i, n)                                                                   \
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < (n);           \
         i += (long long)gridDim.x * blockDim.x)

// Adds the block's values of a, b, c into out[0..3) (one double atomic each per block).
__device__ void block_add3(double a, double b, double c, double *out) {
    __shared__ double s[3][BLOCK / 32];
    for (int o = 16; o > 0; o >>= 1) {
        a += __shfl_down_sync(0xffffffff, a, o);
        b += __shfl_down_sync(0xffffffff, b, o);
        c += __shfl_down_sync(0xffffffff, c, o);
    }
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    if (lane == 0) { s[0][warp] = a; s[1][warp] = b; s[2][warp] = c; }
    __syncthreads();
    if (threadIdx.x == 0) {
        double ta = 0.0, tb = 0.0, tc = 0.0;
        for (int w = 0; w < BLOCK / 32; ++w) { ta += s[0][w]; tb += s[1][w]; tc += s[2][w]; }
        atomicAdd(out, ta);
        atomicAdd(out + 1, tb);
        atomicAdd(out + 2, tc);
    }
}

// norms += (Σp², Σg², Σ(g + wd·p)²), the decayed term rounded to f32 as the CPU rounds it.
extern "C" __global__ void lars_norms_f32(double *norms, const float *p, const float *g,
                                          long long n, float wd) {
    double pp = 0.0, gg = 0.0, dd = 0.0;
    GRID_STRIDE(i, n) {
        double pv = p[i], gv = g[i];
        double d = (double)(g[i] + wd * p[i]);
        pp += pv * pv;
        gg += gv * gv;
        dd += d * d;
    }
    block_add3(pp, gg, dd, norms);
}

__device__ __forceinline__ double trust(double num, double den, double scale) {
    return num > 0.0 && den > 0.0 ? scale * num / den : 1.0;
}

// buf = mu·buf + (g + wd·p)·q. mode 0: q = 1 (SGD, LARS groups without adaptation); 1: LARS,
// q = eta‖p‖/‖g + wd·p‖; 2: solo-learn's LARS, q = min(eta‖p‖/(‖g‖ + wd‖p‖ + 1e-8)/lr, 1).
extern "C" __global__ void momentum_f32(float *buf, const float *g, const float *p,
                                        const double *norms, long long n, float mu, float wd,
                                        float eta, float lr, int mode) {
    float q = 1.f;
    if (mode == 1) {
        q = (float)trust(sqrt(norms[0]), sqrt(norms[2]), eta);
    } else if (mode == 2) {
        double pn = sqrt(norms[0]);
        double r = trust(pn, sqrt(norms[1]) + (double)wd * pn + 1e-8, eta);
        q = lr > 0.f ? (float)fmin(fmax(r / (double)lr, 0.0), 1.0) : 1.f;
    }
    GRID_STRIDE(i, n) { buf[i] = mu * buf[i] + (g[i] + wd * p[i]) * q; }
}

// p -= lr·buf.
extern "C" __global__ void sub_scaled_f32(float *p, const float *buf, const double *norms,
                                          long long n, float lr) {
    GRID_STRIDE(i, n) { p[i] -= lr * buf[i]; }
}

// Nesterov SGD: p -= lr·(g + wd·p + mu·buf).
extern "C" __global__ void nesterov_f32(float *p, const float *buf, const float *g,
                                        const double *norms, long long n, float lr, float wd,
                                        float mu) {
    GRID_STRIDE(i, n) { p[i] -= lr * (g[i] + wd * p[i] + mu * buf[i]); }
}

// dst = a·dst + b·src (Adam's first moment; the EMA of a momentum encoder).
extern "C" __global__ void axpby_f32(float *dst, const float *src, const double *norms,
                                     long long n, float a, float b) {
    GRID_STRIDE(i, n) { dst[i] = a * dst[i] + b * src[i]; }
}

// dst = a·dst + b·src² (Adam's second moment).
extern "C" __global__ void axpby_sq_f32(float *dst, const float *src, const double *norms,
                                        long long n, float a, float b) {
    GRID_STRIDE(i, n) { dst[i] = a * dst[i] + b * (src[i] * src[i]); }
}

__device__ __forceinline__ float adam_dir(float m, float v, float bc1, float bc2, float eps) {
    return (m / bc1) / (sqrtf(v / bc2) + eps);
}

// AdamW: p = p·keep − lr·m̂/(√v̂ + eps), keep = 1 − lr·wd.
extern "C" __global__ void adamw_f32(float *p, const float *m, const float *v,
                                     const double *norms, long long n, float lr, float keep,
                                     float bc1, float bc2, float eps) {
    GRID_STRIDE(i, n) { p[i] = p[i] * keep - lr * adam_dir(m[i], v[i], bc1, bc2, eps); }
}

// norms += (Σp², Σr², 0) with r = m̂/(√v̂ + eps) + wd·p (LAMB's trust ratio).
extern "C" __global__ void lamb_norms_f32(double *norms, const float *m, const float *v,
                                          const float *p, long long n, float bc1, float bc2,
                                          float eps, float wd) {
    double pp = 0.0, rr = 0.0;
    GRID_STRIDE(i, n) {
        double r = (double)(adam_dir(m[i], v[i], bc1, bc2, eps) + wd * p[i]);
        pp += (double)p[i] * p[i];
        rr += r * r;
    }
    block_add3(pp, rr, 0.0, norms);
}

// LAMB: p -= lr·q·(m̂/(√v̂ + eps) + wd·p), q = ‖p‖/‖r‖ from norms, or 1 when norms is null.
extern "C" __global__ void lamb_f32(float *p, const float *m, const float *v,
                                    const double *norms, long long n, float lr, float bc1,
                                    float bc2, float eps, float wd) {
    float q = norms ? (float)trust(sqrt(norms[0]), sqrt(norms[1]), 1.0) : 1.f;
    GRID_STRIDE(i, n) { p[i] -= lr * q * (adam_dir(m[i], v[i], bc1, bc2, eps) + wd * p[i]); }
}
