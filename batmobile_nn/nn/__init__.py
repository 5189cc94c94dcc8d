"""Layers built on the batmobile ops (``EquivariantConv``; more as the kernels land)."""

from ._conv import EquivariantConv

__all__ = ["EquivariantConv"]
