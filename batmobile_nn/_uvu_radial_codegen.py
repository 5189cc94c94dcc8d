"""CUDA source of the uvu convolution forward with the radial MLP's last layer inside (``ops.conv_radial``).

The per-edge weights ``w[e, offset_n + u] = alpha * sum_h hidden[e, h] * radial[h, offset_n + u]`` are made in
registers and never written: a block per receiver node and a thread per channel ``u`` (as ``bm_uvu_fwd``), the
instructions in the outer loop, so that the thread's column of the radial layer for instruction ``n``
(``radial[:, offset_n + u]``, ``HIDDEN`` values) is loaded once per node and reused over the node's edges; the
edge's hidden row is read by every thread of the block at once (one broadcast load). Each edge's sender row
and harmonics are read once per instruction (from L1 after the first). ``alpha`` and ``HIDDEN`` are
constants of the generated source.

Kernel signature (launched with ``_jit.launch``; ``order`` / ``send`` / ``row_ptr`` as ``bm_uvu_fwd``'s):
``bm_uvu_fwd_radial(x1, x2, hidden [n_edges, HIDDEN], radial [HIDDEN, WNUMEL], order?, send?, row_ptr?, out,
n_nodes)``.
"""

from typing import Dict, List

from ._uvu_codegen import UvuSpec, _header, _lit, _row_store, forward_head

MAX_HIDDEN = 128  # the radial column lives in registers


def forward_radial_source(spec: UvuSpec, ctype: str, hidden: int, alpha: float) -> str:
    if not 1 <= hidden <= MAX_HIDDEN:
        raise ValueError(f"the radial layer's input size must be in 1..{MAX_HIDDEN}, got {hidden}")
    lines = _header(spec, ctype) + [
        f"#define HIDDEN {hidden}",
        'extern "C" __global__ void __launch_bounds__(THREADS) bm_uvu_fwd_radial(',
        "    const T* __restrict__ x1, const T* __restrict__ x2, const T* __restrict__ hidden,",
        "    const T* __restrict__ radial, const i64* __restrict__ order, const i64* __restrict__ send,",
        "    const i64* __restrict__ row_ptr, T* __restrict__ out, i64 n_nodes) {"] + forward_head(spec)
    for n, ins in enumerate(spec.instructions):
        off1, l1, off2, _, _, _, w_off = ins
        d1 = 2 * l1 + 1
        lines += [f"    {{  // instruction {n}: its column of the radial layer, for the node's edges",
                  "      T column[HIDDEN];",
                  "#pragma unroll",
                  f"      for (int h = 0; h < HIDDEN; ++h) column[h] = radial[h * WNUMEL + {w_off} + u];",
                  "      for (i64 p = p_begin; p < p_end; ++p) {",
                  "        const i64 e = order ? order[p] : p;",
                  "        const i64 s = send ? send[p] : e;",
                  "        const T* he = hidden + e * HIDDEN;",
                  "        T w = T(0);",
                  "#pragma unroll",
                  "        for (int h = 0; h < HIDDEN; ++h) w += he[h] * column[h];",
                  f"        w *= {_lit(alpha)};",
                  "        const T* xs = x1 + s * DIM1;",
                  "        const T* ye = x2 + e * DIM2;"]
        used_i = sorted({i for i, _, _, _ in spec.terms[n]})
        used_j = sorted({j for _, j, _, _ in spec.terms[n]})
        lines += [f"        const T a_{i} = xs[{off1} + u * {d1} + {i}];" for i in used_i]
        lines += [f"        const T b_{j} = ye[{off2 + j}];" for j in used_j]
        by_k: Dict[int, List[str]] = {}
        for i, j, k, c in spec.terms[n]:
            by_k.setdefault(k, []).append(f"{_lit(c)} * (a_{i} * b_{j})")
        for k, parts in sorted(by_k.items()):
            lines.append(f"        acc_{n}_{k} += w * ({' + '.join(parts)});")
        lines += ["      }", "    }"]
    lines += ["    T* o = out + node * DIM_OUT;"] + _row_store(spec, "acc", "o", "    ")
    lines += ["  }", "}"]
    return "\n".join(lines) + "\n"
