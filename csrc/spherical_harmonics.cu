// Spherical harmonics: forward, backward and double backward, one thread per vector.
//
// Mirrors batmobile_nn/reference/spherical_harmonics.py: every Y_l^m is a polynomial in the unit
// vector u (csrc/generated/sh.cuh, e3nn's coefficients); values, gradients and Hessians come from the
// same compile-time term list (template on LMAX = max(ls), loops fully unrolled, everything in
// registers). With normalize, u = x / max(|x|, 1e-12) as torch.nn.functional.normalize (e3nn) does.
#include <torch/library.h>

#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>

#include <cmath>
#include <string>

#include "batmobile/common.cuh"
#include "batmobile/limits.h"
#include "generated/sh.cuh"

namespace batmobile {

constexpr int SH_MAX_ENTRIES = 32;  // entries of ls
constexpr double SH_EPS = 1e-12;    // F.normalize's eps

struct ShLayout {
  int n_ls, n_out, normalize;
  int l[SH_MAX_ENTRIES];       // degree of entry i
  int offset[SH_MAX_ENTRIES];  // first column of entry i
  double scale[SH_MAX_L + 1];  // normalization factor of degree l
};

// The unit vector (or the raw vector), 1/r, and whether the projection (I - u u^T) / r applies.
template <typename T>
struct Unit {
  T u[3], inv_r;
  bool projected;
  __device__ __forceinline__ Unit(const T* x, bool normalize) {
    u[0] = x[0], u[1] = x[1], u[2] = x[2], inv_r = T(1), projected = false;
    if (normalize) {
      const T r = sqrt(u[0] * u[0] + u[1] * u[1] + u[2] * u[2]);
      inv_r = T(1) / (r > T(SH_EPS) ? r : T(SH_EPS));
      projected = r > T(SH_EPS);
      u[0] *= inv_r, u[1] *= inv_r, u[2] *= inv_r;
    }
  }
  // J g with J = (I - u u^T) / r where projected, else I / max(r, eps) (normalize) or I.
  __device__ __forceinline__ void project(const T (&g)[3], T (&out)[3]) const {
    const T gu = projected ? g[0] * u[0] + g[1] * u[1] + g[2] * u[2] : T(0);
#pragma unroll
    for (int d = 0; d < 3; ++d) out[d] = (g[d] - gu * u[d]) * inv_r;
  }
};

// Powers p[d][n] = u_d^n for n <= LMAX.
template <int LMAX, typename T>
__device__ __forceinline__ void powers(const T (&u)[3], T (&p)[3][LMAX + 1]) {
#pragma unroll
  for (int d = 0; d < 3; ++d) {
    p[d][0] = T(1);
#pragma unroll
    for (int n = 1; n <= LMAX; ++n) p[d][n] = p[d][n - 1] * u[d];
  }
}

// x^e[0] y^e[1] z^e[2] with compile-time exponents (a negative exponent gives 0).
template <int A, int B, int C, int LMAX, typename T>
__device__ __forceinline__ T monomial(const T (&p)[3][LMAX + 1]) {
  if constexpr (A < 0 || B < 0 || C < 0) {
    return T(0);
  } else {
    return p[0][A] * p[1][B] * p[2][C];
  }
}

// Calls f(term) for every term of degree L, term as a compile-time index into SH_TERMS.
template <int L, typename F>
__device__ __forceinline__ void for_each_term(F&& f) {
  static_for<SH_BEGIN[L + 1] - SH_BEGIN[L]>([&](auto t) {
    f(std::integral_constant<int, SH_BEGIN[L] + decltype(t)::value>{});
  });
}

// G[m] = scale[L] * sum of the grad_sh columns (L, m) of every entry of degree L.
template <int L, typename T>
__device__ __forceinline__ void gather_grad(const ShLayout& layout, const T* grad_row, T (&G)[2 * L + 1]) {
#pragma unroll
  for (int m = 0; m < 2 * L + 1; ++m) G[m] = T(0);
  for (int i = 0; i < layout.n_ls; ++i) {
    if (layout.l[i] != L) continue;
#pragma unroll
    for (int m = 0; m < 2 * L + 1; ++m) G[m] += grad_row[layout.offset[i] + m];
  }
#pragma unroll
  for (int m = 0; m < 2 * L + 1; ++m) G[m] *= T(layout.scale[L]);
}

// Writes Y[m] * scale[L] to the columns of every entry of degree L.
template <int L, typename T>
__device__ __forceinline__ void scatter_values(const ShLayout& layout, const T (&Y)[2 * L + 1], T* row) {
  for (int i = 0; i < layout.n_ls; ++i) {
    if (layout.l[i] != L) continue;
#pragma unroll
    for (int m = 0; m < 2 * L + 1; ++m) row[layout.offset[i] + m] = Y[m] * T(layout.scale[L]);
  }
}

// Whether any entry of ls has degree L (uniform across the block).
__device__ __forceinline__ bool has_degree(const ShLayout& layout, int L) {
  for (int i = 0; i < layout.n_ls; ++i)
    if (layout.l[i] == L) return true;
  return false;
}

// Every requested degree's values of one vector, written to row (a row of out, or of a tile in shared memory).
template <int LMAX, typename T>
__device__ __forceinline__ void sh_row(const T* __restrict__ vector, const ShLayout& layout, T* row) {
  const Unit<T> unit(vector, layout.normalize);
  T p[3][LMAX + 1];
  powers<LMAX>(unit.u, p);
  static_for<LMAX + 1>([&](auto lc) {
    constexpr int L = decltype(lc)::value;
    if (!has_degree(layout, L)) return;
    T Y[2 * L + 1];
#pragma unroll
    for (int m = 0; m < 2 * L + 1; ++m) Y[m] = T(0);
    for_each_term<L>([&](auto t) {
      constexpr ShTerm s = SH_TERMS[decltype(t)::value];
      Y[s.m] += T(s.coef) * monomial<s.a, s.b, s.c, LMAX>(p);
    });
    scatter_values<L>(layout, Y, row);
  });
}

template <int LMAX, typename T>
__global__ void sh_forward_kernel(const T* __restrict__ vectors, int64_t n, ShLayout layout, T* __restrict__ out) {
  const int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (e >= n) return;
  sh_row<LMAX>(vectors + 3 * e, layout, out + e * layout.n_out);
}

// The same values, staged in shared memory so that the stores to out are coalesced: one thread per vector
// writes its n_out values n_out * sizeof(T) bytes apart from its neighbour's (a 32-thread store touches 32
// sectors); the block's tile of rows is copied out contiguously instead. The row stride in shared memory
// is odd, so the threads' writes fall in different banks.
template <int LMAX, typename T>
__global__ void sh_forward_staged_kernel(const T* __restrict__ vectors, int64_t n, ShLayout layout,
                                         T* __restrict__ out) {
  extern __shared__ unsigned char sh_stage[];
  T* tile = reinterpret_cast<T*>(sh_stage);  // [blockDim.x, stride]
  const int stride = layout.n_out | 1;
  const int64_t first = blockIdx.x * static_cast<int64_t>(blockDim.x);
  const int64_t e = first + threadIdx.x;
  if (e < n) sh_row<LMAX>(vectors + 3 * e, layout, tile + threadIdx.x * stride);
  __syncthreads();
  const int rows = static_cast<int>(n - first < blockDim.x ? n - first : blockDim.x);
  const int total = rows * layout.n_out;
  T* dst = out + first * layout.n_out;  // the block's rows are contiguous in out
  for (int j = threadIdx.x; j < total; j += blockDim.x) {
    const int r = j / layout.n_out;
    dst[j] = tile[r * stride + (j - r * layout.n_out)];
  }
}

// Derivatives of the monomial x^a y^b z^c: first (d[3]) and second (h = h00 h11 h22 h01 h02 h12).
template <int A, int B, int C, int LMAX, typename T>
__device__ __forceinline__ void monomial_gradient(const T (&p)[3][LMAX + 1], T (&d)[3]) {
  d[0] = A > 0 ? T(A) * monomial<A - 1, B, C, LMAX>(p) : T(0);
  d[1] = B > 0 ? T(B) * monomial<A, B - 1, C, LMAX>(p) : T(0);
  d[2] = C > 0 ? T(C) * monomial<A, B, C - 1, LMAX>(p) : T(0);
}

template <int A, int B, int C, int LMAX, typename T>
__device__ __forceinline__ void monomial_hessian(const T (&p)[3][LMAX + 1], T (&h)[6]) {
  h[0] = A > 1 ? T(A * (A - 1)) * monomial<A - 2, B, C, LMAX>(p) : T(0);
  h[1] = B > 1 ? T(B * (B - 1)) * monomial<A, B - 2, C, LMAX>(p) : T(0);
  h[2] = C > 1 ? T(C * (C - 1)) * monomial<A, B, C - 2, LMAX>(p) : T(0);
  h[3] = A > 0 && B > 0 ? T(A * B) * monomial<A - 1, B - 1, C, LMAX>(p) : T(0);
  h[4] = A > 0 && C > 0 ? T(A * C) * monomial<A - 1, B, C - 1, LMAX>(p) : T(0);
  h[5] = B > 0 && C > 0 ? T(B * C) * monomial<A, B - 1, C - 1, LMAX>(p) : T(0);
}

template <int LMAX, typename T>
__global__ void sh_backward_kernel(const T* __restrict__ grad_sh, const T* __restrict__ vectors, int64_t n,
                                   ShLayout layout, T* __restrict__ grad_vectors) {
  const int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (e >= n) return;
  const Unit<T> unit(vectors + 3 * e, layout.normalize);
  T p[3][LMAX + 1], dF[3] = {T(0), T(0), T(0)}, out[3];
  powers<LMAX>(unit.u, p);
  static_for<LMAX + 1>([&](auto lc) {  // dF/du = sum_terms G(l, m) coef d(monomial)/du
    constexpr int L = decltype(lc)::value;
    if (!has_degree(layout, L)) return;
    T G[2 * L + 1];
    gather_grad<L>(layout, grad_sh + e * layout.n_out, G);
    for_each_term<L>([&](auto t) {
      constexpr ShTerm s = SH_TERMS[decltype(t)::value];
      T d[3];
      monomial_gradient<s.a, s.b, s.c, LMAX>(p, d);
      const T c = G[s.m] * T(s.coef);
      dF[0] += c * d[0], dF[1] += c * d[1], dF[2] += c * d[2];
    });
  });
  unit.project(dF, out);
#pragma unroll
  for (int d = 0; d < 3; ++d) grad_vectors[3 * e + d] = out[d];
}

template <int LMAX, typename T>
__global__ void sh_double_backward_kernel(const T* __restrict__ grad_grad_vectors, const T* __restrict__ grad_sh,
                                          const T* __restrict__ vectors, int64_t n, ShLayout layout,
                                          T* __restrict__ grad_grad_sh, T* __restrict__ grad_vectors) {
  const int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (e >= n) return;
  const Unit<T> unit(vectors + 3 * e, layout.normalize);
  const T v[3] = {grad_grad_vectors[3 * e], grad_grad_vectors[3 * e + 1], grad_grad_vectors[3 * e + 2]};
  T p[3][LMAX + 1], Jv[3], dF[3] = {T(0), T(0), T(0)}, HJv[3] = {T(0), T(0), T(0)};
  powers<LMAX>(unit.u, p);
  unit.project(v, Jv);
  static_for<LMAX + 1>([&](auto lc) {
    constexpr int L = decltype(lc)::value;
    if (!has_degree(layout, L)) return;
    T G[2 * L + 1], dY[2 * L + 1];  // dY[m] = sum_d dY_m/du_d Jv_d
    gather_grad<L>(layout, grad_sh + e * layout.n_out, G);
#pragma unroll
    for (int m = 0; m < 2 * L + 1; ++m) dY[m] = T(0);
    for_each_term<L>([&](auto t) {
      constexpr ShTerm s = SH_TERMS[decltype(t)::value];
      T d[3], h[6];
      monomial_gradient<s.a, s.b, s.c, LMAX>(p, d);
      monomial_hessian<s.a, s.b, s.c, LMAX>(p, h);
      dY[s.m] += T(s.coef) * (d[0] * Jv[0] + d[1] * Jv[1] + d[2] * Jv[2]);
      const T c = G[s.m] * T(s.coef);
      dF[0] += c * d[0], dF[1] += c * d[1], dF[2] += c * d[2];
      HJv[0] += c * (h[0] * Jv[0] + h[3] * Jv[1] + h[4] * Jv[2]);
      HJv[1] += c * (h[3] * Jv[0] + h[1] * Jv[1] + h[5] * Jv[2]);
      HJv[2] += c * (h[4] * Jv[0] + h[5] * Jv[1] + h[2] * Jv[2]);
    });
    scatter_values<L>(layout, dY, grad_grad_sh + e * layout.n_out);
  });
  T out[3];
  unit.project(HJv, out);
  if (unit.projected) {  // curvature of u(x): sum_i dF_i d2u_i/dx dx applied to v
    const T* u = unit.u;
    const T uv = u[0] * v[0] + u[1] * v[1] + u[2] * v[2];
    const T pv = dF[0] * v[0] + dF[1] * v[1] + dF[2] * v[2];
    const T pu = dF[0] * u[0] + dF[1] * u[1] + dF[2] * u[2];
    const T inv_r2 = unit.inv_r * unit.inv_r;
#pragma unroll
    for (int d = 0; d < 3; ++d) out[d] += (-(dF[d] * uv + u[d] * pv + v[d] * pu) + T(3) * pu * uv * u[d]) * inv_r2;
  }
#pragma unroll
  for (int d = 0; d < 3; ++d) grad_vectors[3 * e + d] = out[d];
}

ShLayout make_layout(c10::IntArrayRef ls, bool normalize, const std::string& normalization) {
  ShLayout layout{};
  TORCH_CHECK(!ls.empty() && ls.size() <= SH_MAX_ENTRIES, "batmobile_cuda: ls needs 1..", SH_MAX_ENTRIES, " entries");
  TORCH_CHECK(normalization == "integral" || normalization == "component" || normalization == "norm",
              "batmobile_cuda: unknown normalization ", normalization);
  layout.n_ls = ls.size();
  layout.normalize = normalize;
  for (size_t i = 0; i < ls.size(); ++i) {
    TORCH_CHECK(ls[i] >= 0 && ls[i] <= SH_CUDA_MAX_L, "batmobile_cuda: degrees up to ", SH_CUDA_MAX_L, " are compiled");
    layout.l[i] = ls[i];
    layout.offset[i] = layout.n_out;
    layout.n_out += 2 * ls[i] + 1;
  }
  for (int l = 0; l <= SH_MAX_L; ++l) {  // as _scale() in batmobile_nn/reference/spherical_harmonics.py
    const double component = std::sqrt(2.0 * l + 1.0);
    layout.scale[l] = normalization == "component" ? component
                      : normalization == "integral" ? component / std::sqrt(4.0 * M_PI) : 1.0;
  }
  return layout;
}

// Calls f(std::integral_constant<int, LMAX>) for LMAX = max(ls).
template <typename F>
void dispatch_lmax(c10::IntArrayRef ls, F&& f) {
  const int64_t lmax = *std::max_element(ls.begin(), ls.end());
  static_for<SH_CUDA_MAX_L + 1>([&](auto lc) {
    if (decltype(lc)::value == lmax) f(lc);
  });
}

constexpr int SH_THREADS = 128;
constexpr size_t SH_STAGE_MAX_BYTES = 48 * 1024;  // shared memory a launch may take without opting in

inline int64_t blocks_for(int64_t n) { return (n + SH_THREADS - 1) / SH_THREADS; }

at::Tensor sh_forward(const at::Tensor& vectors, c10::IntArrayRef ls, bool normalize, c10::string_view normalization) {
  const ShLayout layout = make_layout(ls, normalize, std::string(normalization));
  check_float(vectors, "vectors", vectors.scalar_type(), vectors.device());
  TORCH_CHECK(vectors.dim() == 2 && vectors.size(1) == 3, "batmobile_cuda: vectors must be [n, 3]");
  const int64_t n = vectors.size(0);
  at::Tensor out = at::empty({n, layout.n_out}, vectors.options());
  if (n == 0) return out;
  c10::cuda::CUDAGuard guard(vectors.device());
  BATMOBILE_DISPATCH_FLOAT(vectors.scalar_type(), "sh_forward", [&] {
    // staged stores when the block's tile fits the default 48 KB of shared memory (l <= 3: 8.7 KB in float32)
    const size_t stage_bytes = static_cast<size_t>(SH_THREADS) * (layout.n_out | 1) * sizeof(scalar_t);
    dispatch_lmax(ls, [&](auto lc) {
      if (stage_bytes <= SH_STAGE_MAX_BYTES) {
        sh_forward_staged_kernel<decltype(lc)::value, scalar_t>
            <<<blocks_for(n), SH_THREADS, stage_bytes, c10::cuda::getCurrentCUDAStream()>>>(
                vectors.data_ptr<scalar_t>(), n, layout, out.data_ptr<scalar_t>());
      } else {
        sh_forward_kernel<decltype(lc)::value, scalar_t>
            <<<blocks_for(n), SH_THREADS, 0, c10::cuda::getCurrentCUDAStream()>>>(
                vectors.data_ptr<scalar_t>(), n, layout, out.data_ptr<scalar_t>());
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return out;
}

at::Tensor sh_backward(const at::Tensor& grad_sh, const at::Tensor& vectors, c10::IntArrayRef ls, bool normalize,
                       c10::string_view normalization) {
  const ShLayout layout = make_layout(ls, normalize, std::string(normalization));
  check_float(vectors, "vectors", vectors.scalar_type(), vectors.device());
  check_float(grad_sh, "grad_sh", vectors.scalar_type(), vectors.device());
  const int64_t n = vectors.size(0);
  TORCH_CHECK(vectors.dim() == 2 && vectors.size(1) == 3 && grad_sh.dim() == 2 && grad_sh.size(0) == n &&
                  grad_sh.size(1) == layout.n_out,
              "batmobile_cuda: vectors must be [n, 3] and grad_sh [n, ", layout.n_out, "]");
  at::Tensor grad_vectors = at::empty_like(vectors);
  if (n == 0) return grad_vectors;
  c10::cuda::CUDAGuard guard(vectors.device());
  BATMOBILE_DISPATCH_FLOAT(vectors.scalar_type(), "sh_backward", [&] {
    dispatch_lmax(ls, [&](auto lc) {
      sh_backward_kernel<decltype(lc)::value, scalar_t><<<blocks_for(n), SH_THREADS, 0, c10::cuda::getCurrentCUDAStream()>>>(
          grad_sh.data_ptr<scalar_t>(), vectors.data_ptr<scalar_t>(), n, layout, grad_vectors.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return grad_vectors;
}

std::tuple<at::Tensor, at::Tensor> sh_double_backward(const at::Tensor& grad_grad_vectors, const at::Tensor& grad_sh,
                                                      const at::Tensor& vectors, c10::IntArrayRef ls, bool normalize,
                                                      c10::string_view normalization) {
  const ShLayout layout = make_layout(ls, normalize, std::string(normalization));
  check_float(vectors, "vectors", vectors.scalar_type(), vectors.device());
  check_float(grad_sh, "grad_sh", vectors.scalar_type(), vectors.device());
  check_float(grad_grad_vectors, "grad_grad_vectors", vectors.scalar_type(), vectors.device());
  const int64_t n = vectors.size(0);
  TORCH_CHECK(vectors.dim() == 2 && vectors.size(1) == 3 && grad_sh.dim() == 2 && grad_sh.size(0) == n &&
                  grad_sh.size(1) == layout.n_out && grad_grad_vectors.sizes() == vectors.sizes(),
              "batmobile_cuda: vectors and grad_grad_vectors must be [n, 3] and grad_sh [n, ", layout.n_out, "]");
  at::Tensor grad_grad_sh = at::empty_like(grad_sh);
  at::Tensor grad_vectors = at::empty_like(vectors);
  if (n == 0) return {grad_grad_sh, grad_vectors};
  c10::cuda::CUDAGuard guard(vectors.device());
  BATMOBILE_DISPATCH_FLOAT(vectors.scalar_type(), "sh_double_backward", [&] {
    dispatch_lmax(ls, [&](auto lc) {
      sh_double_backward_kernel<decltype(lc)::value, scalar_t>
          <<<blocks_for(n), SH_THREADS, 0, c10::cuda::getCurrentCUDAStream()>>>(
              grad_grad_vectors.data_ptr<scalar_t>(), grad_sh.data_ptr<scalar_t>(), vectors.data_ptr<scalar_t>(), n,
              layout, grad_grad_sh.data_ptr<scalar_t>(), grad_vectors.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {grad_grad_sh, grad_vectors};
}

TORCH_LIBRARY_IMPL(batmobile_cuda, CUDA, m) {
  m.impl("sh_forward", &sh_forward);
  m.impl("sh_backward", &sh_backward);
  m.impl("sh_double_backward", &sh_double_backward);
}

}  // namespace batmobile
