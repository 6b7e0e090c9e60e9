// Shared helpers of the lorax CUDA kernels: dtype codes, float loads/stores, warp reductions.
#pragma once

#include <ATen/ATen.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace lorax {

constexpr unsigned kFullMask = 0xffffffffu;

// Storage dtype of a tensor the kernels read or write (all arithmetic is float32).
enum DType : int32_t { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

inline DType dtype_code(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return kFloat32;
    case at::kHalf: return kFloat16;
    case at::kBFloat16: return kBFloat16;
    default:
      TORCH_CHECK(false, "lorax kernels: dtype must be float32, float16 or bfloat16, got ",
                  t.scalar_type());
  }
}

__device__ __forceinline__ float load_as_float(const void* p, int64_t i, int32_t dtype) {
  switch (dtype) {
    case kFloat16: return __half2float(static_cast<const __half*>(p)[i]);
    case kBFloat16: return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
    default: return static_cast<const float*>(p)[i];
  }
}

// Stores `v` rounded to the storage dtype and returns the stored value (as float).
__device__ __forceinline__ float store_from_float(void* p, int64_t i, int32_t dtype, float v) {
  switch (dtype) {
    case kFloat16: {
      const __half h = __float2half_rn(v);
      static_cast<__half*>(p)[i] = h;
      return __half2float(h);
    }
    case kBFloat16: {
      const __nv_bfloat16 h = __float2bfloat16_rn(v);
      static_cast<__nv_bfloat16*>(p)[i] = h;
      return __bfloat162float(h);
    }
    default:
      static_cast<float*>(p)[i] = v;
      return v;
  }
}

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(double v) { return static_cast<float>(v); }
__device__ __forceinline__ float to_float(at::Half v) { return static_cast<float>(v); }
__device__ __forceinline__ float to_float(at::BFloat16 v) { return static_cast<float>(v); }

// Sum over the lanes of a warp (every lane must take part).
__device__ __forceinline__ float warp_sum(float v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(kFullMask, v, offset);
  return v;
}

}  // namespace lorax
