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
from ._module_swap import ModuleSwap


class SkipSwap(ModuleSwap):
    """``block.skip_tp`` (an e3nn per-element tensor product) -> ``ElementLinear``, for blocks of ``block_classes``."""

    name = "skip"
    attribute = "skip_tp"
    stock_types = (o3.TensorProduct,)  # (mace's ResidualNonLinear block's skip is an o3.Linear: not this swap)

    def unsupported(self, stock: torch.nn.Module) -> Optional[str]:
        reason = _unsupported(stock)
        return None if reason is None else f"not a per-element linear: {reason}"

    def build(self, stock: torch.nn.Module) -> torch.nn.Module:
        return ElementLinear.from_e3nn(stock)
