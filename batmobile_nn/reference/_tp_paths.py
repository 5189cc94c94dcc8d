"""A flat tensor-product plan unpacked for the reference implementation, once per plan.

``layout(plan)`` turns the flat ints into per-path slices and says which path writes a slot first (it
copies, later ones add) and which ranges no path writes (zero-filled), so results are allocated empty
instead of zeroed and then read back. ``cg_blocks`` builds each path's Clebsch-Gordan block in the two
layouts the products need, once per (plan, cg, dtype, device).
"""

from functools import lru_cache
from typing import List, NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from ..ops import _plan


class Path(NamedTuple):
    uvu: bool
    in1: slice
    mul1: int
    d1: int
    in2: slice
    mul2: int
    d2: int
    out: slice
    mul_out: int
    d_out: int
    weight: Optional[slice]  # None: the path has no weights
    cg: slice
    first_in1: bool  # the first path of the plan that touches this slice of in1 (or in2, out)
    first_in2: bool
    first_out: bool


class Layout(NamedTuple):
    paths: Tuple[Path, ...]
    gaps_in1: Tuple[slice, ...]  # ranges of in1 (in2, out) that no path touches
    gaps_in2: Tuple[slice, ...]
    gaps_out: Tuple[slice, ...]


def _gaps(covered: List[slice], dim: int) -> Tuple[slice, ...]:
    mask = [True] * dim
    for s in covered:
        mask[s] = [False] * (s.stop - s.start)
    gaps, start = [], None
    for i, free in enumerate(mask + [False]):
        if free and start is None:
            start = i
        elif not free and start is not None:
            gaps.append(slice(start, i))
            start = None
    return tuple(gaps)


@lru_cache(maxsize=256)
def layout(plan: Tuple[int, ...]) -> Layout:
    paths, seen = [], {"in1": set(), "in2": set(), "out": set()}
    for ins in _plan.unpack(plan):
        d1, d2, d_out = 2 * ins["l1"] + 1, 2 * ins["l2"] + 1, 2 * ins["l_out"] + 1
        uvu = ins["mode"] == _plan.MODES["uvu"]
        mul1, mul2, mul_out = ins["mul1"], ins["mul2"], ins["mul_out"]
        weight = None
        if ins["weight_offset"] != _plan.NO_WEIGHT:
            size = mul1 * mul2 * (1 if uvu else mul_out)
            weight = slice(ins["weight_offset"], ins["weight_offset"] + size)
        slices = {"in1": (ins["in1_offset"], mul1 * d1), "in2": (ins["in2_offset"], mul2 * d2),
                  "out": (ins["out_offset"], mul_out * d_out)}
        first = {k: start not in seen[k] for k, (start, _) in slices.items()}
        for k, (start, _) in slices.items():
            seen[k].add(start)
        s = {k: slice(start, start + size) for k, (start, size) in slices.items()}
        paths.append(Path(uvu, s["in1"], mul1, d1, s["in2"], mul2, d2, s["out"], mul_out, d_out, weight,
                          slice(ins["cg_offset"], ins["cg_offset"] + d1 * d2 * d_out),
                          first["in1"], first["in2"], first["out"]))
    dim1, dim2, dim_out, _ = _plan.dims(plan)
    return Layout(tuple(paths), _gaps([p.in1 for p in paths], dim1), _gaps([p.in2 for p in paths], dim2),
                  _gaps([p.out for p in paths], dim_out))


@lru_cache(maxsize=128)
def cg_blocks(plan: Tuple[int, ...], cg: Tuple[float, ...], dtype: torch.dtype, device: torch.device):
    """Per path: ``(C [d2, d_out * d1], C [d1 * d_out, d2])`` from ``C [d1, d2, d_out]``."""
    with torch.inference_mode(False), torch.no_grad():
        table = torch.tensor(cg, dtype=torch.float64)
        blocks = []
        for p in layout(plan).paths:
            C = table[p.cg].reshape(p.d1, p.d2, p.d_out)
            jki = C.permute(1, 2, 0).reshape(p.d2, p.d_out * p.d1)
            ikj = C.permute(0, 2, 1).reshape(p.d1 * p.d_out, p.d2)
            blocks.append((jki.to(dtype=dtype, device=device).contiguous(),
                           ikj.to(dtype=dtype, device=device).contiguous()))
    return tuple(blocks)


def setup(plan: List[int], cg: List[float], like: Tensor):
    """``(layout, cg_blocks)`` for a call whose float tensors are like ``like``."""
    plan_t = tuple(plan)
    return layout(plan_t), cg_blocks(plan_t, tuple(cg), like.dtype, like.device)


def new_result(like: Tensor, rows: int, cols: int, gaps: Tuple[slice, ...]) -> Tensor:
    """An uninitialized ``[rows, cols]`` result whose untouched ranges ``gaps`` are zero."""
    out = like.new_empty(rows, cols)
    for gap in gaps:
        out[:, gap].zero_()
    return out


def put(target: Tensor, value: Tensor, first: bool) -> None:
    """Write ``value`` into the view ``target``: copy for the first path, add for later ones."""
    if first:
        target.copy_(value)
    else:
        target.add_(value)
