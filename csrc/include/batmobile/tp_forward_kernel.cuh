// The forward kernel of the tensor product / fused convolution (instantiated in tp_forward_f32.cu and
// tp_forward_f64.cu, one translation unit per dtype so that ninja compiles them in parallel).
//
// One block per receiver node: for each instruction, each thread sums its channel's output slice over
// the node's incoming edges (CSR order) in registers and adds it to the node's output row in shared
// memory, which is written once. Two barriers per node, none per edge; no atomics, a fixed summation
// order: bitwise reproducible. See tp_graph.cuh for the graph walk.
#pragma once

#include "batmobile/tp_launch.h"

namespace batmobile {

template <typename T>
__global__ void __launch_bounds__(256, 1) tp_forward_kernel(
    // inputs
    const T* __restrict__ x1,      // [n_nodes, dim1] (sender features)
    const T* __restrict__ x2,      // [n_edges, dim2]
    const T* __restrict__ weight,  // [n_edges, weight_numel] (weight_stride = weight_numel) or [weight_numel] (0)
    int64_t weight_stride, Graph graph,
    const int* __restrict__ instr,  // [n_instr, INSTR_FIELDS]
    int n_instr,
    const T* __restrict__ cg,  // [n_cg]
    int n_cg, int dim1, int dim2, int dim_out, int64_t n_nodes,
    // outputs
    T* __restrict__ out)  // [n_nodes, dim_out]
{
  extern __shared__ __align__(16) unsigned char smem[];
  T* acc = reinterpret_cast<T*>(smem);  // [dim_out]
  T* s_cg = acc + dim_out;              // [n_cg]
  Instr* s_instr = reinterpret_cast<Instr*>(s_cg + n_cg);
  stage_tables(instr, n_instr, cg, n_cg, s_instr, s_cg);
  const int tid = threadIdx.x, nthreads = blockDim.x;

  for (int64_t node = blockIdx.x; node < n_nodes; node += gridDim.x) {
    block_fill(acc, T(0), dim_out);
    __syncthreads();  // acc zeroed (and, the first time, the tables staged)
    const int64_t p_begin = graph.begin(node), p_end = graph.end(node);
    for (int i = 0; i < n_instr; ++i) {
      const Instr& ins = s_instr[i];
      dispatch_path(ins.l1, ins.l2, ins.l_out, [&](auto ls) {
        forward_path<T, decltype(ls)>(ins, x1, x2, weight, weight_stride, graph, p_begin, p_end, dim1, dim2, s_cg,
                                      acc, tid, nthreads);
      });
    }
    __syncthreads();  // every thread's accumulation is done
    T* row = out + node * static_cast<int64_t>(dim_out);
    for (int c = tid; c < dim_out; c += nthreads) row[c] = acc[c];
    __syncthreads();  // acc is re-zeroed by the next node
  }
}

template <typename T>
void launch_tp_forward(const TpArgs<T>& a, cudaStream_t stream) {
  const size_t smem = (a.dim_out + a.n_cg) * sizeof(T) + a.n_instr * sizeof(Instr);
  auto kernel = tp_forward_kernel<T>;
  const int blocks = persistent_grid(kernel, a.threads, smem, a.n_nodes, a.device);
  kernel<<<blocks, a.threads, smem, stream>>>(a.x1, a.x2, a.weight, a.weight_stride, a.graph, a.instr, a.n_instr,
                                              a.cg, a.n_cg, a.dim1, a.dim2, a.dim_out, a.n_nodes, a.out);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace batmobile
