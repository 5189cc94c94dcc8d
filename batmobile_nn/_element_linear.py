"""CUDA ``element_linear`` / ``element_outer`` (MACE's skip connection): small kernels compiled with NVRTC.

The sizes ``mul_in``, ``mul_out`` and ``d`` are compile-time constants of each source (a few sources per
model; compiled once, cached on disk by ``_jit``).

- forward: one block per node (grid-stride), its row of ``x`` in shared memory, one thread per output
  channel reading its element's weight column (coalesced across threads; the weights of all elements,
  5.8 MB at MACE-MP-medium in float32, stay in L2).
- weight gradient: nodes sorted by element and cut into chunks of at most ``CHUNK`` nodes of one
  element (``_sc._chunks``, no host synchronization); one block per chunk and 32 x 32 tile of
  ``(u, w)`` writes the chunk's partial sum, then the chunks of each element are summed in order, so
  the result is the same bit for bit run to run (no atomics).
"""

import struct

import torch
from torch import Tensor

from . import _jit, _sc, _sc_codegen

THREADS = 128
TILE = 32
CHUNK = 64  # nodes per weight-gradient chunk: partial rows [n / CHUNK + E, mul_in, mul_out]
_handles = {}  # (kernel name, ctype, sizes, device) -> handle


def _header(ctype: str, **sizes: int) -> str:
    return "\n".join([f"typedef {ctype} T;", "typedef long long i64;"] +
                     [f"#define {name} {value}" for name, value in sizes.items()]) + "\n"


def _linear_source(ctype: str, mul_in: int, mul_out: int, d: int) -> str:
    return _header(ctype, MUL_IN=mul_in, MUL_OUT=mul_out, D=d) + f"""
extern "C" __global__ void __launch_bounds__({THREADS}) bm_el_fwd(const T* __restrict__ x,
    const i64* __restrict__ element, const T* __restrict__ weight, T* __restrict__ out, i64 n, i64 alpha_bits) {{
  __shared__ T xs[MUL_IN * D];
  const T alpha = (T)__longlong_as_double(alpha_bits);
  for (i64 node = blockIdx.x; node < n; node += gridDim.x) {{
    __syncthreads();  // the previous node's reads of xs are done
    for (int j = threadIdx.x; j < MUL_IN * D; j += blockDim.x) xs[j] = x[node * (MUL_IN * D) + j];
    __syncthreads();
    const T* w = weight + element[node] * (i64)(MUL_IN * MUL_OUT);
    for (int c = threadIdx.x; c < MUL_OUT; c += blockDim.x) {{
      T acc[D];
      #pragma unroll
      for (int m = 0; m < D; ++m) acc[m] = T(0);
      for (int u = 0; u < MUL_IN; ++u) {{
        const T wu = w[u * MUL_OUT + c];
        #pragma unroll
        for (int m = 0; m < D; ++m) acc[m] += wu * xs[u * D + m];
      }}
      #pragma unroll
      for (int m = 0; m < D; ++m) out[(node * MUL_OUT + c) * D + m] = alpha * acc[m];
    }}
  }}
}}
"""


def _outer_source(ctype: str, mul_in: int, mul_out: int, d: int) -> str:
    per_thread = TILE * TILE // THREADS
    return _header(ctype, MUL_IN=mul_in, MUL_OUT=mul_out, D=d, TILE=TILE, PER=per_thread) + f"""
// partial[q, u, w] = alpha * sum over the nodes of chunk q and m of x[node, u, m] * y[node, w, m]
extern "C" __global__ void __launch_bounds__({THREADS}) bm_el_outer(const T* __restrict__ x,
    const T* __restrict__ y, const i64* __restrict__ perm, const i64* __restrict__ start,
    const i64* __restrict__ end, T* __restrict__ partial, i64 n_chunks, i64 alpha_bits) {{
  __shared__ T xs[TILE * D], ys[TILE * D];
  const T alpha = (T)__longlong_as_double(alpha_bits);
  const int tiles_u = (MUL_IN + TILE - 1) / TILE, tiles_w = (MUL_OUT + TILE - 1) / TILE;
  const int w_local = threadIdx.x % TILE, u_first = threadIdx.x / TILE;  // u_local = u_first + k * (THREADS / TILE)
  for (i64 b = blockIdx.x; b < n_chunks * tiles_u * tiles_w; b += gridDim.x) {{
    const i64 q = b / (tiles_u * tiles_w);
    const int tile = (int)(b % (tiles_u * tiles_w)), u0 = (tile / tiles_w) * TILE, w0 = (tile % tiles_w) * TILE;
    T acc[PER];
    #pragma unroll
    for (int k = 0; k < PER; ++k) acc[k] = T(0);
    for (i64 s = start[q]; s < end[q]; ++s) {{
      const i64 node = perm[s];
      __syncthreads();
      for (int j = threadIdx.x; j < TILE * D; j += blockDim.x) {{
        const int r = j / D, m = j - r * D;
        xs[j] = u0 + r < MUL_IN ? x[(node * MUL_IN + u0 + r) * D + m] : T(0);
        ys[j] = w0 + r < MUL_OUT ? y[(node * MUL_OUT + w0 + r) * D + m] : T(0);
      }}
      __syncthreads();
      #pragma unroll
      for (int k = 0; k < PER; ++k) {{
        const int u_local = u_first + k * ({THREADS} / TILE);
        #pragma unroll
        for (int m = 0; m < D; ++m) acc[k] += xs[u_local * D + m] * ys[w_local * D + m];
      }}
    }}
    #pragma unroll
    for (int k = 0; k < PER; ++k) {{
      const int u = u0 + u_first + k * ({THREADS} / TILE), w = w0 + w_local;
      if (u < MUL_IN && w < MUL_OUT) partial[(q * MUL_IN + u) * MUL_OUT + w] = alpha * acc[k];
    }}
    __syncthreads();  // xs and ys are rewritten for the next tile
  }}
}}
"""


def _handle(name: str, ctype: str, sizes: tuple, device: torch.device) -> int:
    key = (name, ctype, sizes, device)
    handle = _handles.get(key)
    if handle is None:
        if name == "bm_el_fwd":
            source = _linear_source(ctype, *sizes)
        elif name == "bm_el_outer":
            source = _outer_source(ctype, *sizes)
        else:
            source = _sc_codegen.chunk_sum_source(ctype)
        handle = _handles[key] = _jit.kernel(source, name, device)
    return handle


def _ctype(t: Tensor) -> str:
    return "float" if t.dtype == torch.float32 else "double"


def _bits(alpha: float) -> int:
    """``alpha`` as the int64 with its float64 bits (``jit_launch`` passes int64 scalars only)."""
    return struct.unpack("<q", struct.pack("<d", float(alpha)))[0]


def element_linear(x: Tensor, element: Tensor, weight: Tensor, alpha: float) -> Tensor:
    n, mul_in, d = x.shape
    mul_out = weight.shape[2]
    out = x.new_empty(n, mul_out, d)  # [n, mul_out, d]
    if n and mul_out:
        handle = _handle("bm_el_fwd", _ctype(x), (mul_in, mul_out, d), x.device)
        _jit.launch(handle, min(n, _jit.MAX_GRID), THREADS,
                    [x.contiguous(), element.long().contiguous(), weight.contiguous(), out], [n, _bits(alpha)])
    return out


def element_outer(x: Tensor, y: Tensor, element: Tensor, n_elements: int, alpha: float) -> Tensor:
    n, mul_in, d = x.shape
    mul_out = y.shape[1]
    if n == 0 or mul_in == 0 or mul_out == 0:
        return x.new_zeros(n_elements, mul_in, mul_out)
    perm, start, end, chunk_ptr = _sc._chunks(element.long().contiguous(), n_elements, CHUNK)
    n_chunks = start.shape[0]
    partial = x.new_empty(n_chunks, mul_in, mul_out)  # [M, mul_in, mul_out]
    tiles = ((mul_in + TILE - 1) // TILE) * ((mul_out + TILE - 1) // TILE)
    _jit.launch(_handle("bm_el_outer", _ctype(x), (mul_in, mul_out, d), x.device),
                min(n_chunks * tiles, _jit.MAX_GRID), THREADS,
                [x.contiguous(), y.contiguous(), perm, start, end, partial], [n_chunks, _bits(alpha)])
    out = x.new_empty(n_elements, mul_in, mul_out)  # [E, mul_in, mul_out]
    row = mul_in * mul_out
    _jit.launch(_handle("bm_sc_chunk_sum", _ctype(x), (), x.device), _jit.grid_for(n_elements * row, _sc.THREADS),
                _sc.THREADS, [partial, chunk_ptr, out], [n_elements, row])
    return out


KERNEL_NAMES = ("element_linear", "element_outer")
