"""Layers built on the batmobile ops (``EquivariantConv``, ``SymmetricContraction``; more as the kernels land)."""

from ._conv import EquivariantConv
from ._symmetric_contraction import SymmetricContraction

__all__ = ["EquivariantConv", "SymmetricContraction"]
