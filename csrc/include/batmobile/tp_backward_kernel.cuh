// The backward kernel of the tensor product / fused convolution (instantiated per dtype in
// tp_backward_f32.cu and tp_backward_f64.cu).
//
// Like the forward, one block per receiver node: the node's output-gradient row is read once into
// shared memory, then for each incoming edge the block writes the edge's weight gradient and in2
// gradient directly (a fixed-order block reduction over channels for in2), and the edge's in1
// gradient row [dim1] to a per-edge buffer. For the convolution the caller sums that buffer by
// sender with segment_sum (sender-sorted order): no atomics, no [n_edges, dim_out] tensor, and
// the gathered rows per edge are the sender's [dim1] features rather than the receiver's
// [dim_out] gradient (dim_out is 10x dim1 in MACE-MP-medium). csrc/README.md has the byte counts.
#pragma once

#include "batmobile/tp_launch.h"

namespace batmobile {

template <typename T>
__global__ void __launch_bounds__(256, 1) tp_backward_kernel(
    // inputs
    const T* __restrict__ grad_out,  // [n_nodes, dim_out]
    const T* __restrict__ x1,        // [n_nodes, dim1]
    const T* __restrict__ x2,        // [n_edges, dim2]
    const T* __restrict__ weight,    // [n_edges, weight_numel] or [weight_numel] (weight_stride 0)
    int64_t weight_stride, int64_t weight_numel, Graph graph,
    const int* __restrict__ instr,  // [n_instr, INSTR_FIELDS]
    int n_instr,
    const T* __restrict__ cg,  // [n_cg]
    int n_cg, int dim1, int dim2, int dim_out, int64_t n_nodes,
    // outputs (null when not needed)
    T* __restrict__ grad_x1,  // [n_edges, dim1]
    T* __restrict__ grad_x2,  // [n_edges, dim2]
    T* __restrict__ grad_w,   // [n_edges, weight_numel], or [gridDim.x, weight_numel] zeroed (accumulate_w)
    bool accumulate_w)        // shared weights: each block sums its edges' weight gradients into its own row
{
  extern __shared__ __align__(16) unsigned char smem[];
  const int tid = threadIdx.x, nthreads = blockDim.x;
  T* sg = reinterpret_cast<T*>(smem);                         // [dim_out]
  T* sx1 = sg + dim_out;                                      // [dim1]
  T* sx2 = sx1 + dim1;                                        // [dim2]
  T* sgx1 = grad_x1 ? sx2 + dim2 : nullptr;                   // [dim1]
  T* red = grad_x2 ? sx2 + dim2 + (grad_x1 ? dim1 : 0) : nullptr;  // [dim2, nthreads]
  T* s_cg = sx2 + dim2 + (grad_x1 ? dim1 : 0) + (grad_x2 ? dim2 * nthreads : 0);  // [n_cg]
  Instr* s_instr = reinterpret_cast<Instr*>(s_cg + n_cg);
  stage_tables(instr, n_instr, cg, n_cg, s_instr, s_cg);
  const int lane = tid % 32, warp = tid / 32, nwarps = nthreads / 32;

  for (int64_t node = blockIdx.x; node < n_nodes; node += gridDim.x) {
    // Readers of sg (the previous node's instructions) are behind the last barrier of its edge loop.
    block_copy(sg, grad_out + node * static_cast<int64_t>(dim_out), dim_out);
    const int64_t p_end = graph.end(node);
    for (int64_t p = graph.begin(node); p < p_end; ++p) {
      const int64_t e = graph.edge(p);
      const int64_t s = graph.source(e);
      __syncthreads();  // the previous edge's write-out is done with sx1 / sx2 / sgx1 / red
      block_copy(sx1, x1 + s * dim1, dim1);
      block_copy(sx2, x2 + e * dim2, dim2);
      if (sgx1) block_fill(sgx1, T(0), dim1);
      if (red) block_fill(red, T(0), dim2 * nthreads);
      __syncthreads();
      const T* w = weight + e * weight_stride;
      T* gw = grad_w ? grad_w + (accumulate_w ? static_cast<int64_t>(blockIdx.x) : e) * weight_numel : nullptr;
      for (int i = 0; i < n_instr; ++i) {
        const Instr& ins = s_instr[i];
        dispatch_path(ins.l1, ins.l2, ins.l_out, [&](auto ls) {
          backward_path<T, decltype(ls)>(ins, sx1, sx2, sg, w, s_cg, gw, accumulate_w, sgx1, red, tid,
                                         nthreads);
        });
      }
      __syncthreads();
      if (sgx1) {
        T* row = grad_x1 + e * dim1;
        for (int c = tid; c < dim1; c += nthreads) row[c] = sgx1[c];
      }
      if (red) {  // grad_x2[e, j] = sum over threads t of red[j, t], in a fixed order
        for (int j = warp; j < dim2; j += nwarps) {
          T sum = T(0);
          for (int t = lane; t < nthreads; t += 32) sum += red[j * nthreads + t];
#pragma unroll
          for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
          if (lane == 0) grad_x2[e * dim2 + j] = sum;
        }
      }
    }
  }
}

template <typename T>
size_t tp_backward_smem(const TpArgs<T>& a) {
  const size_t scalars = a.dim_out + a.dim1 + a.dim2 + (a.grad_x1 ? a.dim1 : 0) +
                         (a.grad_x2 ? static_cast<size_t>(a.dim2) * a.threads : 0) + a.n_cg;
  return scalars * sizeof(T) + a.n_instr * sizeof(Instr);
}

template <typename T>
int tp_backward_grid(const TpArgs<T>& a) {
  return persistent_grid(tp_backward_kernel<T>, a.threads, tp_backward_smem(a), a.n_nodes, a.device);
}

template <typename T>
void launch_tp_backward(const TpArgs<T>& a, cudaStream_t stream) {
  const size_t smem = tp_backward_smem(a);
  auto kernel = tp_backward_kernel<T>;
  const int blocks = a.blocks > 0 ? a.blocks : persistent_grid(kernel, a.threads, smem, a.n_nodes, a.device);
  kernel<<<blocks, a.threads, smem, stream>>>(a.grad_out, a.x1, a.x2, a.weight, a.weight_stride, a.weight_numel,
                                              a.graph, a.instr, a.n_instr, a.cg, a.n_cg, a.dim1, a.dim2, a.dim_out,
                                              a.n_nodes, a.grad_x1, a.grad_x2, a.grad_w, a.accumulate_w);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace batmobile
