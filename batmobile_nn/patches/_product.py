"""The product-basis swap: mace's e3nn ``SymmetricContraction`` becomes ``batmobile_nn.nn.SymmetricContraction``.

MACE's ``EquivariantProductBasisBlock.forward`` (mace-torch 0.3.16) calls
``self.symmetric_contractions(node_feats, node_attrs)`` with ``node_feats [n, num_features, dim]`` and the
one-hot ``node_attrs`` when its cuEquivariance config is off, which is the call our module takes; so the
block keeps its class and stock ``forward``. Our module holds the stock module's very tensors (same
``state_dict``); the stock module is kept unregistered and comes back on unpatch with the current values.
"""

from typing import Callable, Optional

import torch

from ..nn import SymmetricContraction
from ._module_swap import ModuleSwap


class ProductSwap(ModuleSwap):
    """``block.symmetric_contractions`` (mace's e3nn module) -> ``SymmetricContraction``, for blocks of
    ``block_class`` whose ``forward`` is ``stock_forward()`` and whose module is of class ``stock_class``."""

    name = "product"
    attribute = "symmetric_contractions"

    def __init__(self, block_class: type, stock_class: type, stock_forward: Callable[[], Callable]):
        self._block_class, self._stock_class, self._stock_forward = block_class, stock_class, stock_forward

    def applies_to(self, block: torch.nn.Module) -> bool:
        return isinstance(block, self._block_class)

    def why_unsupported(self, block: torch.nn.Module) -> Optional[str]:
        if self.is_patched(block):
            return None
        if "forward" in vars(block) or type(block).forward is not self._stock_forward():
            return "its forward is not mace's EquivariantProductBasisBlock.forward"
        config = getattr(block, "cueq_config", None)
        if config is not None and getattr(config, "enabled", False) and (
                getattr(config, "optimize_all", False) or getattr(config, "optimize_symmetric", False)):
            return "its symmetric contraction runs on cuEquivariance (cueq_config)"
        kind = type(block.symmetric_contractions)
        if kind is not self._stock_class:
            return f"its symmetric_contractions is a {kind.__module__}.{kind.__qualname__}, not mace's e3nn module"
        return None

    def build(self, stock: torch.nn.Module) -> torch.nn.Module:
        return SymmetricContraction.from_mace(stock)
