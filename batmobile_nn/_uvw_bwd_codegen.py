"""CUDA source of the per-problem uvw kernels' backward (``_uvw_codegen`` has the forward and the design): the
in1 and in2 gradients (``bm_uvw_bwd``) and the shared weights' gradient (``bm_uvw_wgrad``)."""

from typing import List

from . import _uvw_codegen as codegen


def _g_tile(path: codegen.UvwPath, spec: codegen.UvwSpec, tile: int, target: str) -> List[str]:
    """Loop copying the tile's ``grad_out`` block of ``path`` to ``target[el, k, w]`` (zero past the end)."""
    d, c_out = path.d_out, spec.c_out
    return [f"      for (int idx = tid; idx < {tile * d * c_out}; idx += {codegen.THREADS}) {{",
            f"        const int el = idx / {d * c_out}, rem = idx % {d * c_out}, w = rem / {d}, k = rem % {d};",
            "        const long long e = e0 + el;",
            f"        {target}[(el * {d} + k) * {c_out} + w] = e < n_edges ? g[e * {spec.dims[2]}LL + {path.off_out} + rem] : T(0);",
            "      }"]


def backward_source(spec: codegen.UvwSpec, ctype: str, need1: bool, need2: bool) -> str:
    """Gradients of in1 (``g1 [n, dim1]``, written where the paths read in1) and in2 (``g2 [n, dim2]``)."""
    dim1, dim2, _, _ = spec.dims
    tile = codegen.tile_edges(spec, ctype, "bwd")
    groups = codegen.THREADS // spec.c_in
    ept, c_in, c_out, s1 = tile // groups, spec.c_in, spec.c_out, spec.n_slots1
    warps_per_group = c_in // 32
    lines = codegen._header(ctype) + [
        f'extern "C" __global__ void __launch_bounds__({codegen.THREADS}, {codegen.MIN_BLOCKS[ctype]["bwd"]})'
        f' bm_uvw_bwd(',
        "    const T* __restrict__ g, const T* __restrict__ x1, const T* __restrict__ x2, const T* __restrict__ wt,",
        "    T* __restrict__ g1, T* __restrict__ g2, long long n_edges) {",
        "  // wt: each path's weights transposed, W[u, w] at weight_offset + w * c_in + u",
        f"  __shared__ __align__(16) T s_g[2][{tile * spec.max_d_out * c_out}];  // per path: grad_out [{tile}, d_out, {c_out}]"]
    if need2 and warps_per_group > 1:
        lines.append(f"  __shared__ T s_red[{codegen.THREADS // 32}][{ept * dim2}];  // per warp: its channels' in2 gradient")
    lines += [f"  const int tid = threadIdx.x, u = tid % {c_in}, group = tid / {c_in}, lane = tid % 32;",
              f"  const long long n_tiles = (n_edges + {tile - 1}) / {tile};",
              "  for (long long tile = blockIdx.x; tile < n_tiles; tile += gridDim.x) {",
              f"    const long long e0 = tile * {tile};",
              f"    T xa[{ept}][{s1}], xb[{ept}][{dim2}];  // this channel's in1 values, the sample's in2",
              f"    T acc1[{ept}][{s1 if need1 else 1}], acc2[{ept}][{dim2 if need2 else 1}];",
              f"    for (int q = 0; q < {ept}; ++q) {{",
              f"      const long long e = e0 + group * {ept} + q;",
              "      const bool inside = e < n_edges;"]
    for off, d, slot in sorted({(p.off1, p.d1, p.slot1) for p in spec.paths}):
        lines.append(f"      for (int i = 0; i < {d}; ++i) xa[q][{slot} + i] = inside ? x1[e * {dim1}LL + {off} + u * {d} + i] : T(0);")
    lines += [f"      for (int j = 0; j < {dim2}; ++j) xb[q][j] = inside ? x2[e * {dim2}LL + j] : T(0);",
              f"      for (int s = 0; s < {s1 if need1 else 1}; ++s) acc1[q][s] = T(0);",
              f"      for (int j = 0; j < {dim2 if need2 else 1}; ++j) acc2[q][j] = T(0);",
              "    }"]
    for p, path in enumerate(spec.paths):
        d = path.d_out
        lines += [f"    {{  // path {p}: out at {path.off_out} (d {d}) <- in1 at {path.off1} (d {path.d1}) x in2 at {path.off2}",
                  f"      T* sg = s_g[{p % 2}];"]
        lines += _g_tile(path, spec, tile, "sg")
        lines += ["      __syncthreads();",
                  f"      T gt[{ept}][{d}];",
                  f"      for (int q = 0; q < {ept}; ++q)",
                  f"        for (int k = 0; k < {d}; ++k) gt[q][k] = T(0);",
                  f"      const T* wp = wt + {path.weight_offset} + u;",
                  "#pragma unroll 2",
                  f"      for (int w4 = 0; w4 < {c_out // 4}; ++w4) {{",
                  "        T wv[4];",
                  f"        for (int r = 0; r < 4; ++r) wv[r] = wp[(w4 * 4 + r) * {c_in}];",
                  f"        for (int q = 0; q < {ept}; ++q) {{",
                  f"          const T* gq = sg + (group * {ept} + q) * {d * c_out} + w4 * 4;",
                  f"          for (int k = 0; k < {d}; ++k) {{",
                  f"            const T* gk = gq + k * {c_out};",
                  "            gt[q][k] += wv[0] * gk[0] + wv[1] * gk[1] + wv[2] * gk[2] + wv[3] * gk[3];",
                  "          }",
                  "        }",
                  "      }",
                  f"      for (int q = 0; q < {ept}; ++q) {{"]
        for i, j, k, c in path.terms:
            lines.append(f"        {{ const T pk = {codegen._lit(c)} * gt[q][{k}];"
                         + (f" acc1[q][{path.slot1 + i}] += pk * xb[q][{path.off2 + j}];" if need1 else "")
                         + (f" acc2[q][{path.off2 + j}] += pk * xa[q][{path.slot1 + i}];" if need2 else "") + " }")
        lines += ["      }", "    }"]
    if len(spec.paths) % 2:
        lines.append("    __syncthreads();")
    if need1:
        lines += [f"    for (int q = 0; q < {ept}; ++q) {{",
                  f"      const long long e = e0 + group * {ept} + q;",
                  "      if (e < n_edges) {"]
        for off, d, slot in sorted({(p.off1, p.d1, p.slot1) for p in spec.paths}):
            lines.append(f"        for (int i = 0; i < {d}; ++i) g1[e * {dim1}LL + {off} + u * {d} + i] = acc1[q][{slot} + i];")
        lines += ["      }", "    }"]
    if need2:  # sum over the channels: within the warp (butterfly), then over the group's warps in order
        lines += [f"    for (int q = 0; q < {ept}; ++q)",
                  f"      for (int j = 0; j < {dim2}; ++j)",
                  "        for (int m = 16; m >= 1; m /= 2) acc2[q][j] += __shfl_xor_sync(0xffffffffu, acc2[q][j], m);"]
        if warps_per_group > 1:
            lines += ["    if (lane == 0)",
                      f"      for (int q = 0; q < {ept}; ++q)",
                      f"        for (int j = 0; j < {dim2}; ++j) s_red[tid / 32][q * {dim2} + j] = acc2[q][j];",
                      "    __syncthreads();",
                      f"    for (int idx = tid; idx < {groups * ept * dim2}; idx += {codegen.THREADS}) {{",
                      f"      const int grp = idx / {ept * dim2}, rest = idx % {ept * dim2};",
                      "      T sum = T(0);",
                      f"      for (int v = 0; v < {warps_per_group}; ++v) sum += s_red[grp * {warps_per_group} + v][rest];",
                      f"      const long long e = e0 + grp * {ept} + rest / {dim2};",
                      f"      if (e < n_edges) g2[e * {dim2}LL + rest % {dim2}] = sum;",
                      "    }",
                      "    __syncthreads();  // s_red is written again by the next tile"]
        else:
            lines += ["    if (lane == 0)",
                      f"      for (int q = 0; q < {ept}; ++q) {{",
                      f"        const long long e = e0 + group * {ept} + q;",
                      "        if (e < n_edges)",
                      f"          for (int j = 0; j < {dim2}; ++j) g2[e * {dim2}LL + j] = acc2[q][j];",
                      "      }"]
    lines += ["  }", "}"]
    return "\n".join(lines) + "\n"


def wgrad_source(spec: codegen.UvwSpec, ctype: str) -> str:
    """Per (path, slice of samples) block: ``partial[slice, weights of path] = sum_e,k t[e, u, k] g[e, w, k]``."""
    weight_numel = spec.dims[3]
    tile = codegen.tile_edges(spec, ctype, "wgrad")
    c_in, c_out = spec.c_in, spec.c_out
    ru, rw = c_in // 16, c_out // 16
    lines = codegen._header(ctype) + [
        f'extern "C" __global__ void __launch_bounds__({codegen.THREADS}, {codegen.MIN_BLOCKS[ctype]["wgrad"]})'
        f' bm_uvw_wgrad(',
        "    const T* __restrict__ g, const T* __restrict__ x1, const T* __restrict__ x2, T* __restrict__ partial,",
        "    long long n_edges, long long n_slices) {",
        f"  __shared__ __align__(16) T s_t[{tile * spec.max_d_out * c_in}];  // t [{tile}, d_out, {c_in}]",
        f"  __shared__ __align__(16) T s_g[{tile * spec.max_d_out * c_out}];  // grad_out [{tile}, d_out, {c_out}]",
        "  const int tid = threadIdx.x, tu = tid / 16, tw = tid % 16;",
        "  const long long path = blockIdx.x / n_slices, slice = blockIdx.x % n_slices;",
        f"  const long long n_tiles = (n_edges + {tile - 1}) / {tile};",
        "  const long long per_slice = (n_tiles + n_slices - 1) / n_slices;",
        "  const long long t_begin = slice * per_slice, t_end = t_begin + per_slice < n_tiles ? t_begin + per_slice : n_tiles;",
        f"  T acc[{ru}][{rw}];",
        f"  for (int a = 0; a < {ru}; ++a)",
        f"    for (int b = 0; b < {rw}; ++b) acc[a][b] = T(0);",
        "  switch (path) {"]
    for p, path in enumerate(spec.paths):
        d = path.d_out
        lines += [f"  case {p}: {{",
                  "    for (long long tile = t_begin; tile < t_end; ++tile) {",
                  f"      const long long e0 = tile * {tile};"]
        lines += codegen._t_tile(path, spec, tile, "s_t") + _g_tile(path, spec, tile, "s_g")
        lines += ["      __syncthreads();",
                  f"      for (int ek = 0; ek < {tile * d}; ++ek) {{",
                  f"        T tv[{ru}], gv[{rw}];",
                  f"        for (int a = 0; a < {ru}; ++a) tv[a] = s_t[ek * {c_in} + tu + 16 * a];",
                  f"        for (int b = 0; b < {rw}; ++b) gv[b] = s_g[ek * {c_out} + tw + 16 * b];",
                  f"        for (int a = 0; a < {ru}; ++a)",
                  f"          for (int b = 0; b < {rw}; ++b) acc[a][b] += tv[a] * gv[b];",
                  "      }",
                  "      __syncthreads();",
                  "    }",
                  f"    T* out = partial + slice * {weight_numel}LL + {path.weight_offset};",
                  f"    for (int a = 0; a < {ru}; ++a)",
                  f"      for (int b = 0; b < {rw}; ++b) out[(tu + 16 * a) * {c_out} + tw + 16 * b] = acc[a][b];",
                  "    break;",
                  "  }"]
    lines += ["  }", "}"]
    return "\n".join(lines) + "\n"
