// Kernel 2: the DoRA row norm ||W + s B A||_row in one read of W (docs/kernels.md).
//
//   n_i^2 = ||W_i||^2 + 2 s (B_i . (W A^T)_i) + s^2 (B_i (A A^T) B_i^T)
//
// One tiled pass over W (float32, float16 or bfloat16; float32 accumulation) computes both
// ||W_i||^2 and the out x r product W A^T, and folds the latter into B_i . (W A^T)_i in the
// epilogue, so neither the out x in matrix nor W A^T is ever stored. The r x r Gram matrix and
// the quadratic term are O(out r) torch ops. Reference: lorax_core/kernels/reference.py.

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "common.cuh"

namespace lorax {
namespace {

constexpr int kThreads = 256;  // 16 x 16: tx picks rank columns, ty picks rows
constexpr int kRows = 64;      // rows of W per block
constexpr int kDepth = 32;     // columns of W per shared-memory tile

// Block (x: 64 rows, y: a slice of RT ranks). sq[row] = ||W_row||^2 (from the y = 0 slice),
// cross[row] += B_row . (W A^T)_row over the slice.
template <typename scalar_t, int RT>
__global__ void __launch_bounds__(kThreads)
dora_norm_kernel(const scalar_t* __restrict__ W, const float* __restrict__ A,
                 const float* __restrict__ B, int64_t out, int64_t in, int64_t r,
                 float* __restrict__ sq, float* __restrict__ cross) {
  constexpr int kCols = RT / 16;
  __shared__ float Ws[kDepth][kRows + 1];
  __shared__ float As[kDepth][RT + 1];
  const int tid = threadIdx.x;
  const int tx = tid % 16;
  const int ty = tid / 16;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kRows;
  const int64_t k0 = static_cast<int64_t>(blockIdx.y) * RT;
  // Tile loads: each thread reads 8 consecutive columns of one row of W.
  const int load_row = tid / 4;
  const int load_col = (tid % 4) * 8;
  const int64_t grow = row0 + load_row;
  float acc[4][kCols];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < kCols; ++j) acc[i][j] = 0.0f;
  float sq_part = 0.0f;
  for (int64_t j0 = 0; j0 < in; j0 += kDepth) {
#pragma unroll
    for (int q = 0; q < 8; ++q) {
      const int64_t col = j0 + load_col + q;
      const float w = (grow < out && col < in) ? to_float(W[grow * in + col]) : 0.0f;
      Ws[load_col + q][load_row] = w;
      sq_part += w * w;
    }
    for (int e = tid; e < RT * kDepth; e += kThreads) {
      const int k = e / kDepth;
      const int c = e % kDepth;
      const int64_t gk = k0 + k;
      const int64_t col = j0 + c;
      As[c][k] = (gk < r && col < in) ? A[gk * in + col] : 0.0f;
    }
    __syncthreads();
#pragma unroll 8
    for (int c = 0; c < kDepth; ++c) {
      float a[kCols];
#pragma unroll
      for (int j = 0; j < kCols; ++j) a[j] = As[c][tx + 16 * j];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const float w = Ws[c][ty + 16 * i];
#pragma unroll
        for (int j = 0; j < kCols; ++j) acc[i][j] = fmaf(w, a[j], acc[i][j]);
      }
    }
    __syncthreads();
  }
  // ||W_row||^2: the four loaders of a row are consecutive lanes.
  sq_part += __shfl_xor_sync(kFullMask, sq_part, 1);
  sq_part += __shfl_xor_sync(kFullMask, sq_part, 2);
  if (blockIdx.y == 0 && tid % 4 == 0 && grow < out) sq[grow] = sq_part;
  // B_row . (W A^T)_row: the 16 tx lanes of a row are consecutive lanes of one warp.
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int64_t row = row0 + ty + 16 * i;
    float part = 0.0f;
#pragma unroll
    for (int j = 0; j < kCols; ++j) {
      const int64_t gk = k0 + tx + 16 * j;
      if (row < out && gk < r) part = fmaf(B[row * r + gk], acc[i][j], part);
    }
    for (int offset = 8; offset > 0; offset >>= 1)
      part += __shfl_xor_sync(kFullMask, part, offset);
    if (tx == 0 && row < out) atomicAdd(cross + row, part);
  }
}

template <int RT>
void launch(const at::Tensor& W, const at::Tensor& A, const at::Tensor& B, const at::Tensor& sq,
            const at::Tensor& cross) {
  const int64_t out = W.size(0);
  const int64_t in = W.size(1);
  const int64_t r = A.size(0);
  const dim3 grid(static_cast<unsigned>((out + kRows - 1) / kRows),
                  static_cast<unsigned>((r + RT - 1) / RT));
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, W.scalar_type(), "dora_row_norm", [&] {
    dora_norm_kernel<scalar_t, RT><<<grid, kThreads, 0, stream>>>(
        W.data_ptr<scalar_t>(), A.data_ptr<float>(), B.data_ptr<float>(), out, in, r,
        sq.data_ptr<float>(), cross.data_ptr<float>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor dora_row_norm_cuda(const at::Tensor& weight, const at::Tensor& lora_A,
                              const at::Tensor& lora_B, double scaling) {
  TORCH_CHECK(weight.dim() == 2 && lora_A.dim() == 2 && lora_B.dim() == 2,
              "dora_row_norm: weight (out, in), lora_A (r, in) and lora_B (out, r) must be 2-D");
  TORCH_CHECK(lora_A.size(1) == weight.size(1) && lora_B.size(0) == weight.size(0) &&
                  lora_B.size(1) == lora_A.size(0),
              "dora_row_norm: shapes ", weight.sizes(), ", ", lora_A.sizes(), ", ",
              lora_B.sizes(), " do not chain as W (out, in), A (r, in), B (out, r)");
  TORCH_CHECK(weight.device() == lora_A.device() && weight.device() == lora_B.device(),
              "dora_row_norm: weight, lora_A and lora_B must be on one device");
  TORCH_CHECK(weight.scalar_type() != at::kDouble,
              "dora_row_norm: float64 weights take the torch path");
  dtype_code(weight);  // float32, float16 or bfloat16
  const c10::cuda::CUDAGuard guard(weight.device());
  const at::Tensor W = weight.contiguous();
  const at::Tensor A = lora_A.to(at::kFloat).contiguous();
  const at::Tensor B = lora_B.to(at::kFloat).contiguous();
  const int64_t out = W.size(0);
  const int64_t r = A.size(0);
  const at::TensorOptions f32 = W.options().dtype(at::kFloat);
  const at::Tensor sq = at::zeros({out}, f32);
  const at::Tensor cross = at::zeros({out}, f32);
  if (out > 0 && W.size(1) > 0) {
    if (r <= 16) {
      launch<16>(W, A, B, sq, cross);
    } else if (r <= 32) {
      launch<32>(W, A, B, sq, cross);
    } else {
      launch<64>(W, A, B, sq, cross);
    }
  }
  const at::Tensor quad = (at::matmul(B, at::matmul(A, A.t())) * B).sum(1);
  const at::Tensor n_sq = sq + (2.0 * scaling) * cross + (scaling * scaling) * quad;
  return n_sq.clamp_min(0.0).sqrt().to(lora_A.scalar_type());
}

}  // namespace
}  // namespace lorax

TORCH_LIBRARY_IMPL(lorax_core, CUDA, m) { m.impl("dora_row_norm", &lorax::dora_row_norm_cuda); }
