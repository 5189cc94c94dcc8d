// How the edge-block kernels (tp_forward.cu, tp_backward.cu) walk a graph, and their shared-memory plan.
//
// A block handles one receiver node at a time (persistent grid: node = blockIdx.x, += gridDim.x) and
// loops over its incoming edges in CSR order: positions row_ptr[n] .. row_ptr[n + 1], edge id
// edge_order[p] (identity when null), sender sender[e]. The plain (non-convolution) tensor product is
// the special case "node n has the single edge n whose sender is n": all three pointers null.
#pragma once

#include "batmobile/common.cuh"

namespace batmobile {

// Row of the instruction table (batmobile_nn/_cuda.py builds it from the flat plan).
struct Instr {
  int mode;  // 0 = uvu, 1 = uvw
  int in1_offset, mul1, l1;
  int in2_offset, mul2, l2;
  int out_offset, mul_out, l_out;
  int weight_offset;  // -1: no weight
  int cg_offset;      // into the compact coefficient list (non-zeros of the pattern, in pattern order)
};
constexpr int INSTR_FIELDS = sizeof(Instr) / sizeof(int);
static_assert(INSTR_FIELDS == 12, "Instr must match batmobile_nn/_cuda.py");
constexpr int MODE_UVU = 0;

struct Graph {
  const int64_t* sender;      // [n_edges] or null (sender = edge)
  const int64_t* edge_order;  // [n_edges] or null (identity)
  const int64_t* row_ptr;     // [n_nodes + 1] or null (one edge per node)

  __device__ __forceinline__ int64_t begin(int64_t n) const { return row_ptr ? row_ptr[n] : n; }
  __device__ __forceinline__ int64_t end(int64_t n) const { return row_ptr ? row_ptr[n + 1] : n + 1; }
  __device__ __forceinline__ int64_t edge(int64_t p) const { return edge_order ? edge_order[p] : p; }
  __device__ __forceinline__ int64_t source(int64_t e) const { return sender ? sender[e] : e; }
};

// Graph pointers from the optional tensors of the ops (all int64, checked).
inline Graph make_graph(const c10::optional<at::Tensor>& sender, const c10::optional<at::Tensor>& edge_order,
                        const c10::optional<at::Tensor>& row_ptr, int64_t n_edges, int64_t n_nodes,
                        const at::Device& device) {
  Graph g{nullptr, nullptr, nullptr};
  TORCH_CHECK(sender.has_value() == row_ptr.has_value(),
              "batmobile_cuda: sender and row_ptr are given together (convolution) or not at all");
  if (sender.has_value()) {
    check_index(*sender, "sender", device, n_edges);
    check_index(*row_ptr, "row_ptr", device, n_nodes + 1);
    g.sender = sender->data_ptr<int64_t>();
    g.row_ptr = row_ptr->data_ptr<int64_t>();
  } else {
    TORCH_CHECK(n_edges == n_nodes, "batmobile_cuda: without a graph, in1 and in2 need the same batch size");
  }
  if (edge_order.has_value()) {
    check_index(*edge_order, "edge_order", device, n_edges);
    g.edge_order = edge_order->data_ptr<int64_t>();
  }
  return g;
}

// Copies the instruction table and the coefficients into shared memory (once per block).
template <typename T>
__device__ __forceinline__ void stage_tables(const int* instr, int n_instr, const T* cg, int n_cg, Instr* s_instr,
                                             T* s_cg) {
  int* si = reinterpret_cast<int*>(s_instr);
  for (int i = threadIdx.x; i < n_instr * INSTR_FIELDS; i += blockDim.x) si[i] = instr[i];
  for (int i = threadIdx.x; i < n_cg; i += blockDim.x) s_cg[i] = cg[i];
}

// Copies `count` contiguous values from global to shared memory with the whole block.
template <typename T>
__device__ __forceinline__ void block_copy(T* dst, const T* __restrict__ src, int count) {
  for (int i = threadIdx.x; i < count; i += blockDim.x) dst[i] = src[i];
}

template <typename T>
__device__ __forceinline__ void block_fill(T* dst, T value, int count) {
  for (int i = threadIdx.x; i < count; i += blockDim.x) dst[i] = value;
}

inline void check_tables(const at::Tensor& instr, const at::Tensor& cg, at::ScalarType dtype, const at::Device& device) {
  TORCH_CHECK(instr.is_cuda() && instr.device() == device && instr.scalar_type() == at::kInt && instr.dim() == 2 &&
                  instr.size(1) == INSTR_FIELDS && instr.is_contiguous(),
              "batmobile_cuda: instr must be a contiguous int32 [n_instructions, ", INSTR_FIELDS, "] tensor on ", device);
  check_float(cg, "cg", dtype, device);
  TORCH_CHECK(cg.dim() == 1, "batmobile_cuda: cg must be 1-D");
}

}  // namespace batmobile
