// Every schema of the extension (namespace torch.ops.batmobile_cuda). The CUDA implementations
// register themselves in their own files (TORCH_LIBRARY_IMPL(batmobile_cuda, CUDA, m)); the public
// ops (torch.ops.batmobile.*, with autograd) stay in Python and call these from batmobile_nn/_cuda.py.
#include <torch/library.h>

#include <ATen/ops/tensor.h>

#include "batmobile/limits.h"
#include "generated/cg.cuh"

namespace batmobile {

// The non-zero pattern (i, j, k) of wigner_3j(l1, l2, l_out) compiled into the kernels: int32 [nnz, 3].
at::Tensor cg_pattern(int64_t l1, int64_t l2, int64_t l_out) {
  std::vector<int> flat;
  bool found = false;
#define BATMOBILE_PATTERN_CASE(a, b, c)                                    \
  if (l1 == a && l2 == b && l_out == c) {                                  \
    found = true;                                                          \
    for (const CgEntry& e : CgPattern<a, b, c>::entry) {                   \
      flat.insert(flat.end(), {e.i, e.j, e.k});                            \
    }                                                                      \
  }
  BATMOBILE_FOR_EACH_CG_PATH(BATMOBILE_PATTERN_CASE)
#undef BATMOBILE_PATTERN_CASE
  TORCH_CHECK(found, "batmobile_cuda: no compiled Clebsch-Gordan pattern for (", l1, ", ", l2, ", ", l_out, ")");
  return at::tensor(flat, at::kInt).reshape({-1, 3});
}

// [l1 and l2 maximum, l_out maximum] of the compiled patterns.
std::vector<int64_t> cg_max_l() { return {CG_MAX_L_IN, CG_MAX_L_OUT}; }

int64_t sh_max_l() { return SH_CUDA_MAX_L; }

int64_t jit_load(const at::Tensor& image, const std::string& name);  // uvu_jit.cu

}  // namespace batmobile

TORCH_LIBRARY(batmobile_cuda, m) {
  m.def("cg_pattern(int l1, int l2, int l_out) -> Tensor", &batmobile::cg_pattern);
  m.def("cg_max_l() -> int[]", &batmobile::cg_max_l);
  m.def("sh_max_l() -> int", &batmobile::sh_max_l);
  // Spherical harmonics (spherical_harmonics.cu); normalization: "integral" | "component" | "norm".
  m.def("sh_forward(Tensor vectors, int[] ls, bool normalize, str normalization) -> Tensor");
  m.def("sh_backward(Tensor grad_sh, Tensor vectors, int[] ls, bool normalize, str normalization) -> Tensor");
  m.def("sh_double_backward(Tensor grad_grad_vectors, Tensor grad_sh, Tensor vectors, int[] ls, bool normalize, "
        "str normalization) -> (Tensor, Tensor)");
  // Tensor product / fused convolution (tp_forward.cu, tp_backward.cu). Without sender/row_ptr the
  // batch row b of in1 pairs with row b of in2 (plain tensor product); with them, row_ptr [n_nodes + 1]
  // is the receiver CSR over positions p whose edge is edge_order[p] (identity if None).
  m.def("tp_forward(Tensor in1, Tensor in2, Tensor weight, Tensor? sender, Tensor? edge_order, Tensor? row_ptr, "
        "Tensor instr, Tensor cg, int dim_out, int threads) -> Tensor");
  // Returns (grad_in1 per edge [n_edges, dim1], grad_in2 [n_edges, dim2], grad_weight [n_edges, weight_numel]);
  // empty where not in needs. Shared weights: the weight gradient comes as partial sums [n_blocks, weight_numel]
  // (one per block of a fixed grid, so reproducible) that the caller sums over dim 0.
  m.def("tp_backward(Tensor grad_out, Tensor in1, Tensor in2, Tensor weight, Tensor? sender, Tensor? edge_order, "
        "Tensor? row_ptr, Tensor instr, Tensor cg, bool[3] needs, int threads) -> (Tensor, Tensor, Tensor)");
  // out[n] = sum over p in row_ptr[n] .. row_ptr[n + 1] of rows[order[p]]  (fixed order, no atomics).
  m.def("segment_sum(Tensor rows, Tensor order, Tensor row_ptr) -> Tensor");
  // Per-problem uvu kernels compiled at run time (uvu_jit.cu, batmobile_nn/_uvu.py): jit_load returns
  // the handle of a kernel in a cubin; the launchers take it with the problem's dims. send[p] is the
  // sender of the edge at CSR position p (order[p], identity if None).
  m.def("jit_load(Tensor image, str name) -> int", &batmobile::jit_load);
  m.def("uvu_forward(int kernel, int threads, Tensor in1, Tensor in2, Tensor weight, Tensor? order, Tensor? send, "
        "Tensor? row_ptr, int dim1, int dim2, int dim_out, int weight_numel, bool zero_out) -> Tensor");
  m.def("uvu_backward(int kernel, int threads, Tensor grad_out, Tensor in1, Tensor in2, Tensor weight, "
        "Tensor? order, Tensor? send, Tensor? row_ptr, int dim1, int dim2, int dim_out, int weight_numel, "
        "bool[3] needs, bool zero_g1) -> (Tensor, Tensor, Tensor)");
  // Any run-time compiled kernel whose parameters are pointers then int64s (batmobile_nn/_jit.py): the
  // tensors' pointers (null for None) then the scalars. It writes into tensors the caller allocated.
  m.def("jit_launch(int kernel, int grid, int threads, Tensor?[] tensors, int[] scalars) -> ()");
}
