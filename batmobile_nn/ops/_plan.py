"""Tensor-product problems as flat tables that can cross the ``torch.library`` op boundary.

e3nn computes each path's normalization; we build an ``o3.TensorProduct`` (without generating
its code) and read its normalized instructions, so our coefficients are e3nn's by construction.
Only ints and floats cross the op boundary (TorchScript, torch.compile and export need that):

``plan``: ``[n_instructions, dim_in1, dim_in2, dim_out, weight_numel]`` followed by
``INSTRUCTION_FIELDS`` ints per instruction (see ``FIELDS``).
``cg``: e3nn's ``wigner_3j(l1, l2, l_out)`` of each instruction, flattened ``[dim1, dim2, dim_out]``
and multiplied by the path's normalization weight.
"""

import itertools
from dataclasses import dataclass
from functools import lru_cache
from typing import List, Optional, Sequence, Tuple

import torch
from e3nn import o3

MODES = {"uvu": 0, "uvw": 1}
MODE_NAMES = {v: k for k, v in MODES.items()}
HEADER = 5
FIELDS = ("mode", "in1_offset", "mul1", "l1", "in2_offset", "mul2", "l2",
          "out_offset", "mul_out", "l_out", "weight_offset", "cg_offset")
INSTRUCTION_FIELDS = len(FIELDS)
NO_WEIGHT = -1  # weight_offset of an instruction without weights


@dataclass(frozen=True)
class TPPlan:
    """A tensor product described by e3nn irreps and instructions, flattened for the ops."""

    irreps_in1: o3.Irreps
    irreps_in2: o3.Irreps
    irreps_out: o3.Irreps
    instructions: Tuple  # e3nn's normalized Instruction namedtuples
    plan: Tuple[int, ...]
    cg: Tuple[float, ...]
    weight_numel: int
    # e3nn's generated code keeps its Wigner 3j tensors as buffers (``_w3j_l1_l2_l3``) that appear in
    # its state_dict; modules mirror them so that state_dicts load both ways.
    e3nn_buffers: Tuple[Tuple[str, object], ...] = ()

    @property
    def plan_list(self) -> List[int]:
        return list(self.plan)

    @property
    def cg_list(self) -> List[float]:
        return list(self.cg)


def _normalize_instruction(ins) -> tuple:
    ins = tuple(ins)
    if len(ins) == 3:  # e3nn allows (i1, i2, i_out) meaning uvw with weights
        ins = ins + ("uvw", True)
    return ins


def make_plan(irreps_in1, irreps_in2, irreps_out, instructions: Sequence,
              in1_var: Optional[Sequence[float]] = None, in2_var: Optional[Sequence[float]] = None,
              out_var: Optional[Sequence[float]] = None, irrep_normalization: Optional[str] = None,
              path_normalization: Optional[str] = None) -> TPPlan:
    """Build (and cache) the plan of an e3nn tensor product; arguments as ``o3.TensorProduct``."""
    key = (str(o3.Irreps(irreps_in1)), str(o3.Irreps(irreps_in2)), str(o3.Irreps(irreps_out)),
           tuple(_normalize_instruction(i) for i in instructions),
           None if in1_var is None else tuple(in1_var), None if in2_var is None else tuple(in2_var),
           None if out_var is None else tuple(out_var), irrep_normalization, path_normalization)
    return _make_plan_cached(key)


def _check_instruction(ins: tuple, irreps_in1: o3.Irreps, irreps_in2: o3.Irreps, irreps_out: o3.Irreps) -> None:
    """ValueErrors for what e3nn's constructor would only assert."""
    for index, irreps, name in zip(ins[:3], (irreps_in1, irreps_in2, irreps_out), ("in1", "in2", "out")):
        if not -len(irreps) <= index < len(irreps):  # e3nn indexes like Python
            raise ValueError(f"e3nn rejects instruction {ins}: index {index} is out of range for "
                             f"irreps_{name} {irreps}")
    (mul1, ir1), (_, ir2), (mul_out, ir_out) = irreps_in1[ins[0]], irreps_in2[ins[1]], irreps_out[ins[2]]
    if ir_out not in ir1 * ir2:
        raise ValueError(f"e3nn rejects instruction {ins}: {ir_out} is not in {ir1} x {ir2}")
    if ins[3] == "uvu" and mul_out != mul1:
        raise ValueError(f"instruction {ins}: 'uvu' needs mul_out == mul_in1 ({mul_out} != {mul1})")


@lru_cache(maxsize=256)
def _make_plan_cached(key) -> TPPlan:
    irreps_in1, irreps_in2, irreps_out, instructions, in1_var, in2_var, out_var, irrep_norm, path_norm = key
    for ins in instructions:
        if ins[3] not in MODES:
            raise ValueError(f"instruction {ins}: connection mode {ins[3]!r} is not supported; "
                             f"batmobile_nn implements {sorted(MODES)}")
        if ins[3] == "uvw" and not ins[4]:
            raise ValueError(f"instruction {ins}: 'uvw' needs weights (has_weight=True), as in e3nn")
        _check_instruction(ins, o3.Irreps(irreps_in1), o3.Irreps(irreps_in2), o3.Irreps(irreps_out))
    # e3nn computes each path's normalization (and would assert on anything the checks above let through).
    tp = o3.TensorProduct(irreps_in1, irreps_in2, irreps_out, list(instructions),
                          in1_var=None if in1_var is None else list(in1_var),
                          in2_var=None if in2_var is None else list(in2_var),
                          out_var=None if out_var is None else list(out_var),
                          irrep_normalization=irrep_norm, path_normalization=path_norm,
                          internal_weights=False, shared_weights=False,
                          compile_left_right=True, compile_right=False)
    plan = [len(tp.instructions), tp.irreps_in1.dim, tp.irreps_in2.dim, tp.irreps_out.dim, tp.weight_numel]
    cg: List[float] = []
    weight_offset = 0
    for ins in tp.instructions:
        mul1, ir1 = tp.irreps_in1[ins.i_in1]
        mul2, ir2 = tp.irreps_in2[ins.i_in2]
        mul_out, ir_out = tp.irreps_out[ins.i_out]
        w3j = o3.wigner_3j(ir1.l, ir2.l, ir_out.l, dtype=torch.float64) * ins.path_weight  # [dim1, dim2, dim_out]
        n_weights = 1
        for s in ins.path_shape:
            n_weights *= s
        plan += [MODES[ins.connection_mode],
                 tp.irreps_in1[: ins.i_in1].dim, mul1, ir1.l,
                 tp.irreps_in2[: ins.i_in2].dim, mul2, ir2.l,
                 tp.irreps_out[: ins.i_out].dim, mul_out, ir_out.l,
                 weight_offset if ins.has_weight else NO_WEIGHT, len(cg)]
        cg += w3j.flatten().tolist()
        if ins.has_weight:
            weight_offset += n_weights
    assert weight_offset == tp.weight_numel
    # names from e3nn's generated code; values recomputed in float64 (e3nn made them in the default dtype)
    e3nn_buffers = tuple((name, o3.wigner_3j(*(int(l) for l in name.split("_")[-3:]), dtype=torch.float64))
                         for name, _ in tp._compiled_main_left_right.named_buffers())
    return TPPlan(tp.irreps_in1, tp.irreps_in2, tp.irreps_out, tuple(tp.instructions),
                  tuple(plan), tuple(cg), tp.weight_numel, e3nn_buffers)


def unpack(plan: Sequence[int]):
    """Yield one dict per instruction of a flat plan (used by the reference and the checks)."""
    n = plan[0]
    for i in range(n):
        start = HEADER + i * INSTRUCTION_FIELDS
        yield dict(zip(FIELDS, plan[start:start + INSTRUCTION_FIELDS]))


def weighted_part(plan: Sequence[int]) -> List[int]:
    """The plan without its weightless instructions: the part of the product that depends on the weights.

    The product is ``T(x1, x2, w) = T_w(x1, x2, w) + T_0(x1, x2)`` where ``T_0`` gathers the paths without
    weights; only ``T_w`` is linear in ``w``, so terms of the double backward that carry a cotangent of the
    weights must use it (``ops/_trilinear.py``). Same header, weight layout and ``cg`` table.
    """
    kept = [i for i, ins in enumerate(unpack(plan)) if ins["weight_offset"] != NO_WEIGHT]
    if len(kept) == plan[0]:
        return list(plan)
    out = [len(kept)] + list(plan[1:HEADER])
    for i in kept:
        start = HEADER + i * INSTRUCTION_FIELDS
        out += plan[start:start + INSTRUCTION_FIELDS]
    return out


def dims(plan: Sequence[int]) -> Tuple[int, int, int, int]:
    """``(dim_in1, dim_in2, dim_out, weight_numel)`` of a flat plan."""
    return plan[1], plan[2], plan[3], plan[4]


# ---- the plan's cache key ----------------------------------------------------------------------------
# The CUDA path looks up its compiled kernels per (plan, cg) on every launch. Building and hashing a tuple of
# MACE-MP-medium's 527 numbers cost about 40 us of host time per launch on this project's VM (a tuple does not
# remember its hash); the token is remembered per pair of list objects and checked against a copy of their
# contents (a list changed in place gets the token of its new contents).
_tokens: "dict[tuple, int]" = {}
_next_token = itertools.count()  # next() and dict.setdefault are atomic: threads never share a token
_by_object: "dict[Tuple[int, int], tuple]" = {}
MAX_REMEMBERED = 64  # list pairs remembered; TorchScript passes new lists on every call


def token(plan: List[int], cg: List[float]) -> int:
    """An int equal for plans and coefficient lists of equal contents, different otherwise."""
    entry = _by_object.get((id(plan), id(cg)))
    if entry is not None and entry[0] is plan and entry[1] is cg and entry[2] == plan and entry[3] == cg:
        return entry[4]
    contents = (tuple(plan), tuple(cg))
    found = _tokens.get(contents)
    if found is None:
        found = _tokens.setdefault(contents, next(_next_token))  # a racing thread's token wins for both
    if len(_by_object) >= MAX_REMEMBERED:
        _by_object.clear()
    # holds the sequences (their ids stay theirs) and copies of the same type to compare with
    _by_object[(id(plan), id(cg))] = (plan, cg, plan[:], cg[:], found)
    return found

