// Launchers of the tensor-product kernels, one explicit instantiation per dtype (tp_*_f32.cu, tp_*_f64.cu).
#pragma once

#include "batmobile/tp_paths.cuh"

namespace batmobile {

// Everything a tensor-product kernel launch needs; null output pointers mean "not needed".
template <typename T>
struct TpArgs {
  const T* grad_out;  // [n_nodes, dim_out] (backward)
  const T* x1;        // [n_nodes, dim1]
  const T* x2;        // [n_edges, dim2]
  const T* weight;    // [n_edges, weight_numel] or [weight_numel] (weight_stride 0)
  int64_t weight_stride, weight_numel;
  Graph graph;
  const int* instr;  // [n_instr, INSTR_FIELDS]
  int n_instr;
  const T* cg;  // [n_cg]
  int n_cg, dim1, dim2, dim_out;
  int64_t n_nodes;
  T* out;      // [n_nodes, dim_out] (forward)
  T* grad_x1;  // [n_edges, dim1] (backward)
  T* grad_x2;  // [n_edges, dim2] (backward)
  T* grad_w;   // [n_edges, weight_numel], or [blocks, weight_numel] zeroed when accumulate_w (backward)
  bool accumulate_w;  // shared weights: per-block partial sums of the weight gradient
  int threads, device;
  int blocks;  // grid size (0: the launcher picks it)
};

template <typename T>
void launch_tp_forward(const TpArgs<T>& args, cudaStream_t stream);

template <typename T>
void launch_tp_backward(const TpArgs<T>& args, cudaStream_t stream);

// The backward's grid size for `args` (fixed for a device and problem: partial sums stay reproducible).
template <typename T>
int tp_backward_grid(const TpArgs<T>& args);

}  // namespace batmobile
