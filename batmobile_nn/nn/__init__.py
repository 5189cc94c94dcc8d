"""Layers built on the batmobile ops (``EquivariantConv``, ``ElementLinear``, ``SymmetricContraction``; more as the kernels land)."""

from ._conv import EquivariantConv
from ._element_linear import ElementLinear
from ._radial import FullyConnectedNet
from ._symmetric_contraction import SymmetricContraction

__all__ = ["EquivariantConv", "ElementLinear", "FullyConnectedNet", "SymmetricContraction"]
