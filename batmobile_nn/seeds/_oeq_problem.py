"""OpenEquivariance's ``TPProblem``: an e3nn tensor-product description, with dtypes, and no weights.

The signature and attributes are OpenEquivariance's (``openequivariance.TPProblem``); the normalization
and the weight layout are e3nn's, computed by ``batmobile_nn.ops.make_plan`` from an ``o3.TensorProduct``.
"""

import copy
from math import prod
from typing import List, Optional, Tuple

import numpy as np
import torch

from ..ops import make_plan

_DTYPES = {np.float32: torch.float32, np.float64: torch.float64,
           torch.float32: torch.float32, torch.float64: torch.float64}


def _fail(message: str):
    raise ValueError(f"batmobile_nn.TPProblem: {message}")


def torch_dtype(dtype, name: str = "dtype") -> torch.dtype:
    """``np.float32`` / ``np.float64`` / ``np.dtype(...)`` / ``torch.float32`` / ``torch.float64`` -> torch dtype."""
    if isinstance(dtype, np.dtype):
        dtype = dtype.type
    try:
        return _DTYPES[dtype]
    except (KeyError, TypeError):
        raise ValueError(f"batmobile_nn: {name} must be float32 or float64 (numpy or torch), got {dtype!r}") from None


class TPProblem:
    """A CG tensor product as e3nn's ``o3.TensorProduct`` describes it (OpenEquivariance's ``TPProblem``).

    Args:
        irreps_in1, irreps_in2, irreps_out: e3nn irreps (``str`` or ``o3.Irreps``).
        instructions: e3nn instructions ``(i_in1, i_in2, i_out, mode, has_weight[, path_weight])``;
            modes ``"uvu"`` and ``"uvw"``.
        in1_var, in2_var, out_var, irrep_normalization (``"component"|"norm"|"none"``),
        path_normalization (``"element"|"path"|"none"``): as in e3nn.
        internal_weights: must be False (weights are a ``forward`` argument, as in OpenEquivariance).
        shared_weights: one weight vector for the whole batch (``[weight_numel]``) or one per sample / edge.
            ``None`` means True (e3nn's and OpenEquivariance's default).
        label: a name (free text).
        irrep_dtype, weight_dtype: float32 or float64, numpy or torch; inputs must come in these dtypes.
        layout: ``"mul_ir"`` (e3nn's; the only one supported).

    Attributes: the arguments, plus ``instructions`` (e3nn's normalized ``Instruction`` tuples, with
    ``path_weight`` and ``path_shape``), ``weight_numel``, and ``plan`` (the ``batmobile_nn.ops.TPPlan``
    the ops run). Weights are in e3nn's layout.

    >>> problem = TPProblem("8x0e+8x1o", "0e+1o", "8x0e+8x1o",
    ...                     [(0, 0, 0, "uvu", True), (0, 1, 1, "uvu", True), (1, 0, 1, "uvu", True)])
    >>> problem.weight_numel, problem.shared_weights
    (24, True)
    """

    def __init__(self, irreps_in1, irreps_in2, irreps_out, instructions: List[tuple],
                 in1_var: Optional[List[float]] = None, in2_var: Optional[List[float]] = None,
                 out_var: Optional[List[float]] = None, irrep_normalization: str = "component",
                 path_normalization: str = "element", internal_weights: Optional[bool] = False,
                 shared_weights: Optional[bool] = None, label: Optional[str] = None,
                 irrep_dtype=np.float32, weight_dtype=np.float32, layout: str = "mul_ir"):
        if irrep_normalization not in ("component", "norm", "none"):
            _fail(f"irrep_normalization must be 'component', 'norm' or 'none', got {irrep_normalization!r}")
        if path_normalization not in ("element", "path", "none"):
            _fail(f"path_normalization must be 'element', 'path' or 'none', got {path_normalization!r}")
        if layout != "mul_ir":
            _fail(f"layout must be 'mul_ir' (e3nn's), got {layout!r}")
        if internal_weights:
            _fail("internal_weights must be False: pass the weights to forward "
                  "(batmobile_nn.o3.TensorProduct holds internal weights)")
        torch_dtype(irrep_dtype, "irrep_dtype")
        torch_dtype(weight_dtype, "weight_dtype")
        for ins in instructions:
            if len(ins) not in (5, 6):
                _fail(f"each instruction is (i_in1, i_in2, i_out, mode, has_weight[, path_weight]), got {ins!r}")
        try:
            self.plan = make_plan(irreps_in1, irreps_in2, irreps_out, [tuple(i) for i in instructions],
                                  in1_var, in2_var, out_var, irrep_normalization, path_normalization)
        except (AssertionError, IndexError) as error:  # e3nn validates with asserts
            _fail(f"e3nn rejects this tensor product ({type(error).__name__}: {error}); check the irreps indices, "
                  f"parities and triangle rule of {list(instructions)}")
        self.irreps_in1, self.irreps_in2, self.irreps_out = self.plan.irreps_in1, self.plan.irreps_in2, \
            self.plan.irreps_out
        self.instructions_raw = list(instructions)
        self.instructions = list(self.plan.instructions)
        self.in1_var, self.in2_var, self.out_var = in1_var, in2_var, out_var
        self.irrep_normalization, self.path_normalization = irrep_normalization, path_normalization
        self.internal_weights = False
        self.shared_weights = True if shared_weights is None else bool(shared_weights)
        self.label = "" if label is None else label
        self.irrep_dtype, self.weight_dtype = irrep_dtype, weight_dtype
        self.layout = layout
        self.weight_numel = self.plan.weight_numel

    def weight_range_and_shape_for_instruction(self, instruction: int) -> Tuple[int, int, tuple]:
        """``(start, stop, path_shape)`` of an instruction's weights in the flat (e3nn) weight vector."""
        ins = self.instructions[instruction]
        if not ins.has_weight:
            raise ValueError(f"batmobile_nn.TPProblem: instruction {instruction} has no weights")
        start = sum(prod(i.path_shape) for i in self.instructions[:instruction] if i.has_weight)
        return start, start + prod(ins.path_shape), ins.path_shape

    def clone(self) -> "TPProblem":
        return copy.deepcopy(self)

    def __str__(self) -> str:
        return (f"TPProblem({self.irreps_in1.simplify()} x {self.irreps_in2.simplify()}) -> "
                f"{self.irreps_out.simplify()}")

    def __repr__(self) -> str:
        return (f"{self} | {len(self.instructions)} instructions | {self.weight_numel} weights | "
                f"shared_weights={self.shared_weights} | irrep_dtype={torch_dtype(self.irrep_dtype)}")
