"""CUDA source of the per-problem symmetric-contraction kernels (MACE's product basis).

Per node ``b`` (element ``e``) and channel ``c`` the op is a polynomial in the ``L`` features ``x[b, c, :]``:
``out[k] = sum_p W[e, p, c] * poly_kp(x)``, where ``k`` runs over every output component and ``p`` over the
weights. ``poly_kp`` is read off mace's ``U`` tensors once: the sum over ``i1..inu`` of
``U[m, i1..inu, p] x_i1 ... x_inu`` collects, per sorted index tuple (a monomial), the sum of ``U`` over the
tuple's permutations, so only the symmetric part of ``U`` is left and most entries vanish (MACE-MP-medium,
``0e+1o`` out of ``0e+1o+2e+3o`` at correlation 3: 1,909 terms in all). Each term becomes a literal in
straight-line code; one thread per (node, channel) keeps ``x`` in registers and reads ``W[e, p, c]``
coalesced across channels. The derivatives are the same terms differentiated symbolically here
(``d/dx_i``, and the directional derivative along ``v`` for the double backward), so every kernel is
again straight-line code, with no atomics.

Kernels (all parameters pointers, then int64; ``_sc.py`` launches them):
``bm_sc_fwd(x, element, w, out, n_nodes)``; ``bm_sc_bwd(grad_out, x, element, w, grad_x, n_nodes)``;
``bm_sc_dbl(v, grad_out, x, element, w, d_grad_out?, d_x?, n_nodes)`` (the backward's vector-Jacobian
product along ``v = grad_grad_x``); ``bm_sc_wgrad(grad_out, x, v?, perm, chunk_start, chunk_end, partial,
n_chunks)``: per chunk of at most ``CHUNK`` nodes of one element, the weight gradient of those nodes (with
``v``, the double backward's) summed in registers; ``bm_sc_chunk_sum(partial, chunk_ptr, grad_w, n_elements,
row)`` then adds each element's chunks in a fixed order. The forward, backward and double backward come
in parts (``parts``): kernels over consecutive groups of weights, the first writing, the others adding.
"""

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch

THREADS = 128
CHUNK = 8  # nodes per weight-gradient chunk: more threads in flight vs fewer partial rows
WGRAD_GROUP = {"float": 64, "double": 32}  # weight-gradient accumulators in registers per pass
# terms per kernel (see parts). ptxas (sm_90) on MACE-MP-large's problem: the float64 double backward in one
# kernel spilled 50 KB and took minutes to compile; in parts of 350 terms, 1.4 KB and 31 s in all
PART_TERMS = {"float": {"fwd": 4000, "bwd": 2000, "dbl": 1000}, "double": {"fwd": 2000, "bwd": 700, "dbl": 350}}

Mono = Tuple[int, ...]  # sorted x indices
Term = Tuple[float, Mono, Mono]  # (coefficient, x indices, v indices)


@dataclass(frozen=True)
class ScSpec:
    mul: int  # C, channels
    dim: int  # L, features per channel
    n_params: int  # P, weights per element and channel
    width: int  # output row: C * sum of the output irreps' dimensions
    comps: Tuple[Tuple[int, int, int], ...]  # per output component k: (first column of its irrep, D, m)
    terms: Tuple[Tuple[int, int, Tuple[Tuple[float, Mono], ...]], ...]  # (k, p, ((coefficient, monomial), ...))


def sc_spec(u: Sequence[torch.Tensor], correlations: Sequence[int], mul: int, dim: int) -> ScSpec:
    """The terms of ``u`` (CPU tensors ``[D, L**nu, P]``, block after block as the op takes them)."""
    acc: Dict[Tuple[int, int, Mono], float] = {}
    comps: List[Tuple[int, int, int]] = []
    j, p0, col = 0, 0, 0
    for K in correlations:
        D = u[j].shape[0]
        k0 = len(comps)
        comps += [(col, D, m) for m in range(D)]
        for nu in range(1, K + 1):
            U = u[j].detach().to("cpu", torch.float64)
            nonzero = U.nonzero()  # [nnz, 3]: (m, i1 * L**(nu-1) + ... + inu, p)
            for (m, flat, p), value in zip(nonzero.tolist(), U[tuple(nonzero.T)].tolist()):
                idx = []
                for _ in range(nu):
                    idx.append(flat % dim)
                    flat //= dim
                key = (k0 + m, p0 + p, tuple(sorted(idx)))
                acc[key] = acc.get(key, 0.0) + value
            p0 += U.shape[2]
            j += 1
        col += mul * D
    scale = max((abs(c) for c in acc.values()), default=0.0)
    grouped: Dict[Tuple[int, int], List[Tuple[float, Mono]]] = {}
    for (k, p, mono), c in sorted(acc.items()):
        if abs(c) > 1e-13 * scale:  # permutations that cancel leave rounding residue
            grouped.setdefault((k, p), []).append((c, mono))
    terms = tuple((k, p, tuple(ts)) for (k, p), ts in sorted(grouped.items(), key=lambda kv: (kv[0][1], kv[0][0])))
    return ScSpec(mul, dim, p0, col, tuple(comps), terms)


# ---- symbolic derivatives -------------------------------------------------------------------------
def _remove(t: Mono, i: int) -> Mono:
    k = t.index(i)
    return t[:k] + t[k + 1:]


def d_dx(terms: Sequence[Term], i: int) -> List[Term]:
    """``d/dx_i`` of a sum of terms."""
    return [(c * xs.count(i), _remove(xs, i), vs) for c, xs, vs in terms if i in xs]


def along_v(terms: Sequence[Term]) -> List[Term]:
    """The directional derivative ``sum_i v_i d/dx_i``."""
    return [(c * xs.count(i), _remove(xs, i), tuple(sorted(vs + (i,)))) for c, xs, vs in terms for i in sorted(set(xs))]


def merged(terms: Sequence[Term]) -> List[Term]:
    out: Dict[Tuple[Mono, Mono], float] = {}
    for c, xs, vs in terms:
        out[(xs, vs)] = out.get((xs, vs), 0.0) + c
    return [(c, xs, vs) for (xs, vs), c in out.items() if c != 0.0]


def evaluate(terms: Sequence[Term], x: torch.Tensor, v: torch.Tensor = None) -> torch.Tensor:
    """The terms' value for ``x`` (and ``v``) ``[..., L]``: what the generated code computes (used by tests)."""
    total = torch.zeros(x.shape[:-1], dtype=x.dtype)
    for c, xs, vs in terms:
        value = torch.full(x.shape[:-1], c, dtype=x.dtype)
        for i in xs:
            value = value * x[..., i]
        for i in vs:
            value = value * v[..., i]
        total = total + value
    return total


def _expr(terms: Sequence[Term]) -> str:
    parts = []
    for c, xs, vs in merged(terms):
        factors = [f"x{i}" for i in xs] + [f"v{i}" for i in vs]
        parts.append(f"T({c!r})" + "".join(f" * {f}" for f in factors))
    return " + ".join(parts) or "T(0)"


# ---- sources --------------------------------------------------------------------------------------
def _by_p(spec: ScSpec, ps: Optional[Sequence[int]] = None) -> Dict[int, List[Tuple[int, List[Term]]]]:
    """Per weight ``p`` (those in ``ps``, default all): its ``(k, terms)``."""
    out: Dict[int, List[Tuple[int, List[Term]]]] = {}
    for k, p, ts in spec.terms:
        if ps is None or p in ps:
            out.setdefault(p, []).append((k, [(c, mono, ()) for c, mono in ts]))
    return out


def parts(spec: ScSpec, ctype: str, kind: str) -> List[Tuple[int, ...]]:
    """The weights cut into consecutive groups of at most ``PART_TERMS[ctype][kind]`` terms, one kernel each
    (the first writes, the others add). Straight-line code over too many terms makes ptxas spill (and take
    minutes); MACE-MP-medium in float32 stays one kernel per kind."""
    budget = PART_TERMS[ctype][kind]
    groups: List[Tuple[int, ...]] = []
    current: List[int] = []
    size = 0
    for p, rows in sorted(_by_p(spec).items()):
        n = sum(len(ts) for _, ts in rows)
        if current and size + n > budget:
            groups.append(tuple(current))
            current, size = [], 0
        current.append(p)
        size += n
    return groups + ([tuple(current)] if current else [])


def _head(spec: ScSpec, ctype: str, name: str, params: str) -> List[str]:
    return [f"typedef {ctype} T;", "typedef long long i64;",
            f"#define MUL {spec.mul}", f"#define DIM {spec.dim}", f"#define NP {spec.n_params}",
            f"#define WIDTH {spec.width}",
            f'extern "C" __global__ void __launch_bounds__({THREADS}) {name}({params}) {{']


_NODE_LOOP = ["  for (i64 t = blockIdx.x * (i64)blockDim.x + threadIdx.x; t < n_nodes * MUL; t += (i64)gridDim.x * blockDim.x) {",
              "    const i64 b = t / MUL;", "    const int c = (int)(t - b * MUL);"]


def _loads(spec: ScSpec, var: str, src: str, row: str) -> List[str]:
    return [f"    const T* {var}row = {src} + ({row}) * DIM;"] + [
        f"    const T {var}{i} = {var}row[{i}];" for i in range(spec.dim)]


def _grad_loads(spec: ScSpec, b: str) -> List[str]:
    return [f"    const T* grow = grad_out + {b} * WIDTH;"] + [
        f"    const T g{k} = grow[{col} + c * {D} + {m}];" for k, (col, D, m) in enumerate(spec.comps)]


def _weight_row(element: str) -> str:
    return f"    const T* wrow = w + {element} * (NP * MUL) + c;"


def _store(accumulate: bool) -> str:
    return "+=" if accumulate else "="


def forward_source(spec: ScSpec, ctype: str, ps: Optional[Sequence[int]] = None, accumulate: bool = False) -> str:
    """``out[k] (+)= sum over p in ps of w_p poly_kp(x)``."""
    lines = _head(spec, ctype, "bm_sc_fwd", "const T* __restrict__ x, const i64* __restrict__ element, "
                  "const T* __restrict__ w, T* __restrict__ out, i64 n_nodes") + _NODE_LOOP
    lines += _loads(spec, "x", "x", "t") + [_weight_row("element[b]")]
    lines += _output_lines(spec, lambda ts: ts, ps, "out", accumulate, "    ")
    return "\n".join(lines + ["  }", "}"]) + "\n"


def _output_lines(spec: ScSpec, transform, ps: Optional[Sequence[int]], dest: str, accumulate: bool,
                  indent: str) -> List[str]:
    """``dest[b, k] (+)= sum over p in ps of w_p transform(poly_kp)`` for every output component ``k``."""
    lines = [f"{indent}T o{k} = T(0);" for k in range(len(spec.comps))]
    for p, rows in sorted(_by_p(spec, ps).items()):
        lines.append(f"{indent}{{ const T wp = wrow[{p} * MUL];")
        lines += [f"{indent}  o{k} += wp * ({_expr(transform(ts))});" for k, ts in rows]
        lines.append(f"{indent}}}")
    lines.append(f"{indent}T* orow = {dest} + b * WIDTH;")
    return lines + [f"{indent}orow[{col} + c * {D} + {m}] {_store(accumulate)} o{k};"
                    for k, (col, D, m) in enumerate(spec.comps)]


def _grad_x_lines(spec: ScSpec, transform, out: str, ps: Optional[Sequence[int]]) -> List[str]:
    """``out_i = sum over p in ps of w_p sum_k g_k d/dx_i transform(poly_kp)`` into ``out_i`` accumulators."""
    lines = [f"      T {out}{i} = T(0);" for i in range(spec.dim)]
    for p, rows in sorted(_by_p(spec, ps).items()):
        lines.append(f"      {{ const T wp = wrow[{p} * MUL];")
        for k, ts in rows:
            ts = transform(ts)
            lines.append(f"        {{ const T q = wp * g{k};")
            for i in range(spec.dim):
                d = merged(d_dx(ts, i))
                if d:
                    lines.append(f"          {out}{i} += q * ({_expr(d)});")
            lines.append("        }")
        lines.append("      }")
    return lines


def backward_source(spec: ScSpec, ctype: str, ps: Optional[Sequence[int]] = None, accumulate: bool = False) -> str:
    lines = _head(spec, ctype, "bm_sc_bwd", "const T* __restrict__ grad_out, const T* __restrict__ x, "
                  "const i64* __restrict__ element, const T* __restrict__ w, T* __restrict__ grad_x, "
                  "i64 n_nodes") + _NODE_LOOP
    lines += _loads(spec, "x", "x", "t") + _grad_loads(spec, "b") + [_weight_row("element[b]"), "    {"]
    lines += _grad_x_lines(spec, lambda ts: ts, "gx", ps)
    lines += [f"      grad_x[t * DIM + {i}] {_store(accumulate)} gx{i};" for i in range(spec.dim)]
    return "\n".join(lines + ["    }", "  }", "}"]) + "\n"


def double_backward_source(spec: ScSpec, ctype: str, ps: Optional[Sequence[int]] = None,
                           accumulate: bool = False) -> str:
    """``d_grad_out[k] = sum_p w_p D_v poly_kp`` and ``d_x[j] = sum_p w_p sum_k g_k d/dx_j D_v poly_kp``."""
    lines = _head(spec, ctype, "bm_sc_dbl", "const T* __restrict__ v, const T* __restrict__ grad_out, "
                  "const T* __restrict__ x, const i64* __restrict__ element, const T* __restrict__ w, "
                  "T* __restrict__ d_grad_out, T* __restrict__ d_x, i64 n_nodes") + _NODE_LOOP
    lines += _loads(spec, "x", "x", "t") + _loads(spec, "v", "v", "t") + [_weight_row("element[b]")]
    lines.append("    if (d_grad_out) {")
    lines += _output_lines(spec, lambda ts: merged(along_v(ts)), ps, "d_grad_out", accumulate, "      ")
    lines += ["    }", "    if (d_x) {"] + ["  " + s for s in _grad_loads(spec, "b")]
    lines += _grad_x_lines(spec, lambda ts: merged(along_v(ts)), "dx", ps)
    lines += [f"      d_x[t * DIM + {i}] {_store(accumulate)} dx{i};" for i in range(spec.dim)]
    return "\n".join(lines + ["    }", "  }", "}"]) + "\n"


def weight_grad_source(spec: ScSpec, ctype: str, along: bool) -> str:
    """Per chunk and channel: ``sum over the chunk's nodes of sum_k g_k poly_kp`` (``D_v poly_kp`` with ``along``),
    in passes of at most ``WGRAD_GROUP`` weights, written to ``partial [n_chunks, NP, MUL]``."""
    name = "bm_sc_wgrad_dir" if along else "bm_sc_wgrad"
    lines = _head(spec, ctype, name, "const T* __restrict__ grad_out, const T* __restrict__ x, "
                  "const T* __restrict__ v, const i64* __restrict__ perm, const i64* __restrict__ chunk_start, "
                  "const i64* __restrict__ chunk_end, T* __restrict__ partial, i64 n_chunks")
    lines += ["  for (i64 t = blockIdx.x * (i64)blockDim.x + threadIdx.x; t < n_chunks * MUL; t += (i64)gridDim.x * blockDim.x) {",
              "    const i64 q = t / MUL;", "    const int c = (int)(t - q * MUL);",
              "    const i64 start = chunk_start[q], end = chunk_end[q];",
              "    T* prow = partial + q * (NP * MUL) + c;"]
    by_p = _by_p(spec)
    group = WGRAD_GROUP[ctype]
    for first in range(0, spec.n_params, group):
        ps = range(first, min(spec.n_params, first + group))
        lines.append("    {")
        lines += [f"      T G{p} = T(0);" for p in ps]
        lines += ["      for (i64 pos = start; pos < end; ++pos) {", "        const i64 b = perm[pos];"]
        body = _loads(spec, "x", "x", "b * MUL + c") + (_loads(spec, "v", "v", "b * MUL + c") if along else [])
        body += _grad_loads(spec, "b")
        for p in ps:
            parts = [f"g{k} * ({_expr(merged(along_v(ts)) if along else ts)})" for k, ts in by_p.get(p, [])]
            if parts:
                body.append(f"    G{p} += {' + '.join(parts)};")
        lines += ["    " + s for s in body] + ["      }"]
        lines += [f"      prow[{p} * MUL] = G{p};" for p in ps] + ["    }"]
    return "\n".join(lines + ["  }", "}"]) + "\n"


def chunk_sum_source(ctype: str) -> str:
    """``grad_w[e, j] = sum over q in chunk_ptr[e] .. chunk_ptr[e + 1] of partial[q, j]`` (fixed order)."""
    return "\n".join([
        f"typedef {ctype} T;", "typedef long long i64;",
        f'extern "C" __global__ void __launch_bounds__({THREADS}) bm_sc_chunk_sum(const T* __restrict__ partial, '
        "const i64* __restrict__ chunk_ptr, T* __restrict__ grad_w, i64 n_elements, i64 row) {",
        "  for (i64 t = blockIdx.x * (i64)blockDim.x + threadIdx.x; t < n_elements * row; t += (i64)gridDim.x * blockDim.x) {",
        "    const i64 e = t / row, j = t - e * row;",
        "    T sum = T(0);",
        "    for (i64 q = chunk_ptr[e]; q < chunk_ptr[e + 1]; ++q) sum += partial[q * row + j];",
        "    grad_w[t] = sum;", "  }", "}"]) + "\n"
