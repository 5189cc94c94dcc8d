// The tensor-product ops (tp_forward, tp_backward) and the deterministic segment sum: input checks,
// output allocation and dispatch to the per-dtype kernel launchers (tp_forward_f32.cu, ...).
//
// Backward design, like the forward: one block per receiver node. The node's output-gradient row is
// read once into shared memory; for each incoming edge the block writes the edge's weight gradient and
// in2 gradient directly (a fixed-order block reduction over channels for in2), and the edge's in1
// gradient row [dim1] to a per-edge buffer, which the caller sums by sender with segment_sum
// (sender-sorted order). No atomics, no [n_edges, dim_out] tensor, and the rows gathered per edge are
// the sender's [dim1] features rather than the receiver's [dim_out] gradient (dim_out = 10 x dim1 in
// MACE-MP-medium). csrc/README.md has the byte counts.
#include <torch/library.h>

#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include "batmobile/tp_launch.h"

namespace batmobile {

namespace {

void check_threads(int64_t threads) {
  TORCH_CHECK(threads >= 32 && threads <= 256 && threads % 32 == 0,
              "batmobile_cuda: threads must be a multiple of 32 in 32..256, got ", threads);
}

template <typename T>
TpArgs<T> common_args(const at::Tensor& in1, const at::Tensor& in2, const at::Tensor& weight, const Graph& graph,
                      const at::Tensor& instr, const at::Tensor& cg, int64_t dim_out, int64_t threads) {
  TpArgs<T> a{};
  a.x1 = in1.data_ptr<T>();
  a.x2 = in2.data_ptr<T>();
  a.weight = weight.data_ptr<T>();
  a.weight_numel = weight.size(-1);
  a.weight_stride = weight.dim() == 2 ? a.weight_numel : 0;
  a.graph = graph;
  a.instr = instr.data_ptr<int>();
  a.n_instr = instr.size(0);
  a.cg = cg.data_ptr<T>();
  a.n_cg = cg.size(0);
  a.dim1 = in1.size(1);
  a.dim2 = in2.size(1);
  a.dim_out = dim_out;
  a.n_nodes = in1.size(0);
  a.threads = threads;
  a.device = in1.device().index();
  return a;
}

void check_inputs(const at::Tensor& in1, const at::Tensor& in2, const at::Tensor& weight, const at::Tensor& instr,
                  const at::Tensor& cg, int64_t threads) {
  const at::Device device = in1.device();
  const at::ScalarType dtype = in1.scalar_type();
  check_float(in1, "in1", dtype, device);
  check_float(in2, "in2", dtype, device);
  check_float(weight, "weight", dtype, device);
  check_tables(instr, cg, dtype, device);
  check_threads(threads);
  TORCH_CHECK(in1.dim() == 2 && in2.dim() == 2, "batmobile_cuda: in1 and in2 must be 2-D");
  TORCH_CHECK(weight.dim() == 1 || (weight.dim() == 2 && weight.size(0) == in2.size(0)),
              "batmobile_cuda: weight must be [n_edges, weight_numel] or [weight_numel]");
}

}  // namespace

at::Tensor tp_forward(const at::Tensor& in1, const at::Tensor& in2, const at::Tensor& weight,
                      const c10::optional<at::Tensor>& sender, const c10::optional<at::Tensor>& edge_order,
                      const c10::optional<at::Tensor>& row_ptr, const at::Tensor& instr, const at::Tensor& cg,
                      int64_t dim_out, int64_t threads) {
  check_inputs(in1, in2, weight, instr, cg, threads);
  const int64_t n_nodes = in1.size(0), n_edges = in2.size(0);
  const Graph graph = make_graph(sender, edge_order, row_ptr, n_edges, n_nodes, in1.device());
  at::Tensor out = at::empty({n_nodes, dim_out}, in1.options());
  if (n_nodes == 0) return out;
  c10::cuda::CUDAGuard guard(in1.device());
  BATMOBILE_DISPATCH_FLOAT(in1.scalar_type(), "tp_forward", [&] {
    TpArgs<scalar_t> a = common_args<scalar_t>(in1, in2, weight, graph, instr, cg, dim_out, threads);
    a.out = out.data_ptr<scalar_t>();
    launch_tp_forward<scalar_t>(a, c10::cuda::getCurrentCUDAStream());
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> tp_backward(
    const at::Tensor& grad_out, const at::Tensor& in1, const at::Tensor& in2, const at::Tensor& weight,
    const c10::optional<at::Tensor>& sender, const c10::optional<at::Tensor>& edge_order,
    const c10::optional<at::Tensor>& row_ptr, const at::Tensor& instr, const at::Tensor& cg, std::array<bool, 3> needs,
    int64_t threads) {
  check_inputs(in1, in2, weight, instr, cg, threads);
  check_float(grad_out, "grad_out", in1.scalar_type(), in1.device());
  const int64_t n_nodes = in1.size(0), n_edges = in2.size(0);
  TORCH_CHECK(grad_out.dim() == 2 && grad_out.size(0) == n_nodes, "batmobile_cuda: grad_out must be [n_nodes, dim_out]");
  const Graph graph = make_graph(sender, edge_order, row_ptr, n_edges, n_nodes, in1.device());
  const int64_t weight_numel = weight.size(-1);
  const bool need_w = needs[2] && weight_numel > 0, shared = weight.dim() == 1;
  auto empty = [&](bool needed, int64_t cols) {
    return needed ? at::empty({n_edges, cols}, in1.options()) : at::empty({0}, in1.options());
  };
  at::Tensor g1 = empty(needs[0], in1.size(1)), g2 = empty(needs[1], in2.size(1));
  // shared weights: [0, weight_numel] here, [n_blocks, weight_numel] partial sums below (never [n_edges, ...])
  at::Tensor gw = !needs[2] ? at::empty({0}, in1.options())
                            : at::empty({shared ? 0 : n_edges, weight_numel}, in1.options());
  if (n_nodes == 0 || n_edges == 0 || !(needs[0] || needs[1] || need_w)) return {g1, g2, gw};
  c10::cuda::CUDAGuard guard(in1.device());
  BATMOBILE_DISPATCH_FLOAT(in1.scalar_type(), "tp_backward", [&] {
    TpArgs<scalar_t> a = common_args<scalar_t>(in1, in2, weight, graph, instr, cg, grad_out.size(1), threads);
    a.grad_out = grad_out.data_ptr<scalar_t>();
    a.grad_x1 = needs[0] ? g1.data_ptr<scalar_t>() : nullptr;
    a.grad_x2 = needs[1] ? g2.data_ptr<scalar_t>() : nullptr;
    if (need_w && shared) {  // one partial sum per block, summed by the caller
      a.accumulate_w = true;
      a.blocks = tp_backward_grid<scalar_t>(a);
      gw = at::zeros({a.blocks, weight_numel}, in1.options());
    }
    a.grad_w = need_w ? gw.data_ptr<scalar_t>() : nullptr;
    launch_tp_backward<scalar_t>(a, c10::cuda::getCurrentCUDAStream());
  });
  return {g1, g2, gw};
}

template <typename T>
__global__ void __launch_bounds__(256) segment_sum_kernel(
    const T* __restrict__ rows,         // [n_rows, dim]
    const int64_t* __restrict__ order,  // [n_rows]
    const int64_t* __restrict__ row_ptr,  // [n_out + 1]
    int64_t n_out, int dim,
    T* __restrict__ out)  // [n_out, dim]
{
  for (int64_t n = blockIdx.x; n < n_out; n += gridDim.x) {
    const int64_t begin = row_ptr[n], end = row_ptr[n + 1];
    for (int c = threadIdx.x; c < dim; c += blockDim.x) {
      T sum = T(0);
      for (int64_t p = begin; p < end; ++p) sum += rows[order[p] * dim + c];
      out[n * dim + c] = sum;
    }
  }
}

at::Tensor segment_sum(const at::Tensor& rows, const at::Tensor& order, const at::Tensor& row_ptr) {
  const at::Device device = rows.device();
  check_float(rows, "rows", rows.scalar_type(), device);
  TORCH_CHECK(rows.dim() == 2, "batmobile_cuda: rows must be 2-D");
  check_index(order, "order", device, rows.size(0));
  TORCH_CHECK(row_ptr.dim() == 1 && row_ptr.numel() >= 1, "batmobile_cuda: row_ptr must be [n_out + 1]");
  check_index(row_ptr, "row_ptr", device, row_ptr.numel());
  const int64_t n_out = row_ptr.numel() - 1;
  const int dim = rows.size(1);
  at::Tensor out = at::empty({n_out, dim}, rows.options());
  if (n_out == 0 || dim == 0) return out;
  c10::cuda::CUDAGuard guard(device);
  const int threads = std::min(256, std::max(32, (dim + 31) / 32 * 32));
  BATMOBILE_DISPATCH_FLOAT(rows.scalar_type(), "segment_sum", [&] {
    auto kernel = segment_sum_kernel<scalar_t>;
    const int blocks = persistent_grid(kernel, threads, 0, n_out, device.index());
    kernel<<<blocks, threads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        rows.data_ptr<scalar_t>(), order.data_ptr<int64_t>(), row_ptr.data_ptr<int64_t>(), n_out, dim,
        out.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

TORCH_LIBRARY_IMPL(batmobile_cuda, CUDA, m) {
  m.impl("tp_forward", &tp_forward);
  m.impl("tp_backward", &tp_backward);
  m.impl("segment_sum", &segment_sum);
}

}  // namespace batmobile
