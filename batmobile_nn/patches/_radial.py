"""The radial swap: the e3nn ``conv_tp_weights`` MLP of MACE's interaction blocks becomes ``batmobile_nn.nn.FullyConnectedNet``.

MACE's blocks compute the convolution's per-edge weights as ``self.conv_tp_weights(edge_feats)`` with an
e3nn ``FullyConnectedNet`` (SiLU); ours holds the same layers and computes the same function in two
kernels a layer instead of five. The stock module is kept unregistered and comes back on unpatch.
"""

from typing import Optional

import torch
from e3nn import nn as e3nn_nn

from ..nn import FullyConnectedNet
from ..nn._radial import unsupported
from ._module_swap import ModuleSwap, StockModule


class RadialSwap(ModuleSwap):
    """``block.conv_tp_weights`` (e3nn's MLP) -> ``batmobile_nn.nn.FullyConnectedNet``, for blocks of ``block_classes``."""

    name = "radial MLP"
    attribute = "conv_tp_weights"

    def __init__(self, block_classes):
        self._block_classes = block_classes

    def applies_to(self, block: torch.nn.Module) -> bool:
        module = getattr(block, self.attribute, None)
        return isinstance(block, tuple(self._block_classes())) and (
            isinstance(module, e3nn_nn.FullyConnectedNet)
            or isinstance(getattr(module, "_batmobile_stock", None), StockModule))

    def why_unsupported(self, block: torch.nn.Module) -> Optional[str]:
        if self.is_patched(block):
            return None
        reason = unsupported(block.conv_tp_weights)
        return None if reason is None else f"its conv_tp_weights is not supported ({reason})"

    def build(self, stock: torch.nn.Module) -> torch.nn.Module:
        return FullyConnectedNet.from_e3nn(stock)
