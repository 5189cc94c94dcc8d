"""CUDA source of the per-problem uvu kernels: every offset, degree and coefficient a literal.

MACE's convolution is a channelwise ("uvu") product whose instructions all share one multiplicity ``M``
(``128x0e+128x1o`` (x) harmonics): one thread per channel ``u`` then holds the whole output row of its
channel in registers while it walks the receiver's edges, and reads each edge's weights
``w[e, offset + u]`` coalesced across the block. With the instructions known when the source is made,
the Clebsch-Gordan sums are straight-line code over the non-zero coefficients of the plan (e3nn's
values, normalization included, as literals), so no shared memory, table or switch remains. The source
is compiled at run time by NVRTC (``_uvu.py``); the generic kernels in ``csrc/`` serve other problems.

Kernel signatures (launched by ``csrc/uvu_jit.cu``; pointers may be null where noted):
``bm_uvu_fwd(x1, x2, w, order?, send?, row_ptr?, out, n_nodes)`` and
``bm_uvu_bwd(grad_out, x1, x2, w, order?, send?, row_ptr?, g1_edge?, g2_part?, gw?, n_nodes)`` (its
``g1_atomic`` variant, launched with ``jit_launch``, takes ``g1 [n_nodes, DIM1]`` in place of ``g1_edge``).
"""

import functools
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from .ops import _plan


@dataclass(frozen=True)
class UvuSpec:
    """A plan the uvu kernels run: every instruction uvu with mul2 = 1 and the same mul1 = mul_out = M."""

    mul: int
    dims: Tuple[int, int, int, int]  # dim1, dim2, dim_out, weight_numel
    instructions: Tuple[Tuple[int, ...], ...]  # (in1_offset, l1, in2_offset, l2, out_offset, l_out, weight_offset)
    terms: Tuple[Tuple[Tuple[int, int, int, float], ...], ...]  # per instruction: (i, j, k, coefficient) non-zeros
    threads: int

    @property
    def warps(self) -> int:
        return self.threads // 32

    @functools.cached_property
    def out_covered(self) -> bool:
        """Whether the instructions write every column of the output (else the output starts at zero).
        Cached: the launches read it on every call (a set of dim_out columns: ~0.3 ms of host time for
        MACE-MP-medium if recomputed)."""
        return _covers(self.dims[2], [(ins[4], self.mul * (2 * ins[5] + 1)) for ins in self.instructions])

    @functools.cached_property
    def in1_covered(self) -> bool:
        return _covers(self.dims[0], [(ins[0], self.mul * (2 * ins[1] + 1)) for ins in self.instructions])


def _covers(dim: int, segments: Sequence[Tuple[int, int]]) -> bool:
    covered = set()
    for start, size in segments:
        covered.update(range(start, start + size))
    return len(covered) == dim


MAX_MUL = 512
# register budget: output values a thread holds (outputs_per_thread; MACE-MP-medium: 40; MACE-MP-large's second
# convolution, 128x0e+128x1o+128x2e in: 71)
# by itemsize (float32, float64). MACE-MP-large's 71 outputs in float64 (csrc/README run 12, H200, 171,704 edges):
# uvu forward 2.03 ms, forward + backward 6.77 ms against the generic kernels' 8.21 / 26.8 ms
MAX_OUT_PER_THREAD = {4: 128, 8: 128}
# ... and for the fused double backward (_uvu_dbl_codegen), which holds more per thread: a problem above it keeps the
# forward and backward kernels and composes its double backward of them (_cuda.conv_double_backward). With nvcc
# here (sm_90), MACE-MP-large's 71 outputs in float64: forward 254 registers, no spills; backward 72 bytes of spills;
# fused double backward 19.5 KB (composed: 37.1 ms against the generic kernels' 127 ms). In float32 the fused one
# (1,352 bytes of spills) and the composed one measured within 2% (17.2 / 17.1 ms), so float32 keeps it fused
MAX_FUSED_DBL_OUT = {4: 128, 8: 64}


def outputs_per_thread(instructions: Sequence[tuple]) -> int:
    """Output values a thread accumulates (acc_<n>_<k>) for a spec's ``instructions``: the register budget the limits
    above bound."""
    return sum(2 * ins[5] + 1 for ins in instructions)


def uvu_spec(plan: Sequence[int], cg: Sequence[float], per_edge_weights: bool,
             itemsize: int = 4) -> Tuple[Optional[UvuSpec], str]:
    """The spec of ``plan`` when the uvu kernels apply, else ``(None, reason)``."""
    if not per_edge_weights:
        return None, "shared weights"
    rows = list(_plan.unpack(plan))
    if not rows:
        return None, "no instructions"
    mul = rows[0]["mul1"]
    instructions, terms = [], []
    for ins in rows:
        if ins["mode"] != _plan.MODES["uvu"] or ins["mul2"] != 1 or ins["mul1"] != mul or ins["mul_out"] != mul:
            return None, "not a uniform-multiplicity uvu product"
        if ins["weight_offset"] == _plan.NO_WEIGHT:
            return None, "a path without weights"
        l1, l2, lo = ins["l1"], ins["l2"], ins["l_out"]
        d2, do = 2 * l2 + 1, 2 * lo + 1
        block = cg[ins["cg_offset"]: ins["cg_offset"] + (2 * l1 + 1) * d2 * do]
        nonzero = tuple((n // (d2 * do), (n // do) % d2, n % do, float(c)) for n, c in enumerate(block) if c != 0.0)
        instructions.append((ins["in1_offset"], l1, ins["in2_offset"], l2, ins["out_offset"], lo, ins["weight_offset"]))
        terms.append(nonzero)
    if not 1 <= mul <= MAX_MUL:
        return None, f"multiplicity {mul} outside 1..{MAX_MUL}"
    per_thread = outputs_per_thread(instructions)
    if per_thread > MAX_OUT_PER_THREAD[itemsize]:
        return None, f"{per_thread} output values per channel (more than {MAX_OUT_PER_THREAD[itemsize]})"
    threads = (mul + 31) // 32 * 32
    return UvuSpec(mul, tuple(_plan.dims(plan)), tuple(instructions), tuple(terms), threads), ""


def _lit(value: float) -> str:
    return f"T({value!r})"  # repr round-trips float64; T(...) rounds once to float32 like the reference


def _header(spec: UvuSpec, ctype: str) -> List[str]:
    dim1, dim2, dim_out, wnumel = spec.dims
    return [f"typedef {ctype} T;", "typedef long long i64;",
            f"#define M {spec.mul}", f"#define DIM1 {dim1}", f"#define DIM2 {dim2}", f"#define DIM_OUT {dim_out}",
            f"#define WNUMEL {wnumel}", f"#define THREADS {spec.threads}", f"#define WARPS {spec.warps}"]


def _edge_loads(spec: UvuSpec, guard: str, stream_weights: bool = False) -> List[str]:
    """Loads of the edge's sender row slices (a_<offset>_<i>), harmonics (b_<j>) and weights (w_<n>);
    ``stream_weights``: the weights, read once, through ``__ldcs`` (evict-first) to leave L1 to the sender rows."""
    # (loading the next edge's indices one iteration ahead was measured slower on an H200: 0.96 -> 1.9 ms)
    lines = ["      const i64 e = order ? order[p] : p;", "      const i64 s = send ? send[p] : e;",
             "      const T* xs = x1 + s * DIM1;", "      const T* ye = x2 + e * DIM2;",
             "      const T* we = w + e * WNUMEL + u;"]
    for off, l1 in sorted({(ins[0], ins[1]) for ins in spec.instructions}):
        d1 = 2 * l1 + 1
        for i in range(d1):
            lines.append(f"      const T a_{off}_{i} = {guard}xs[{off} + u * {d1} + {i}]{' : T(0)' if guard else ''};")
    for j in sorted({ins[2] + j for ins in spec.instructions for j in range(2 * ins[3] + 1)}):
        lines.append(f"      const T b_{j} = ye[{j}];")
    for n, ins in enumerate(spec.instructions):
        load = f"__ldcs(we + {ins[6]})" if stream_weights else f"we[{ins[6]}]"
        lines.append(f"      const T w_{n} = {guard}{load}{' : T(0)' if guard else ''};")
    return lines


# the backward kernels' head: a block per receiver node (grid-stride), a thread per channel, the node's
# output-gradient row
_RECEIVER_LOOP_WITH_GRAD_OUT = [
    "  const int u = threadIdx.x, lane = u & 31, warp = u >> 5;",
    "  const bool active = u < M;  // inactive lanes still take part in the warp reductions",
    "  for (i64 node = blockIdx.x; node < n_nodes; node += gridDim.x) {",
    "    const T* go = grad_out + node * DIM_OUT;"]


def _row_store(spec: UvuSpec, accumulators: str, row: str, indent: str) -> List[str]:
    """``row[column] = sum of the accumulators of the instructions writing that column`` (e3nn allows several
    instructions per output irrep; they add up)."""
    slots: Dict[Tuple[int, int, int], List[str]] = {}
    for n, ins in enumerate(spec.instructions):
        do = 2 * ins[5] + 1
        for k in range(do):
            slots.setdefault((ins[4], do, k), []).append(f"{accumulators}_{n}_{k}")
    return [f"{indent}{row}[{off} + u * {do} + {k}] = {' + '.join(names)};" for (off, do, k), names in sorted(slots.items())]


def _in1_store(spec: UvuSpec, values: str, dest: str, row: str, atomic: bool, indent: str) -> List[str]:
    """The thread's in1-gradient values (``<values>_<offset>_<i>``) into ``dest`` (through the pointer ``row``):
    added with atomics at the edge's sender row (``s``) of an ``[n_nodes, DIM1]`` tensor, or written to the
    edge's row (``e``)."""
    lines = [f"{indent}if ({dest} && active) {{", f"{indent}  T* {row} = {dest} + {'s' if atomic else 'e'} * DIM1;"]
    for off, l1 in sorted({(ins[0], ins[1]) for ins in spec.instructions}):
        d1 = 2 * l1 + 1
        lines += [f"{indent}  atomicAdd({row} + {off} + u * {d1} + {i}, {values}_{off}_{i});" if atomic else
                  f"{indent}  {row}[{off} + u * {d1} + {i}] = {values}_{off}_{i};" for i in range(d1)]
    return lines + [f"{indent}}}"]


def _dim2_store(spec: UvuSpec, values: str, dest: str, atomic: bool, indent: str) -> List[str]:
    """The harmonics' gradient (``<values>_<j>``) summed over the channels: per warp by a reduce-scatter (lane
    ``L`` ends with one component), then written as ``[n_edges, WARPS, DIM2]`` partial sums that the caller adds
    in a fixed order, or, ``atomic`` with several warps, added into ``[n_edges, DIM2]``."""
    dim2 = spec.dims[1]
    store = ("atomicAdd({dest} + e * DIM2 + j, reduced);" if atomic and spec.warps > 1 else
             "{dest}[(e * WARPS + warp) * DIM2 + j] = reduced;").format(dest=dest)
    lines = [f"{indent}if ({dest}) {{"]
    for start in range(0, dim2, 32):
        group = [f"{values}_{j}" for j in range(start, min(dim2, start + 32))]
        reduce_lines, shift = _reduce_scatter(group, indent + "  ")
        lines += [f"{indent}  {{"] + reduce_lines + [
            f"{indent}  const int j = {start} + (lane >> {shift});",
            f"{indent}  if ((lane & {(1 << shift) - 1}) == 0 && j < {min(dim2, start + 32)}) {store}",
            f"{indent}  }}"]
    return lines + [f"{indent}}}"]


def forward_head(spec: UvuSpec) -> List[str]:
    """The forwards' head: a thread per channel, a block per receiver node (grid-stride), the accumulators of every
    instruction's output, and the node's CSR range ``[p_begin, p_end)``."""
    lines = ["  const int u = threadIdx.x;",
             "  if (u >= M) return;  // no block-wide communication in the forward",
             "  for (i64 node = blockIdx.x; node < n_nodes; node += gridDim.x) {"]
    for n, ins in enumerate(spec.instructions):
        lines += [f"    T acc_{n}_{k} = T(0);" for k in range(2 * ins[5] + 1)]
    return lines + ["    const i64 p_begin = row_ptr ? row_ptr[node] : node;",
                    "    const i64 p_end = row_ptr ? row_ptr[node + 1] : node + 1;"]


def forward_source(spec: UvuSpec, ctype: str, unroll: int = 1, min_blocks: int = 0,
                   stream_weights: bool = False) -> str:
    """The forward; ``unroll``: edges per loop iteration, ``min_blocks``: resident blocks per multiprocessor asked
    of ptxas (0: its choice), ``stream_weights``: see ``_edge_loads``."""
    lines = _header(spec, ctype) + [
        f'extern "C" __global__ void {launch_bounds(min_blocks)} bm_uvu_fwd(',
        "    const T* __restrict__ x1, const T* __restrict__ x2, const T* __restrict__ w,",
        "    const i64* __restrict__ order, const i64* __restrict__ send, const i64* __restrict__ row_ptr,",
        "    T* __restrict__ out, i64 n_nodes) {"] + forward_head(spec)
    lines += [f"#pragma unroll {unroll}",
              "    for (i64 p = p_begin; p < p_end; ++p) {"]
    lines += _edge_loads(spec, guard="", stream_weights=stream_weights)
    for n, ins in enumerate(spec.instructions):
        off1, _, off2 = ins[0], ins[1], ins[2]
        by_k: Dict[int, List[str]] = {}
        for i, j, k, c in spec.terms[n]:
            by_k.setdefault(k, []).append(f"{_lit(c)} * (a_{off1}_{i} * b_{off2 + j})")
        for k, parts in sorted(by_k.items()):
            lines.append(f"      acc_{n}_{k} += w_{n} * ({' + '.join(parts)});")
    lines += ["    }", "    T* o = out + node * DIM_OUT;"] + _row_store(spec, "acc", "o", "    ")
    lines += ["  }", "}"]
    return "\n".join(lines) + "\n"


def _reduce_scatter(values: List[str], indent: str) -> Tuple[List[str], int]:
    """Warp reduce-scatter of up to 32 named values: after it, lane ``L`` holds in ``values[0]``'s variable the
    warp sum of value ``L >> shift``; returns the lines and ``shift``."""
    n = 1
    while n < len(values):
        n *= 2
    regs = list(values) + ["T(0)"] * (n - len(values))
    lines, tmp = [], 0
    offset, count = 16, n
    while offset >= 1:
        if count > 1:
            half = count // 2
            new = []
            for i in range(half):
                lo, hi = regs[i], regs[i + half]
                name = f"rs{tmp}"
                tmp += 1
                lines.append(f"{indent}T {name}; {{ const bool up = lane & {offset}; "
                             f"const T keep = up ? {hi} : {lo}; const T give = up ? {lo} : {hi}; "
                             f"{name} = keep + __shfl_xor_sync(0xffffffffu, give, {offset}); }}")
                new.append(name)
            regs, count = new, half
        else:
            name = f"rs{tmp}"
            tmp += 1
            lines.append(f"{indent}const T {name} = {regs[0]} + __shfl_xor_sync(0xffffffffu, {regs[0]}, {offset});")
            regs = [name]
        offset //= 2
    shift = 5 - (n.bit_length() - 1)
    lines.append(f"{indent}const T reduced = {regs[0]};")
    return lines, shift


def launch_bounds(min_blocks: int) -> str:
    """``__launch_bounds__`` of a block of THREADS, with ``min_blocks`` resident per multiprocessor asked of ptxas
    (0: its choice)."""
    return f"__launch_bounds__(THREADS, {min_blocks})" if min_blocks else "__launch_bounds__(THREADS)"


def backward_source(spec: UvuSpec, ctype: str, g1_atomic: bool = False, min_blocks: int = 0,
                    gw_add: bool = False) -> str:
    """``min_blocks``: see ``launch_bounds``. ``g1_atomic``: the input-1 gradient is added with atomics into
    ``g1 [n_nodes, DIM1]`` at each edge's sender (zeroed by the caller) instead of being written per edge to
    ``g1_edge [n_edges, DIM1]``, and the warps add their harmonics-gradient sums into ``g2 [n_edges, DIM2]``
    (zeroed) instead of writing ``g2_part [n_edges, WARPS, DIM2]``: no per-edge buffers and no segment sum (the
    convolution's atomic mode), but the summation order, and so the last bits, vary run to run. ``gw_add``: the
    weight gradient is added into ``gw`` instead of written (one thread per entry: deterministic), so that a
    composed double backward sums its two weight-gradient terms without a second ``[n_edges, WNUMEL]`` buffer."""
    dim2 = spec.dims[1]
    lines = _header(spec, ctype) + [
        f'extern "C" __global__ void {launch_bounds(min_blocks)} bm_uvu_bwd(',
        "    const T* __restrict__ grad_out, const T* __restrict__ x1, const T* __restrict__ x2,",
        "    const T* __restrict__ w, const i64* __restrict__ order, const i64* __restrict__ send,",
        "    const i64* __restrict__ row_ptr, T* __restrict__ g1_edge, T* __restrict__ g2_part,",
        "    T* __restrict__ gw, i64 n_nodes) {"] + _RECEIVER_LOOP_WITH_GRAD_OUT
    for n, ins in enumerate(spec.instructions):
        do = 2 * ins[5] + 1
        lines += [f"    const T g_{n}_{k} = active ? go[{ins[4]} + u * {do} + {k}] : T(0);" for k in range(do)]
    lines += ["    const i64 p_begin = row_ptr ? row_ptr[node] : node;",
              "    const i64 p_end = row_ptr ? row_ptr[node + 1] : node + 1;",
              "    for (i64 p = p_begin; p < p_end; ++p) {"]
    lines += _edge_loads(spec, guard="active ? ")
    in1_segments = sorted({(ins[0], ins[1]) for ins in spec.instructions})
    for off, l1 in in1_segments:
        lines += [f"      T ga_{off}_{i} = T(0);" for i in range(2 * l1 + 1)]
    lines += [f"      T gb_{j} = T(0);" for j in range(dim2)]
    for n, ins in enumerate(spec.instructions):
        off1, off2 = ins[0], ins[2]
        gw_parts, ga, gb = [], {}, {}
        for i, j, k, c in spec.terms[n]:
            gw_parts.append(f"{_lit(c)} * (a_{off1}_{i} * b_{off2 + j} * g_{n}_{k})")
            ga.setdefault(i, []).append(f"{_lit(c)} * (b_{off2 + j} * g_{n}_{k})")
            gb.setdefault(off2 + j, []).append(f"{_lit(c)} * (a_{off1}_{i} * g_{n}_{k})")
        lines.append(f"      if (gw && active) gw[e * WNUMEL + {ins[6]} + u] {'+=' if gw_add else '='} "
                     f"{' + '.join(gw_parts) or 'T(0)'};")
        for i, parts in sorted(ga.items()):
            lines.append(f"      ga_{off1}_{i} += w_{n} * ({' + '.join(parts)});")
        for j, parts in sorted(gb.items()):
            lines.append(f"      gb_{j} += w_{n} * ({' + '.join(parts)});")
    lines += _in1_store(spec, "ga", "g1_edge", "g1", g1_atomic, "      ")
    lines += _dim2_store(spec, "gb", "g2_part", g1_atomic, "      ")
    lines += ["    }", "  }", "}"]
    return "\n".join(lines) + "\n"
