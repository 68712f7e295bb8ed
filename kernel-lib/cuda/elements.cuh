// Loads and stores of the activations sslab's kernels read and write: f32, or bf16 where a bf16
// autocast keeps activations in bf16 between ops. Every kernel computes in f32 registers; a bf16
// value is widened on load (exact) and rounded to nearest-even on store, once per value.
#pragma once
#include <cuda_bf16.h>

typedef __nv_bfloat16 bf16;

__device__ __forceinline__ float ld(const float *p, long long i) { return p[i]; }
__device__ __forceinline__ float ld(const bf16 *p, long long i) { return __bfloat162float(p[i]); }
__device__ __forceinline__ void st(float *p, long long i, float v) { p[i] = v; }
__device__ __forceinline__ void st(bf16 *p, long long i, float v) { p[i] = __float2bfloat16_rn(v); }

#define GRID_STRIDE(i, n)                                                                   \
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < (n);           \
         i += (long long)gridDim.x * blockDim.x)

// Writes a kernel body once for both data types: KERNEL(name, T) must define name##_##sfx over
// data of type T; this instantiates name_f32 and name_bf16.
#define FOR_F32_AND_BF16(KERNEL) KERNEL(float, f32) KERNEL(bf16, bf16)
