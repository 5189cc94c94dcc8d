"""The skip swap: the e3nn ``skip_tp`` of MACE's interaction blocks becomes ``batmobile_nn.nn.ElementLinear``.

MACE's interaction blocks (mace-torch 0.3.16) call ``self.skip_tp(node_feats, node_attrs)`` (or
``(message, node_attrs)``) with an e3nn ``FullyConnectedTensorProduct(irreps, "E x 0e", irreps_out)``
and the one-hot ``node_attrs``: a linear map per element, which ``ElementLinear`` computes without e3nn's
``[n_nodes, mul_in, mul_out]`` per-node weight. The module is called the same way, so the block keeps
its ``forward``; the stock module is kept unregistered and comes back on unpatch with the current values.
"""

from typing import Optional

import torch
from e3nn import o3

from ..nn import ElementLinear
from ..nn._element_linear import _unsupported
from ._module_swap import ModuleSwap, StockModule


class SkipSwap(ModuleSwap):
    """``block.skip_tp`` (an e3nn per-element tensor product) -> ``ElementLinear``, for blocks of ``block_classes``."""

    name = "skip"
    attribute = "skip_tp"

    def __init__(self, block_classes):
        self._block_classes = block_classes

    def applies_to(self, block: torch.nn.Module) -> bool:
        # blocks whose skip is an e3nn tensor product (mace's ResidualNonLinear block's is an o3.Linear)
        skip = getattr(block, "skip_tp", None)
        return isinstance(block, tuple(self._block_classes())) and (
            isinstance(skip, o3.TensorProduct) or isinstance(getattr(skip, "_batmobile_stock", None), StockModule))

    def why_unsupported(self, block: torch.nn.Module) -> Optional[str]:
        if self.is_patched(block):
            return None
        reason = _unsupported(block.skip_tp)
        return None if reason is None else f"its skip_tp is not a per-element linear ({reason})"

    def build(self, stock: torch.nn.Module) -> torch.nn.Module:
        return ElementLinear.from_e3nn(stock)
