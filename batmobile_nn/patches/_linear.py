"""The linear swaps: an e3nn ``o3.Linear`` submodule of a block becomes ``batmobile_nn.o3.Linear``.

MACE calls its linears as ``self.<name>(features)`` (interaction blocks: ``linear_up`` and ``linear``;
product, embedding and readout blocks: ``linear``), so the block keeps its ``forward``; the stock module
is kept unregistered and comes back on unpatch with the current values. One swap per (block classes,
attribute).
"""

from typing import Callable, Sequence

import torch
from e3nn import o3

from ..o3 import Linear
from ..o3._linear import unsupported
from ._module_swap import ModuleSwap


class LinearSwap(ModuleSwap):
    """``block.<attribute>`` (an e3nn ``o3.Linear``) -> ``batmobile_nn.o3.Linear``, for blocks of ``block_classes()``."""

    stock_types = (o3.Linear,)

    def __init__(self, attribute: str, block_classes: Callable[[], Sequence[type]]):
        super().__init__(block_classes)
        self.attribute = attribute
        self.name = f"linear ({attribute})"

    def unsupported(self, stock: torch.nn.Module):
        return unsupported(stock)

    def build(self, stock: torch.nn.Module) -> torch.nn.Module:
        return Linear.from_e3nn(stock)
