"""The linear swaps: an e3nn ``o3.Linear`` submodule of a block becomes ``batmobile_nn.o3.Linear``.

MACE calls its linears as ``self.<name>(features)`` (interaction blocks: ``linear_up`` and ``linear``;
product, embedding and readout blocks: ``linear``), so the block keeps its ``forward``; the stock module
is kept unregistered and comes back on unpatch with the current values. One swap per (block classes,
attribute).
"""

from typing import Callable, Optional, Sequence

import torch
from e3nn import o3

from ..o3 import Linear
from ..o3._linear import unsupported
from ._module_swap import ModuleSwap, StockModule


class LinearSwap(ModuleSwap):
    """``block.<attribute>`` (an e3nn ``o3.Linear``) -> ``batmobile_nn.o3.Linear``, for blocks of ``block_classes()``."""

    def __init__(self, attribute: str, block_classes: Callable[[], Sequence[type]]):
        self.attribute = attribute
        self.name = f"linear ({attribute})"
        self._block_classes = block_classes

    def applies_to(self, block: torch.nn.Module) -> bool:
        module = getattr(block, self.attribute, None)
        return isinstance(block, tuple(self._block_classes())) and (
            isinstance(module, o3.Linear) or isinstance(getattr(module, "_batmobile_stock", None), StockModule))

    def why_unsupported(self, block: torch.nn.Module) -> Optional[str]:
        if self.is_patched(block):
            return None
        reason = unsupported(getattr(block, self.attribute))
        return None if reason is None else f"its {self.attribute} is not supported ({reason})"

    def build(self, stock: torch.nn.Module) -> torch.nn.Module:
        return Linear.from_e3nn(stock)
