// One tensor-product path (instruction) for one edge, forward and backward, specialized on (l1, l2, l_out).
//
// The degrees are template parameters: the per-channel slices x1[u, :], x2[v, :], out[u, :] live in
// register arrays of compile-time size and the Clebsch-Gordan sum runs over the compile-time non-zero
// pattern (csrc/generated/cg.cuh), fully unrolled. The coefficient values come from the plan at run
// time (staged in shared memory), so results follow the plan's coefficients exactly. Channel counts
// are run-time: thread `tid` of the block handles channels tid, tid + nthreads, ...
#pragma once

#include "batmobile/tp_graph.cuh"
#include "generated/cg.cuh"

namespace batmobile {

// y[k] += sum C[i,j,k] a[i] b[j]
template <typename P, typename T>
__device__ __forceinline__ void cg_ab(const T* cg, const T (&a)[P::D1], const T (&b)[P::D2], T (&y)[P::DO]) {
  using C = CgPattern<P::L1, P::L2, P::LO>;
  static_for<C::nnz>([&](auto n) {
    constexpr CgEntry e = C::entry[decltype(n)::value];
    y[e.k] += cg[decltype(n)::value] * (a[e.i] * b[e.j]);
  });
}

// ga[i] += sum C[i,j,k] b[j] g[k]
template <typename P, typename T>
__device__ __forceinline__ void cg_bg(const T* cg, const T (&b)[P::D2], const T (&g)[P::DO], T (&ga)[P::D1]) {
  using C = CgPattern<P::L1, P::L2, P::LO>;
  static_for<C::nnz>([&](auto n) {
    constexpr CgEntry e = C::entry[decltype(n)::value];
    ga[e.i] += cg[decltype(n)::value] * (b[e.j] * g[e.k]);
  });
}

// gb[j] += sum C[i,j,k] a[i] g[k]
template <typename P, typename T>
__device__ __forceinline__ void cg_ag(const T* cg, const T (&a)[P::D1], const T (&g)[P::DO], T (&gb)[P::D2]) {
  using C = CgPattern<P::L1, P::L2, P::LO>;
  static_for<C::nnz>([&](auto n) {
    constexpr CgEntry e = C::entry[decltype(n)::value];
    gb[e.j] += cg[decltype(n)::value] * (a[e.i] * g[e.k]);
  });
}

template <int N, typename T>
__device__ __forceinline__ void load(T (&r)[N], const T* src) {
#pragma unroll
  for (int i = 0; i < N; ++i) r[i] = src[i];
}

template <int N, typename T>
__device__ __forceinline__ void fill(T (&r)[N], T value) {
#pragma unroll
  for (int i = 0; i < N; ++i) r[i] = value;
}

// acc[out] += sum over the node's edges p_begin .. p_end of path(x1[sender], x2[edge], w[edge]), for one
// instruction: the thread's output slice accumulates in registers over the edges (in CSR order), then is
// added once to the node's output row `acc` (shared memory). x1, x2 and the weights are read from global
// memory (the node's rows stay in L1 across the instructions that share them).
template <typename T, typename P>
__device__ __forceinline__ void forward_path(const Instr& ins, const T* __restrict__ x1, const T* __restrict__ x2,
                                             const T* __restrict__ weight, int64_t weight_stride, const Graph& graph,
                                             int64_t p_begin, int64_t p_end, int dim1, int dim2, const T* cg, T* acc,
                                             int tid, int nthreads) {
  const T* c = cg + ins.cg_offset;
  if (ins.mode == MODE_UVU) {
    for (int u = tid; u < ins.mul1; u += nthreads) {
      T y[P::DO];
      fill(y, T(0));
      for (int64_t p = p_begin; p < p_end; ++p) {
        const int64_t e = graph.edge(p);
        T a[P::D1];
        load(a, x1 + graph.source(e) * dim1 + ins.in1_offset + u * P::D1);
        const T* b_row = x2 + e * dim2 + ins.in2_offset;
        const T* w = weight + e * weight_stride;
        for (int v = 0; v < ins.mul2; ++v) {
          T b[P::D2], t[P::DO];
          load(b, b_row + v * P::D2);
          fill(t, T(0));
          cg_ab<P>(c, a, b, t);
          const T wv = ins.weight_offset < 0 ? T(1) : w[ins.weight_offset + u * ins.mul2 + v];
#pragma unroll
          for (int k = 0; k < P::DO; ++k) y[k] += wv * t[k];
        }
      }
      T* o = acc + ins.out_offset + u * P::DO;
#pragma unroll
      for (int k = 0; k < P::DO; ++k) o[k] += y[k];
    }
    return;
  }
  // uvw: thread per output channel w; out[w, k] = sum_{edges, u, v} W[u, v, w] (x1[u] (x) x2[v])_k
  for (int wo = tid; wo < ins.mul_out; wo += nthreads) {
    T y[P::DO];
    fill(y, T(0));
    for (int64_t p = p_begin; p < p_end; ++p) {
      const int64_t e = graph.edge(p);
      const T* a_row = x1 + graph.source(e) * dim1 + ins.in1_offset;
      const T* b_row = x2 + e * dim2 + ins.in2_offset;
      const T* w = weight + e * weight_stride + ins.weight_offset + wo;
      for (int u = 0; u < ins.mul1; ++u) {
        T a[P::D1];
        load(a, a_row + u * P::D1);
        for (int v = 0; v < ins.mul2; ++v) {
          T b[P::D2], t[P::DO];
          load(b, b_row + v * P::D2);
          fill(t, T(0));
          cg_ab<P>(c, a, b, t);
          const T wv = w[(u * ins.mul2 + v) * ins.mul_out];
#pragma unroll
          for (int k = 0; k < P::DO; ++k) y[k] += wv * t[k];
        }
      }
    }
    T* o = acc + ins.out_offset + wo * P::DO;
#pragma unroll
    for (int k = 0; k < P::DO; ++k) o[k] += y[k];
  }
}

// Backward of one path for one edge, given the receiver's output gradient row `sg` (shared memory).
// Optional outputs (nullptr = not needed): `gw` the edge's weight-gradient row (global memory, written;
// added to instead when `accumulate_w`: shared weights, one row per block, always updated by the same thread),
// `sgx1` the edge's in1-gradient row (shared memory, accumulated), `red` the per-thread partial in2
// gradients laid out [dim2][nthreads] (shared memory, accumulated; the caller sums over threads).
template <typename T, typename P>
__device__ __forceinline__ void backward_path(const Instr& ins, const T* sx1, const T* sx2, const T* sg, const T* w,
                                              const T* cg, T* gw, bool accumulate_w, T* sgx1, T* red, int tid,
                                              int nthreads) {
  const T* c = cg + ins.cg_offset;
  const bool weighted = ins.weight_offset >= 0;
  if (ins.mode == MODE_UVU) {
    for (int u = tid; u < ins.mul1; u += nthreads) {
      T a[P::D1], g[P::DO], ga[P::D1];
      load(a, sx1 + ins.in1_offset + u * P::D1);
      load(g, sg + ins.out_offset + u * P::DO);
      fill(ga, T(0));
      for (int v = 0; v < ins.mul2; ++v) {
        T b[P::D2];
        load(b, sx2 + ins.in2_offset + v * P::D2);
        const int wi = ins.weight_offset + u * ins.mul2 + v;
        if (gw != nullptr && weighted) {
          T t[P::DO];
          fill(t, T(0));
          cg_ab<P>(c, a, b, t);
          T dot = T(0);
#pragma unroll
          for (int k = 0; k < P::DO; ++k) dot += t[k] * g[k];
          gw[wi] = accumulate_w ? gw[wi] + dot : dot;
        }
        const T wv = weighted ? w[wi] : T(1);
        if (sgx1 != nullptr) {
          T t[P::D1];
          fill(t, T(0));
          cg_bg<P>(c, b, g, t);
#pragma unroll
          for (int i = 0; i < P::D1; ++i) ga[i] += wv * t[i];
        }
        if (red != nullptr) {
          T t[P::D2];
          fill(t, T(0));
          cg_ag<P>(c, a, g, t);
          T* r = red + (ins.in2_offset + v * P::D2) * nthreads + tid;
#pragma unroll
          for (int j = 0; j < P::D2; ++j) r[j * nthreads] += wv * t[j];
        }
      }
      if (sgx1 != nullptr) {
        T* o = sgx1 + ins.in1_offset + u * P::D1;
#pragma unroll
        for (int i = 0; i < P::D1; ++i) o[i] += ga[i];
      }
    }
    return;
  }
  // uvw. Weight gradient: thread per output channel w.
  if (gw != nullptr) {
    for (int wo = tid; wo < ins.mul_out; wo += nthreads) {
      T g[P::DO];
      load(g, sg + ins.out_offset + wo * P::DO);
      for (int u = 0; u < ins.mul1; ++u) {
        T a[P::D1];
        load(a, sx1 + ins.in1_offset + u * P::D1);
        for (int v = 0; v < ins.mul2; ++v) {
          T b[P::D2], t[P::DO];
          load(b, sx2 + ins.in2_offset + v * P::D2);
          fill(t, T(0));
          cg_ab<P>(c, a, b, t);
          T dot = T(0);
#pragma unroll
          for (int k = 0; k < P::DO; ++k) dot += t[k] * g[k];
          T& slot = gw[ins.weight_offset + (u * ins.mul2 + v) * ins.mul_out + wo];
          slot = accumulate_w ? slot + dot : dot;
        }
      }
    }
  }
  if (sgx1 == nullptr && red == nullptr) return;
  // Input gradients: thread per in1 channel u; h[k] = sum_w W[u, v, w] g[w, k].
  for (int u = tid; u < ins.mul1; u += nthreads) {
    T a[P::D1], ga[P::D1];
    load(a, sx1 + ins.in1_offset + u * P::D1);
    fill(ga, T(0));
    for (int v = 0; v < ins.mul2; ++v) {
      T b[P::D2], h[P::DO];
      load(b, sx2 + ins.in2_offset + v * P::D2);
      fill(h, T(0));
      const T* wr = w + ins.weight_offset + (u * ins.mul2 + v) * ins.mul_out;
      for (int wo = 0; wo < ins.mul_out; ++wo) {
        const T wv = wr[wo];
        const T* g = sg + ins.out_offset + wo * P::DO;
#pragma unroll
        for (int k = 0; k < P::DO; ++k) h[k] += wv * g[k];
      }
      if (sgx1 != nullptr) cg_bg<P>(c, b, h, ga);
      if (red != nullptr) {
        T t[P::D2];
        fill(t, T(0));
        cg_ag<P>(c, a, h, t);
        T* r = red + (ins.in2_offset + v * P::D2) * nthreads + tid;
#pragma unroll
        for (int j = 0; j < P::D2; ++j) r[j * nthreads] += t[j];
      }
    }
    if (sgx1 != nullptr) {
      T* o = sgx1 + ins.in1_offset + u * P::D1;
#pragma unroll
      for (int i = 0; i < P::D1; ++i) o[i] += ga[i];
    }
  }
}

// Calls f(PathLs<l1, l2, l_out>{}) for the run-time degrees of an instruction.
template <typename F>
__device__ __forceinline__ void dispatch_path(int l1, int l2, int l_out, F&& f) {
  switch (l1 * 64 + l2 * 8 + l_out) {
#define BATMOBILE_PATH_CASE(a, b, c) \
  case a * 64 + b * 8 + c:           \
    f(PathLs<a, b, c>{});            \
    break;
    BATMOBILE_FOR_EACH_CG_PATH(BATMOBILE_PATH_CASE)
#undef BATMOBILE_PATH_CASE
    default:
      break;  // unsupported degrees never reach the kernels (batmobile_nn/_cuda.py checks the plan)
  }
}

}  // namespace batmobile
