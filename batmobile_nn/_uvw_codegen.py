"""CUDA source of the per-problem uvw kernels: tensor products whose paths all mix channels (``uvw``) with
weights shared by every sample, as the Batmobile seed's ``tensor_product`` (34 paths on C x (0e+1e+2e+3e)).

A path ``(l1, l2, l_out)`` computes ``out[e, w, k] += sum_u W[u, w] t[e, u, k]`` with
``t[e, u, k] = sum_{i, j} cg[i, j, k] x1[e, u, i] x2[e, j]``: a few multiply-adds per channel for ``t``, then a
``C_in x C_out`` matrix product per sample and ``k``, which is where the work is. The generic kernel recomputes
``t`` once per output channel (32 times at C = 32) and leaves threads idle; here ``t`` is computed once per
(sample, channel) into shared memory and the matrix product runs from there:

* forward (``bm_uvw_fwd``): a block takes ``TE`` samples; per path its threads write ``t`` of the tile
  (``[TE, d_out, C_in]``, double-buffered: one barrier per path), then thread ``(w, group)`` adds
  ``W[u, w] t[e, u, k]`` over ``u`` into registers that hold every output of its channel for ``EPT``
  samples. Each output is written once, no atomics.
* backward (``bm_uvw_bwd``, in1 and in2 gradients): the same tiles of ``grad_out``; thread ``(u, group)``
  forms ``gt[e, u, k] = sum_w W[u, w] grad_out[e, w, k]`` (the weights transposed per path by the launcher,
  so the loads are coalesced) and contracts it with the Clebsch-Gordan terms into its registers: the in1
  gradient of its channel, and its channel's share of the in2 gradient, summed over channels at the end
  with warp shuffles (and shared memory across warps) in a fixed order.
* weight gradient (``bm_uvw_wgrad``): block ``(path, slice)`` sums ``t[e, u, k] grad_out[e, w, k]`` over its
  slice of samples (thread: a 16 x 16 grid of ``(u, w)`` tiles); the launcher adds the slices in order.

The coefficients, offsets, degrees and channel counts are compile-time constants (NVRTC compiles each
problem once; ``_uvw.py``). This module writes the forward; ``_uvw_bwd_codegen`` the two backward kernels. The
double backward is composed of these by ``ops/_trilinear.py``.
"""

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

from .ops import _plan

THREADS = 256
SMEM_LIMIT = 46 * 1024  # static shared memory per block (48 KB), with room for the reduction buffer
MAX_ACC = 64  # output values a thread keeps in registers (EPT x per-channel outputs)
# samples per thread group in the forward and backward tiles (fewer where shared memory or registers run out)
SAMPLES_PER_GROUP = {"float": 2, "double": 1}
# __launch_bounds__'s blocks per multiprocessor (caps registers), per dtype and kernel. The float32 forward at 2
# (128 registers, no spills) ran 1.4x faster on an H200 (run 24: seed C = 32 0.86 -> 0.57 ms, C = 64 15.4 ->
# 10.9 ms); the backward kernels were slower at 2. float64 keeps 1: at 2 ptxas spills (not measured).
MIN_BLOCKS = {"float": {"fwd": 2, "bwd": 1, "wgrad": 1}, "double": {"fwd": 1, "bwd": 1, "wgrad": 1}}
# output channels per thread in the forward: each shared-memory load of t then feeds that many columns' products
# (more than 1 pads each sample's rows of t by 16 bytes, so that the groups a warp then spans use other banks)
COLUMNS_PER_THREAD = {"float": 1, "double": 1}


def _columns(spec: "UvwSpec", ctype: str) -> Tuple[int, int]:
    """The forward's ``(columns per thread, padding of a sample's t rows in elements)``."""
    cpt, size = COLUMNS_PER_THREAD[ctype], 4 if ctype == "float" else 8
    if cpt <= 1 or spec.c_out % cpt or THREADS % (spec.c_out // cpt):
        return 1, 0
    pad = 16 // size
    if 2 * (THREADS // (spec.c_out // cpt)) * (spec.max_d_out * spec.c_in + pad) * size > SMEM_LIMIT:
        return 1, 0  # the tile of one sample per group would not fit: one column per thread
    return cpt, pad


@dataclass(frozen=True)
class UvwPath:
    off1: int  # offset of the in1 block in a row; channel u's values at off1 + u * d1 + i
    d1: int
    slot1: int  # first of this block's values in a thread's compact in1 registers
    off2: int
    d2: int
    off_out: int
    d_out: int
    slot_out: int
    weight_offset: int  # W[u, w] at weight_offset + u * c_out + w
    terms: Tuple[Tuple[int, int, int, float], ...]  # non-zero (i, j, k, coefficient with path normalization)


@dataclass(frozen=True)
class UvwSpec:
    c_in: int
    c_out: int
    dims: Tuple[int, int, int, int]  # dim1, dim2, dim_out, weight_numel
    paths: Tuple[UvwPath, ...]
    n_slots1: int  # in1 values per channel (the distinct in1 blocks the paths read)
    n_slots_out: int  # output values per channel
    in1_covered: bool  # whether the paths' in1 blocks fill the whole in1 row (else its gradient starts at zero)
    max_d_out: int


def uvw_spec(plan: Sequence[int], cg: Sequence[float], per_sample_weights: bool) -> Tuple[Optional[UvwSpec], str]:
    """The spec when these kernels serve the plan, else ``(None, why not)``."""
    if per_sample_weights:
        return None, "per-sample weights"
    instructions = list(_plan.unpack(plan))
    if not instructions:
        return None, "no instructions"
    dim1, dim2, dim_out, weight_numel = _plan.dims(plan)
    c_in, c_out = instructions[0]["mul1"], instructions[0]["mul_out"]
    for ins in instructions:
        if ins["mode"] != _plan.MODES["uvw"] or ins["weight_offset"] == _plan.NO_WEIGHT or ins["mul2"] != 1:
            return None, "not all paths uvw with weights and in2 of multiplicity 1"
        if ins["mul1"] != c_in or ins["mul_out"] != c_out:
            return None, "channel counts differ between paths"
    if c_in % 32 or c_out % 32 or THREADS % c_in or THREADS % c_out:
        return None, f"channels {c_in} -> {c_out} (these kernels take 32, 64, 128 or 256)"
    blocks1 = sorted({(ins["in1_offset"], 2 * ins["l1"] + 1) for ins in instructions})
    blocks_out = sorted({(ins["out_offset"], 2 * ins["l_out"] + 1) for ins in instructions})
    if sum(d for _, d in blocks_out) * c_out != dim_out:
        return None, "output blocks the paths do not write"
    slot1 = {off: sum(d for _, d in blocks1[:n]) for n, (off, _) in enumerate(blocks1)}
    slot_out = {off: sum(d for _, d in blocks_out[:n]) for n, (off, _) in enumerate(blocks_out)}
    paths = []
    for ins in instructions:
        d1, d2, d_out = 2 * ins["l1"] + 1, 2 * ins["l2"] + 1, 2 * ins["l_out"] + 1
        block = cg[ins["cg_offset"]:ins["cg_offset"] + d1 * d2 * d_out]
        terms = tuple((i, j, k, float(block[(i * d2 + j) * d_out + k]))
                      for i in range(d1) for j in range(d2) for k in range(d_out)
                      if block[(i * d2 + j) * d_out + k] != 0.0)
        paths.append(UvwPath(ins["in1_offset"], d1, slot1[ins["in1_offset"]], ins["in2_offset"], d2,
                             ins["out_offset"], d_out, slot_out[ins["out_offset"]], ins["weight_offset"], terms))
    n_slots1 = sum(d for _, d in blocks1)
    spec = UvwSpec(c_in, c_out, (dim1, dim2, dim_out, weight_numel), tuple(paths), n_slots1,
                   dim_out // c_out, n_slots1 * c_in == dim1, max(p.d_out for p in paths))
    if spec.n_slots_out > MAX_ACC or n_slots1 + dim2 > MAX_ACC:
        return None, "too many values per channel for registers"
    return spec, ""


def _lit(value: float) -> str:
    return f"T({value!r})"


def _header(ctype: str) -> List[str]:
    return [f"typedef {ctype} T;"]


def tile_edges(spec: UvwSpec, ctype: str, kind: str) -> int:
    """Samples per block tile: ``EPT`` per thread group, as many as registers and shared memory allow."""
    size = 4 if ctype == "float" else 8
    if kind == "wgrad":
        tile = 32
        while tile > 1 and tile * spec.max_d_out * (spec.c_in + spec.c_out) * size > SMEM_LIMIT:
            tile //= 2
        return tile
    cpt, pad = _columns(spec, ctype) if kind == "fwd" else (1, 0)
    groups = THREADS // (spec.c_out // cpt if kind == "fwd" else spec.c_in)
    channels = spec.c_in if kind == "fwd" else spec.c_out  # the shared tile's channel count
    per_thread = spec.n_slots_out * cpt if kind == "fwd" else 2 * (spec.n_slots1 + spec.dims[1])
    ept = SAMPLES_PER_GROUP[ctype] if per_thread * SAMPLES_PER_GROUP[ctype] <= 2 * MAX_ACC else 1
    while ept > 1 and 2 * groups * ept * (spec.max_d_out * channels + pad) * size > SMEM_LIMIT:
        ept -= 1
    return groups * ept


def fits(spec: UvwSpec, ctype: str) -> bool:
    """Whether every kernel's shared memory fits with one sample per thread group."""
    size = 4 if ctype == "float" else 8
    cpt, pad = _columns(spec, ctype)
    fwd = 2 * (THREADS // (spec.c_out // cpt)) * (spec.max_d_out * spec.c_in + pad) * size
    bwd = 2 * (THREADS // spec.c_in) * spec.max_d_out * spec.c_out * size
    return max(fwd, bwd) <= SMEM_LIMIT and tile_edges(spec, ctype, "wgrad") >= 1


def _t_products(path: UvwPath, dim1: int, dim2: int, store: str) -> List[str]:
    """Code computing ``t[k]`` of one (sample ``e``, channel ``u``) pair of ``path`` and storing it with
    ``store.format(k=k, value=...)``; zero for samples past the end."""
    lines = [f"T a[{path.d1}], b[{path.d2}];",
             "if (e < n_edges) {",
             f"  const T* r1 = x1 + e * {dim1}LL + {path.off1} + u * {path.d1};",
             f"  const T* r2 = x2 + e * {dim2}LL + {path.off2};"]
    lines += [f"  a[{i}] = r1[{i}];" for i in range(path.d1)] + [f"  b[{j}] = r2[{j}];" for j in range(path.d2)]
    lines += ["} else {"] + [f"  a[{i}] = T(0);" for i in range(path.d1)]
    lines += [f"  b[{j}] = T(0);" for j in range(path.d2)] + ["}"]
    for k in range(path.d_out):
        terms = [f"{_lit(c)} * b[{j}] * a[{i}]" for i, j, kk, c in path.terms if kk == k]
        lines.append(store.format(k=k, value=" + ".join(terms) if terms else "T(0)"))
    return lines


def _t_tile(path: UvwPath, spec: UvwSpec, tile: int, target: str, pad: int = 0) -> List[str]:
    """Loop over the tile's (sample, channel) pairs writing ``t`` of ``path`` to ``target[el, k, u]`` (a sample's
    rows ``pad`` elements further apart than ``d_out * c_in`` when ``pad``)."""
    d, c_in = path.d_out, spec.c_in
    lines = [f"      for (int idx = tid; idx < {tile * c_in}; idx += {THREADS}) {{",
             f"        const int el = idx / {c_in}, u = idx % {c_in};",
             "        const long long e = e0 + el;"]
    index = (f"el * {d * c_in + pad} + {{k}} * {c_in} + u" if pad else f"(el * {d} + {{k}}) * {c_in} + u")
    lines += ["        " + s for s in _t_products(path, spec.dims[0], spec.dims[1],
                                                 f"{target}[{index}] = {{value}};")]
    return lines + ["      }"]


def forward_source(spec: UvwSpec, ctype: str) -> str:
    dim_out = spec.dims[2]
    tile = tile_edges(spec, ctype, "fwd")
    cpt, pad = _columns(spec, ctype)
    lanes = spec.c_out // cpt  # threads per sample group; thread col has the channels col + j * lanes, j < cpt
    groups = THREADS // lanes
    ept, c_in, c_out, slots = tile // groups, spec.c_in, spec.c_out, spec.n_slots_out
    lines = _header(ctype) + [
        f'extern "C" __global__ void __launch_bounds__({THREADS}, {MIN_BLOCKS[ctype]["fwd"]}) bm_uvw_fwd(',
        "    const T* __restrict__ x1, const T* __restrict__ x2, const T* __restrict__ w, T* __restrict__ out,",
        "    long long n_edges) {",
        f"  __shared__ __align__(16) T s_t[2][{tile * (spec.max_d_out * c_in + pad)}];  // per path: t [{tile}, d_out, {c_in}]",
        f"  const int tid = threadIdx.x, col = tid % {lanes}, group = tid / {lanes};",
        f"  const long long n_tiles = (n_edges + {tile - 1}) / {tile};",
        "  for (long long tile = blockIdx.x; tile < n_tiles; tile += gridDim.x) {",
        f"    const long long e0 = tile * {tile};",
        f"    T acc[{ept}][{slots * cpt}];  // [samples of this thread, outputs of channel col"
        + (f" and the next {cpt - 1} ({lanes} apart)]" if cpt > 1 else "]"),
        f"    for (int q = 0; q < {ept}; ++q)",
        f"      for (int s = 0; s < {slots * cpt}; ++s) acc[q][s] = T(0);"]
    for p, path in enumerate(spec.paths):
        d = path.d_out
        lines += [f"    {{  // path {p}: in1 block at {path.off1} (d {path.d1}) x in2 at {path.off2} (d {path.d2}) "
                  f"-> out at {path.off_out} (d {d})",
                  f"      T* st = s_t[{p % 2}];"]
        lines += _t_tile(path, spec, tile, "st", pad)
        wv = [f"wv{j}" if j else "wv" for j in range(cpt)]  # W[u, col + j * lanes] for 4 u's
        lines += ["      __syncthreads();",
                  f"      const T* wp = w + {path.weight_offset} + col;",
                  "#pragma unroll 2",
                  f"      for (int u4 = 0; u4 < {c_in // 4}; ++u4) {{",
                  "        T " + ", ".join(f"{v}[4]" for v in wv) + ";"]
        lines += [f"        for (int r = 0; r < 4; ++r) {v}[r] = wp[(u4 * 4 + r) * {c_out}{f' + {j * lanes}' if j else ''}];"
                  for j, v in enumerate(wv)]
        lines += [f"        for (int q = 0; q < {ept}; ++q) {{",
                  f"          const T* tq = st + (group * {ept} + q) * {d * c_in + pad} + u4 * 4;",
                  f"          for (int k = 0; k < {d}; ++k) {{",
                  f"            const T* tk = tq + k * {c_in};"]
        lines += [f"            acc[q][{j * slots + path.slot_out} + k] += {v}[0] * tk[0] + {v}[1] * tk[1] + {v}[2] * tk[2] + {v}[3] * tk[3];"
                  for j, v in enumerate(wv)]
        lines += ["          }",
                  "        }",
                  "      }",
                  "    }"]
    if len(spec.paths) % 2:  # the next tile's first path writes the buffer the last path read
        lines.append("    __syncthreads();")
    lines += [f"    for (int q = 0; q < {ept}; ++q) {{",
              f"      const long long e = e0 + group * {ept} + q;",
              "      if (e < n_edges) {",
              f"        T* o = out + e * {dim_out}LL;"]
    for off, d, slot in sorted({(p.off_out, p.d_out, p.slot_out) for p in spec.paths}):
        lines += [f"        for (int k = 0; k < {d}; ++k) o[{off} + {f'(col + {j * lanes})' if j else 'col'} * {d} + k] = "
                  f"acc[q][{j * slots + slot} + k];" for j in range(cpt)]
    lines += ["      }", "    }", "  }", "}"]
    return "\n".join(lines) + "\n"
