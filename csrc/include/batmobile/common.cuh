// Helpers shared by every kernel file: compile-time loops, input checks, launch configuration.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>
#include <utility>

namespace batmobile {

// ---- compile-time loops ---------------------------------------------------------------------
// static_for<N>(f) calls f(std::integral_constant<int, 0>{}) ... f(std::integral_constant<int, N-1>{}),
// so that the body can use the index in constant expressions (template arguments, array sizes).
template <typename F, int... Is>
__host__ __device__ __forceinline__ void static_for_impl(F&& f, std::integer_sequence<int, Is...>) {
  (f(std::integral_constant<int, Is>{}), ...);
}

template <int N, typename F>
__host__ __device__ __forceinline__ void static_for(F&& f) {
  static_for_impl(f, std::make_integer_sequence<int, N>{});
}

// Tag carrying the three degrees of a tensor-product path.
template <int L1_, int L2_, int LO_>
struct PathLs {
  static constexpr int L1 = L1_, L2 = L2_, LO = LO_;
  static constexpr int D1 = 2 * L1_ + 1, D2 = 2 * L2_ + 1, DO = 2 * LO_ + 1;
};

// ---- input checks ---------------------------------------------------------------------------
inline void check_float(const at::Tensor& t, const char* name, at::ScalarType dtype, const at::Device& device) {
  TORCH_CHECK(t.is_cuda(), "batmobile_cuda: ", name, " must be a CUDA tensor");
  TORCH_CHECK(t.device() == device, "batmobile_cuda: ", name, " is on ", t.device(), ", expected ", device);
  TORCH_CHECK(t.scalar_type() == dtype, "batmobile_cuda: ", name, " is ", t.scalar_type(), ", expected ", dtype);
  TORCH_CHECK(t.is_contiguous(), "batmobile_cuda: ", name, " must be contiguous");
}

inline void check_index(const at::Tensor& t, const char* name, const at::Device& device, int64_t numel) {
  TORCH_CHECK(t.is_cuda() && t.device() == device, "batmobile_cuda: ", name, " must be on ", device);
  TORCH_CHECK(t.scalar_type() == at::kLong, "batmobile_cuda: ", name, " must be int64");
  TORCH_CHECK(t.is_contiguous() && t.dim() == 1 && t.numel() == numel, "batmobile_cuda: ", name,
              " must be a contiguous int64 vector of length ", numel);
}

// ---- launch configuration -------------------------------------------------------------------
inline int device_sm_count(int device) {
  int count = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
  return count;
}

// Raises the dynamic shared-memory limit of `kernel` when `bytes` needs it, and returns the number of
// blocks of a persistent grid (every block loops over work items with stride gridDim.x).
template <typename Kernel>
int persistent_grid(Kernel kernel, int threads, size_t smem_bytes, int64_t work_items, int device) {
  if (work_items <= 0) return 0;
  int max_optin = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&max_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  TORCH_CHECK(smem_bytes <= static_cast<size_t>(max_optin), "batmobile_cuda: the problem needs ", smem_bytes,
              " bytes of shared memory per block, the device allows ", max_optin);
  if (smem_bytes > 48 * 1024) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(smem_bytes)));
  }
  int per_sm = 0;
  C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, smem_bytes));
  const int64_t blocks = static_cast<int64_t>(std::max(per_sm, 1)) * device_sm_count(device) * 4;
  return static_cast<int>(std::min<int64_t>(blocks, work_items));
}

// Dispatches float32 / float64 to `scalar_t` inside the lambda.
#define BATMOBILE_DISPATCH_FLOAT(TYPE, NAME, ...)                                          \
  [&] {                                                                                      \
    if ((TYPE) == at::kFloat) {                                                              \
      using scalar_t = float;                                                                \
      return __VA_ARGS__();                                                                  \
    }                                                                                        \
    TORCH_CHECK((TYPE) == at::kDouble, "batmobile_cuda: ", NAME, " supports float32 and float64, got ", TYPE); \
    using scalar_t = double;                                                                 \
    return __VA_ARGS__();                                                                    \
  }()

// Aligns a shared-memory byte offset to `alignment`.
__host__ __device__ inline size_t align_up(size_t bytes, size_t alignment) {
  return (bytes + alignment - 1) / alignment * alignment;
}

}  // namespace batmobile
