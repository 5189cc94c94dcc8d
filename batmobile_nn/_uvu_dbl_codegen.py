"""CUDA source of the per-problem uvu convolution's double backward, fused into one kernel.

The backward ``B(g, a, b, c) = (dA, dB, dC)`` of ``out = conv(a, b, c)`` is linear in each argument, so
the gradients of ``<(ga, gb, gc), B(g, a, b, c)>`` are (``T`` the per-edge uvu product, all of whose paths
carry weights, which ``uvu_spec`` requires):

* ``d_g = T(ga, b, c) + T(a, gb, c) + T(a, b, gc)``, summed per receiver like the forward;
* ``d_a = dA(g, a, gb, c) + dA(g, a, b, gc)``, added at each edge's sender;
* ``d_b = dB(g, ga, b, c) + dB(g, a, b, gc)``, per edge (summed over channels by a warp reduce-scatter);
* ``d_c = dC(g, ga, b, c) + dC(g, a, gb, c)``, per edge.

``ops/_trilinear.py`` builds the same from three forward and three backward calls, each of which reads
the ``[n_edges, weight_numel]`` weights again (and two of which write an ``[n_edges, weight_numel]``
gradient that is then added): here every input is read once and every output written once. One block
per receiver, one thread per channel, as in ``_uvu_codegen``. The cotangents that are absent (zero) are
left out of the source (``has = (ga, gb, gc)``); outputs passed as null pointers are not written.

Signature: ``bm_uvu_dbl(grad_out, x1, x2, w, ga, gb, gc, order?, send?, row_ptr?, d_g?, d_a?, d_b_part?,
d_c?, n_nodes)``; ``d_a`` is ``[n_nodes, DIM1]`` added into with atomics at the sender when ``da_atomic``,
else ``[n_edges, DIM1]`` per edge (for a fixed-order segment sum); ``d_b_part`` is ``[n_edges, WARPS, DIM2]``.
"""

from typing import Dict, List, Tuple

from ._uvu_codegen import (_RECEIVER_LOOP_WITH_GRAD_OUT, UvuSpec, _dim2_store, _header, _in1_store, _lit,
                           _row_store, launch_bounds)


def _sum(parts: List[str]) -> str:
    return " + ".join(parts) if parts else "T(0)"


def double_backward_source(spec: UvuSpec, ctype: str, has: Tuple[bool, bool, bool], da_atomic: bool,
                           serial: bool = False, min_blocks: int = 0) -> str:
    """``min_blocks``: ``_uvu_codegen.launch_bounds``. ``serial``: add the harmonics' gradient into ``d_b_part`` lane by lane instead of the warp
    reduce-scatter, for running the source as C++ one channel at a time (tests/test_uvu_compiled_on_cpu.py).
    (One kernel: split into a ``d_g`` kernel and a ``d_a, d_b, d_c`` kernel of ~127 registers each, against
    254 in one, MACE-MP-medium measured slower on an H200: csrc/README.md.)"""
    has_ga, has_gb, has_gc = has
    dim2 = spec.dims[1]
    in1_segments = sorted({(ins[0], ins[1]) for ins in spec.instructions})
    in2_columns = sorted({ins[2] + j for ins in spec.instructions for j in range(2 * ins[3] + 1)})
    lines = _header(spec, ctype) + [
        f'extern "C" __global__ void {launch_bounds(min_blocks)} bm_uvu_dbl(',
        "    const T* __restrict__ grad_out, const T* __restrict__ x1, const T* __restrict__ x2,",
        "    const T* __restrict__ w, const T* __restrict__ ga, const T* __restrict__ gb,",
        "    const T* __restrict__ gc, const i64* __restrict__ order, const i64* __restrict__ send,",
        "    const i64* __restrict__ row_ptr, T* __restrict__ d_g, T* __restrict__ d_a,",
        "    T* __restrict__ d_b_part, T* __restrict__ d_c, i64 n_nodes) {"] + _RECEIVER_LOOP_WITH_GRAD_OUT
    for n, ins in enumerate(spec.instructions):
        do = 2 * ins[5] + 1
        lines += [f"    const T g_{n}_{k} = active ? go[{ins[4]} + u * {do} + {k}] : T(0);" for k in range(do)]
        lines += [f"    T acc_{n}_{k} = T(0);" for k in range(do)]
    lines += ["    const i64 p_begin = row_ptr ? row_ptr[node] : node;",
              "    const i64 p_end = row_ptr ? row_ptr[node + 1] : node + 1;",
              "    for (i64 p = p_begin; p < p_end; ++p) {",
              "      const i64 e = order ? order[p] : p;",
              "      const i64 s = send ? send[p] : e;"]
    # the edge's operands: a (x1[s]) and ca (ga[s]) per in1 segment, b / cb per harmonic, w / cw per path
    for name, source, wanted in (("a", "x1", True), ("ca", "ga", has_ga)):
        if wanted:
            for off, l1 in in1_segments:
                d1 = 2 * l1 + 1
                lines += [f"      const T {name}_{off}_{i} = active ? {source}[s * DIM1 + {off} + u * {d1} + {i}] : T(0);"
                          for i in range(d1)]
    for name, source, wanted in (("b", "x2", True), ("cb", "gb", has_gb)):
        if wanted:
            lines += [f"      const T {name}_{j} = {source}[e * DIM2 + {j}];" for j in in2_columns]
    for name, source, wanted in (("w", "w", True), ("cw", "gc", has_gc)):
        if wanted:
            lines += [f"      const T {name}_{n} = active ? {source}[e * WNUMEL + {ins[6]} + u] : T(0);"
                      for n, ins in enumerate(spec.instructions)]
    for off, l1 in in1_segments:
        lines += [f"      T da_{off}_{i} = T(0);" for i in range(2 * l1 + 1)]
    lines += [f"      T db_{j} = T(0);" for j in range(dim2)]
    for n, ins in enumerate(spec.instructions):
        off1, off2 = ins[0], ins[2]
        dg_w: Dict[int, List[str]] = {}  # k -> terms multiplied by w_n
        dg_cw: Dict[int, List[str]] = {}  # k -> terms multiplied by cw_n
        dc, da_w, da_cw, db_w, db_cw = [], {}, {}, {}, {}
        for i, j, k, c in spec.terms[n]:
            lit, a, b, g = _lit(c), f"a_{off1}_{i}", f"b_{off2 + j}", f"g_{n}_{k}"
            ca, cb = f"ca_{off1}_{i}", f"cb_{off2 + j}"
            if has_ga:
                dg_w.setdefault(k, []).append(f"{lit} * ({ca} * {b})")
                dc.append(f"{lit} * ({ca} * {b} * {g})")
                db_w.setdefault(off2 + j, []).append(f"{lit} * ({ca} * {g})")
            if has_gb:
                dg_w.setdefault(k, []).append(f"{lit} * ({a} * {cb})")
                dc.append(f"{lit} * ({a} * {cb} * {g})")
                da_w.setdefault(i, []).append(f"{lit} * ({cb} * {g})")
            if has_gc:
                dg_cw.setdefault(k, []).append(f"{lit} * ({a} * {b})")
                da_cw.setdefault(i, []).append(f"{lit} * ({b} * {g})")
                db_cw.setdefault(off2 + j, []).append(f"{lit} * ({a} * {g})")
        for k in sorted(set(dg_w) | set(dg_cw)):
            parts = ([f"w_{n} * ({_sum(dg_w[k])})"] if k in dg_w else []) + \
                    ([f"cw_{n} * ({_sum(dg_cw[k])})"] if k in dg_cw else [])
            lines.append(f"      acc_{n}_{k} += {' + '.join(parts)};")
        if has_ga or has_gb:  # every column, also where the path's coefficients are all zero
            lines.append(f"      if (d_c && active) d_c[e * WNUMEL + {ins[6]} + u] = {_sum(dc)};")
        for i in sorted(set(da_w) | set(da_cw)):
            parts = ([f"w_{n} * ({_sum(da_w[i])})"] if i in da_w else []) + \
                    ([f"cw_{n} * ({_sum(da_cw[i])})"] if i in da_cw else [])
            lines.append(f"      da_{off1}_{i} += {' + '.join(parts)};")
        for j in sorted(set(db_w) | set(db_cw)):
            parts = ([f"w_{n} * ({_sum(db_w[j])})"] if j in db_w else []) + \
                    ([f"cw_{n} * ({_sum(db_cw[j])})"] if j in db_cw else [])
            lines.append(f"      db_{j} += {' + '.join(parts)};")
    if has_gb or has_gc:
        lines += _in1_store(spec, "da", "d_a", "da", da_atomic, "      ")
    if has_ga or has_gc:
        if serial:
            lines += ["      if (d_b_part) {"] + [f"        d_b_part[(e * WARPS + warp) * DIM2 + {j}] += db_{j};"
                                                  for j in range(dim2)] + ["      }"]
        else:
            lines += _dim2_store(spec, "db", "d_b_part", False, "      ")
    lines += ["    }", "    if (d_g && active) {", "      T* o = d_g + node * DIM_OUT;"]
    lines += _row_store(spec, "acc", "o", "      ") + ["    }", "  }", "}"]
    return "\n".join(lines) + "\n"
