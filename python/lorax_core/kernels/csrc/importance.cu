// Kernel 1: the fused importance update of AdaLoRA/ElaLoRA (docs/kernels.md).
//
// One launch over every adapter tensor of the model: per element
//   I = |p * g|;  ipt <- ipt + (1 - beta1) (I - ipt);  unc <- unc + (1 - beta2) (|I - ipt| - unc)
// and, in the same pass, the per-rank scores  S[off + j] += mean over the other axis of ipt*unc
// (A rows, B columns, E itself). The tensors are described by a table of segments (pointers,
// sizes, dtypes) copied to the device asynchronously from pinned memory: no host synchronisation.
// Reference: lorax_core/kernels/reference.py (importance_update_ and rank_scores_).

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cstring>
#include <vector>

#include "common.cuh"

namespace lorax {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kChunk = 16 * kThreads;  // elements one block updates

struct Segment {
  const void* param;
  const void* grad;
  void* ipt;
  void* unc;
  int64_t numel;
  int64_t cols;          // row length of a 2-D tensor, 1 for a 1-D one
  int64_t score_offset;  // first rank slot in `scores`, or -1: no per-rank score
  float score_weight;    // 1 / (length of the averaged axis); 1 for a 1-D tensor
  int32_t rank_dim;      // 0: rank slot = row, 1: rank slot = column (1-D tensors use 0)
  int32_t dtype;
  int32_t pad;
};

struct Chunk {
  int64_t start;
  int64_t segment;
};

__global__ void __launch_bounds__(kThreads)
importance_kernel(const Segment* __restrict__ segments, const Chunk* __restrict__ chunks,
                  float* __restrict__ scores, float w1, float w2) {
  const Chunk chunk = chunks[blockIdx.x];
  const Segment s = segments[chunk.segment];
  const int64_t end = min(chunk.start + kChunk, s.numel);
  const bool scored = s.score_offset >= 0;
  const unsigned lane = threadIdx.x & 31u;
  // The loop bound is the same for every thread, so whole warps take part in the shuffles.
  for (int64_t base = chunk.start; base < end; base += kThreads) {
    const int64_t i = base + threadIdx.x;
    float score = 0.0f;
    int64_t slot = -1;
    if (i < end) {
      const float p = load_as_float(s.param, i, s.dtype);
      const float g = load_as_float(s.grad, i, s.dtype);
      const float current = fabsf(p * g);
      const float ipt_old = load_as_float(s.ipt, i, s.dtype);
      const float ipt = store_from_float(s.ipt, i, s.dtype, ipt_old + w1 * (current - ipt_old));
      const float unc_old = load_as_float(s.unc, i, s.dtype);
      const float dev = fabsf(current - ipt);
      const float unc = store_from_float(s.unc, i, s.dtype, unc_old + w2 * (dev - unc_old));
      if (scored) {
        slot = s.rank_dim == 0 ? i / s.cols : i % s.cols;
        score = ipt * unc * s.score_weight;
      }
    }
    if (!scored) continue;
    // Rows of A are long: usually a whole warp adds to one slot, so reduce first.
    const int64_t first = __shfl_sync(kFullMask, slot, 0);
    if (__all_sync(kFullMask, slot == first || slot < 0)) {
      const float total = warp_sum(score);
      if (lane == 0 && first >= 0) atomicAdd(scores + s.score_offset + first, total);
    } else if (slot >= 0) {
      atomicAdd(scores + s.score_offset + slot, score);
    }
  }
}

void importance_update_cuda(at::TensorList ipt, at::TensorList unc, at::TensorList params,
                            at::TensorList grads, at::IntArrayRef rank_dims,
                            at::IntArrayRef score_offsets, const at::Tensor& scores,
                            double beta1, double beta2) {
  const size_t n = params.size();
  TORCH_CHECK(grads.size() == n && ipt.size() == n && unc.size() == n && rank_dims.size() == n &&
                  score_offsets.size() == n,
              "importance_update_: the tensor lists and rank_dims/score_offsets must have one "
              "entry per parameter");
  TORCH_CHECK(scores.is_cuda() && scores.scalar_type() == at::kFloat && scores.is_contiguous(),
              "importance_update_: scores must be a contiguous float32 CUDA tensor");
  const c10::cuda::CUDAGuard guard(scores.device());
  scores.zero_();
  if (n == 0) return;
  std::vector<at::Tensor> keep;  // contiguous copies of strided parameters/gradients
  std::vector<Segment> segments;
  std::vector<Chunk> chunks;
  segments.reserve(n);
  for (size_t t = 0; t < n; ++t) {
    const at::Tensor& a = ipt[t];
    const at::Tensor& b = unc[t];
    TORCH_CHECK(a.is_contiguous() && b.is_contiguous(),
                "importance_update_: ipt and unc must be contiguous");
    TORCH_CHECK(a.device() == scores.device() && b.device() == scores.device() &&
                    params[t].device() == scores.device() && grads[t].device() == scores.device(),
                "importance_update_: every tensor must be on the scores' device");
    TORCH_CHECK(params[t].sizes() == a.sizes() && grads[t].sizes() == a.sizes() &&
                    b.sizes() == a.sizes(),
                "importance_update_: parameter ", t, " and its gradient and EMAs differ in shape");
    const DType dt = dtype_code(a);
    TORCH_CHECK(dtype_code(b) == dt && params[t].scalar_type() == a.scalar_type() &&
                    grads[t].scalar_type() == a.scalar_type(),
                "importance_update_: parameter ", t, " and its gradient and EMAs differ in dtype");
    TORCH_CHECK(a.dim() == 1 || a.dim() == 2 || rank_dims[t] < 0,
                "importance_update_: a scored tensor must be 1-D or 2-D");
    const at::Tensor p = params[t].contiguous();
    const at::Tensor g = grads[t].contiguous();
    keep.push_back(p);
    keep.push_back(g);
    Segment s{};
    s.param = p.data_ptr();
    s.grad = g.data_ptr();
    s.ipt = a.data_ptr();
    s.unc = b.data_ptr();
    s.numel = a.numel();
    s.cols = a.dim() == 2 ? a.size(1) : 1;
    s.dtype = dt;
    s.score_offset = rank_dims[t] < 0 ? -1 : score_offsets[t];
    s.rank_dim = a.dim() == 2 ? static_cast<int32_t>(rank_dims[t]) : 0;
    if (s.rank_dim < 0) s.rank_dim = 0;
    if (s.score_offset >= 0) {
      const int64_t slots = a.dim() == 2 ? a.size(s.rank_dim) : a.numel();
      TORCH_CHECK(s.score_offset + slots <= scores.numel(),
                  "importance_update_: score_offsets[", t, "] runs past the scores buffer");
      const int64_t averaged = a.dim() == 2 ? a.size(1 - s.rank_dim) : 1;
      s.score_weight = averaged > 0 ? 1.0f / static_cast<float>(averaged) : 0.0f;
    }
    const int64_t id = static_cast<int64_t>(segments.size());
    segments.push_back(s);
    for (int64_t start = 0; start < s.numel; start += kChunk) chunks.push_back({start, id});
  }
  if (chunks.empty()) return;
  // One pinned table of segments then chunks, copied to the device without a host wait.
  const size_t seg_bytes = segments.size() * sizeof(Segment);
  const size_t bytes = seg_bytes + chunks.size() * sizeof(Chunk);
  at::Tensor host = at::empty({static_cast<int64_t>(bytes)},
                              at::TensorOptions().dtype(at::kByte).pinned_memory(true));
  std::memcpy(host.data_ptr(), segments.data(), seg_bytes);
  std::memcpy(static_cast<char*>(host.data_ptr()) + seg_bytes, chunks.data(),
              chunks.size() * sizeof(Chunk));
  const at::Tensor table = host.to(scores.device(), /*non_blocking=*/true);
  const auto* dev_segments = reinterpret_cast<const Segment*>(table.data_ptr());
  const auto* dev_chunks =
      reinterpret_cast<const Chunk*>(static_cast<const char*>(table.data_ptr()) + seg_bytes);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  importance_kernel<<<static_cast<unsigned>(chunks.size()), kThreads, 0, stream>>>(
      dev_segments, dev_chunks, scores.data_ptr<float>(), static_cast<float>(1.0 - beta1),
      static_cast<float>(1.0 - beta2));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace
}  // namespace lorax

TORCH_LIBRARY_IMPL(lorax_core, CUDA, m) { m.impl("importance_update_", &lorax::importance_update_cuda); }
