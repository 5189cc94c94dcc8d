"""The radial swap: the e3nn ``conv_tp_weights`` MLP of MACE's interaction blocks becomes ``batmobile_nn.nn.FullyConnectedNet``.

MACE's blocks compute the convolution's per-edge weights as ``self.conv_tp_weights(edge_feats)`` with an
e3nn ``FullyConnectedNet`` (SiLU); ours holds the same layers and computes the same function in two
kernels a layer instead of five. The stock module is kept unregistered and comes back on unpatch.
"""

import torch
from e3nn import nn as e3nn_nn

from ..nn import FullyConnectedNet
from ..nn._radial import unsupported
from ._module_swap import ModuleSwap


class RadialSwap(ModuleSwap):
    """``block.conv_tp_weights`` (e3nn's MLP) -> ``batmobile_nn.nn.FullyConnectedNet``, for blocks of ``block_classes()``."""

    name = "radial MLP"
    attribute = "conv_tp_weights"
    stock_types = (e3nn_nn.FullyConnectedNet,)

    def unsupported(self, stock: torch.nn.Module):
        return unsupported(stock)

    def build(self, stock: torch.nn.Module) -> torch.nn.Module:
        return FullyConnectedNet.from_e3nn(stock)
