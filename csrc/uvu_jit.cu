// Loading and launching the per-problem uvu kernels that batmobile_nn/_uvu.py generates and compiles
// with NVRTC (batmobile_nn/_uvu_codegen.py has their source and signatures). The cubin is loaded with
// the runtime's library API (context-independent handles, no libcuda link); launches go through
// cudaLaunchKernel on the current stream, so they are captured by CUDA graphs like any other kernel.
#include <torch/library.h>

#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include <mutex>
#include <string>
#include <vector>

#include "batmobile/common.cuh"

namespace batmobile {

namespace {

std::mutex g_mutex;
std::vector<cudaLibrary_t> g_libraries;  // kept loaded for the life of the process

cudaKernel_t as_kernel(int64_t handle) {
  TORCH_CHECK(handle != 0, "batmobile_cuda: null kernel handle");
  return reinterpret_cast<cudaKernel_t>(static_cast<intptr_t>(handle));
}

const int64_t* optional_index(const c10::optional<at::Tensor>& t, const char* name, const at::Device& device,
                              int64_t numel) {
  if (!t.has_value()) return nullptr;
  check_index(*t, name, device, numel);
  return t->data_ptr<int64_t>();
}

struct Graph3 {
  const int64_t* order;
  const int64_t* send;
  const int64_t* row_ptr;
};

Graph3 graph_of(const c10::optional<at::Tensor>& order, const c10::optional<at::Tensor>& send,
                const c10::optional<at::Tensor>& row_ptr, int64_t n_nodes, int64_t n_edges, const at::Device& device) {
  TORCH_CHECK(send.has_value() == row_ptr.has_value(),
              "batmobile_cuda: send and row_ptr are given together (convolution) or not at all");
  TORCH_CHECK(row_ptr.has_value() || n_nodes == n_edges,
              "batmobile_cuda: without a graph, in1 and in2 need the same batch size");
  return {optional_index(order, "order", device, n_edges), optional_index(send, "send", device, n_edges),
          optional_index(row_ptr, "row_ptr", device, n_nodes + 1)};
}

void check_common(const at::Tensor& x1, const at::Tensor& x2, const at::Tensor& w, int64_t dim1, int64_t dim2,
                  int64_t weight_numel) {
  const at::Device device = x1.device();
  const at::ScalarType dtype = x1.scalar_type();
  check_float(x1, "in1", dtype, device);
  check_float(x2, "in2", dtype, device);
  check_float(w, "weight", dtype, device);
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble, "batmobile_cuda: float32 or float64 only");
  TORCH_CHECK(x1.dim() == 2 && x1.size(1) == dim1, "batmobile_cuda: in1 must be [n_nodes, ", dim1, "]");
  TORCH_CHECK(x2.dim() == 2 && x2.size(1) == dim2, "batmobile_cuda: in2 must be [n_edges, ", dim2, "]");
  TORCH_CHECK(w.dim() == 2 && w.size(0) == x2.size(0) && w.size(1) == weight_numel,
              "batmobile_cuda: weight must be [n_edges, ", weight_numel, "]");
}

void launch(int64_t kernel, int64_t n_nodes, int64_t threads, void** args, const at::Device& device) {
  TORCH_CHECK(threads >= 32 && threads <= 1024 && threads % 32 == 0, "batmobile_cuda: bad block size ", threads);
  c10::cuda::CUDAGuard guard(device);
  const int64_t grid = std::min<int64_t>(n_nodes, int64_t(1) << 30);
  C10_CUDA_CHECK(cudaLaunchKernel(reinterpret_cast<const void*>(as_kernel(kernel)), dim3(static_cast<unsigned>(grid)),
                                  dim3(static_cast<unsigned>(threads)), args, 0,
                                  c10::cuda::getCurrentCUDAStream(device.index())));
}

}  // namespace

// Loads a cubin (uint8 CPU tensor) and returns the handle of kernel `name` (kept for the process's life).
int64_t jit_load(const at::Tensor& image, const std::string& name) {
  TORCH_CHECK(image.device().is_cpu() && image.scalar_type() == at::kByte && image.is_contiguous() && image.dim() == 1,
              "batmobile_cuda: jit_load wants a contiguous uint8 CPU tensor");
  std::lock_guard<std::mutex> lock(g_mutex);
  cudaLibrary_t library = nullptr;
  C10_CUDA_CHECK(cudaLibraryLoadData(&library, image.data_ptr(), nullptr, nullptr, 0, nullptr, nullptr, 0));
  g_libraries.push_back(library);
  cudaKernel_t kernel = nullptr;
  C10_CUDA_CHECK(cudaLibraryGetKernel(&kernel, library, name.c_str()));
  return static_cast<int64_t>(reinterpret_cast<intptr_t>(kernel));
}

// out [n_nodes, dim_out] = sum over each node's edges of the uvu product (see _uvu_codegen.forward_source).
at::Tensor uvu_forward(int64_t kernel, int64_t threads, const at::Tensor& x1, const at::Tensor& x2,
                       const at::Tensor& w, const c10::optional<at::Tensor>& order,
                       const c10::optional<at::Tensor>& send, const c10::optional<at::Tensor>& row_ptr,
                       int64_t dim1, int64_t dim2, int64_t dim_out, int64_t weight_numel, bool zero_out) {
  check_common(x1, x2, w, dim1, dim2, weight_numel);
  const int64_t n_nodes = x1.size(0), n_edges = x2.size(0);
  Graph3 g = graph_of(order, send, row_ptr, n_nodes, n_edges, x1.device());
  at::Tensor out = zero_out ? at::zeros({n_nodes, dim_out}, x1.options()) : at::empty({n_nodes, dim_out}, x1.options());
  if (n_nodes == 0) return out;
  const void* px1 = x1.data_ptr();
  const void* px2 = x2.data_ptr();
  const void* pw = w.data_ptr();
  void* pout = out.data_ptr();
  int64_t nodes = n_nodes;
  void* args[] = {&px1, &px2, &pw, &g.order, &g.send, &g.row_ptr, &pout, &nodes};
  launch(kernel, n_nodes, threads, args, x1.device());
  return out;
}

// (g1_edge [n_edges, dim1], g2_part [n_edges, warps, dim2], gw [n_edges, weight_numel]); empty where not needed.
std::tuple<at::Tensor, at::Tensor, at::Tensor> uvu_backward(
    int64_t kernel, int64_t threads, const at::Tensor& grad_out, const at::Tensor& x1, const at::Tensor& x2,
    const at::Tensor& w, const c10::optional<at::Tensor>& order, const c10::optional<at::Tensor>& send,
    const c10::optional<at::Tensor>& row_ptr, int64_t dim1, int64_t dim2, int64_t dim_out, int64_t weight_numel,
    std::array<bool, 3> needs, bool zero_g1) {
  check_common(x1, x2, w, dim1, dim2, weight_numel);
  check_float(grad_out, "grad_out", x1.scalar_type(), x1.device());
  const int64_t n_nodes = x1.size(0), n_edges = x2.size(0);
  TORCH_CHECK(grad_out.dim() == 2 && grad_out.size(0) == n_nodes && grad_out.size(1) == dim_out,
              "batmobile_cuda: grad_out must be [n_nodes, ", dim_out, "]");
  Graph3 g = graph_of(order, send, row_ptr, n_nodes, n_edges, x1.device());
  const auto opts = x1.options();
  at::Tensor g1 = !needs[0] ? at::empty({0}, opts)
                  : zero_g1 ? at::zeros({n_edges, dim1}, opts)
                            : at::empty({n_edges, dim1}, opts);
  at::Tensor g2 = needs[1] ? at::empty({n_edges, threads / 32, dim2}, opts) : at::empty({0}, opts);
  at::Tensor gw = needs[2] ? at::empty({n_edges, weight_numel}, opts) : at::empty({0}, opts);
  if (n_nodes == 0 || n_edges == 0 || !(needs[0] || needs[1] || needs[2])) return {g1, g2, gw};
  const void* pgo = grad_out.data_ptr();
  const void* px1 = x1.data_ptr();
  const void* px2 = x2.data_ptr();
  const void* pw = w.data_ptr();
  void* pg1 = needs[0] ? g1.data_ptr() : nullptr;
  void* pg2 = needs[1] ? g2.data_ptr() : nullptr;
  void* pgw = needs[2] ? gw.data_ptr() : nullptr;
  int64_t nodes = n_nodes;
  void* args[] = {&pgo, &px1, &px2, &pw, &g.order, &g.send, &g.row_ptr, &pg1, &pg2, &pgw, &nodes};
  launch(kernel, n_nodes, threads, args, x1.device());
  return {g1, g2, gw};
}

// kernel<<<grid, threads>>>(pointers of `tensors` (null for None), then `scalars` as int64), on the current
// stream. For the run-time compiled kernels whose signature is all pointers then all int64 (_sc_codegen.py);
// the outputs are among `tensors`, allocated by the caller.
void jit_launch(int64_t kernel, int64_t grid, int64_t threads, const c10::List<c10::optional<at::Tensor>>& tensors,
                c10::IntArrayRef scalars) {
  TORCH_CHECK(threads >= 32 && threads <= 1024 && threads % 32 == 0, "batmobile_cuda: bad block size ", threads);
  TORCH_CHECK(grid >= 1 && grid <= (int64_t(1) << 31) - 1, "batmobile_cuda: bad grid size ", grid);
  std::vector<void*> pointers;
  c10::optional<at::Device> device;
  for (const c10::optional<at::Tensor>& t : tensors) {
    if (!t.has_value()) {
      pointers.push_back(nullptr);
      continue;
    }
    TORCH_CHECK(t->is_cuda() && t->is_contiguous(), "batmobile_cuda: jit_launch takes contiguous CUDA tensors");
    TORCH_CHECK(!device.has_value() || *device == t->device(), "batmobile_cuda: jit_launch tensors on two devices");
    device = t->device();
    pointers.push_back(t->data_ptr());
  }
  TORCH_CHECK(device.has_value(), "batmobile_cuda: jit_launch needs at least one tensor");
  std::vector<int64_t> values(scalars.begin(), scalars.end());
  std::vector<void*> args;
  for (void*& p : pointers) args.push_back(&p);
  for (int64_t& v : values) args.push_back(&v);
  c10::cuda::CUDAGuard guard(*device);
  C10_CUDA_CHECK(cudaLaunchKernel(reinterpret_cast<const void*>(as_kernel(kernel)), dim3(static_cast<unsigned>(grid)),
                                  dim3(static_cast<unsigned>(threads)), args.data(), 0,
                                  c10::cuda::getCurrentCUDAStream(device->index())));
}

TORCH_LIBRARY_IMPL(batmobile_cuda, CUDA, m) {
  m.impl("jit_launch", &jit_launch);
  m.impl("uvu_forward", &uvu_forward);
  m.impl("uvu_backward", &uvu_backward);
}

}  // namespace batmobile
