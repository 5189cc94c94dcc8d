"""Layers built on the batmobile ops (``EquivariantConv``, ``ElementLinear``, ``FusedInteraction``, ``SymmetricContraction``, ...)."""

from ._conv import EquivariantConv
from ._element_linear import ElementLinear
from ._fused_interaction import FusedInteraction
from ._radial import FullyConnectedNet
from ._symmetric_contraction import SymmetricContraction

__all__ = ["EquivariantConv", "ElementLinear", "FusedInteraction", "FullyConnectedNet", "SymmetricContraction"]
