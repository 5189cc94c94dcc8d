"""``ModuleSwap``: a swap that replaces one submodule of a block by a module called the same way.

The block keeps its class and ``forward``; the new module holds the stock module's very tensors (same
``state_dict``), and the stock module rides along unregistered (out of ``state_dict``, ``.to()`` and
``parameters()``) to come back on unpatch with the current values, device and dtype.
"""

import itertools
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Tuple

import torch

from ._registry import Swap


@dataclass
class StockModule:
    """What unpatch needs (plain data, so that it survives ``copy.deepcopy`` and pickling of a patched model)."""

    module: torch.nn.Module


class ModuleSwap(Swap):
    """Subclass with ``attribute`` (the submodule's name), ``stock_types`` (the stock module's classes),
    ``unsupported(stock)`` (why ours cannot compute it, or None) and ``build(stock)`` (ours, holding stock's
    tensors)."""

    attribute: str = ""
    stock_types: Tuple[type, ...] = ()

    def __init__(self, block_classes: Optional[Callable[[], Sequence[type]]] = None):
        self._block_classes = block_classes  # the blocks it is about (called at patch time), or any

    def applies_to(self, block: torch.nn.Module) -> bool:
        classes = () if self._block_classes is None else tuple(self._block_classes())
        return (self._block_classes is None or isinstance(block, classes)) and self.holds_swappable(block)

    def unsupported(self, stock: torch.nn.Module) -> Optional[str]:
        return None

    def holds_swappable(self, block: torch.nn.Module) -> bool:
        """Whether ``block.<attribute>`` is a stock module this swap is about, or ours in its place."""
        module = getattr(block, self.attribute, None)
        return isinstance(module, self.stock_types) or isinstance(getattr(module, "_batmobile_stock", None),
                                                                  StockModule)

    def why_unsupported(self, block: torch.nn.Module) -> Optional[str]:
        if self.is_patched(block):
            return None
        reason = self.unsupported(getattr(block, self.attribute))
        return None if reason is None else f"its {self.attribute} is not supported ({reason})"

    def build(self, stock: torch.nn.Module) -> torch.nn.Module:
        raise NotImplementedError

    def is_patched(self, block: torch.nn.Module) -> bool:
        return isinstance(getattr(getattr(block, self.attribute), "_batmobile_stock", None), StockModule)

    def patch_block(self, block: torch.nn.Module) -> None:
        stock = getattr(block, self.attribute)
        ours = self.build(stock)
        object.__setattr__(ours, "_batmobile_stock", StockModule(stock))  # not a submodule
        setattr(block, self.attribute, ours)

    def unpatch_block(self, block: torch.nn.Module) -> None:
        ours = getattr(block, self.attribute)
        stock = ours._batmobile_stock.module
        # the device and dtype the model lives in now (a module without tensors, e.g. the harmonics, has none)
        reference = next((t for t in itertools.chain(ours.parameters(), ours.buffers()) if t.is_floating_point()),
                         None)
        if reference is not None:
            stock.to(device=reference.device, dtype=reference.dtype)
        stock.load_state_dict(ours.state_dict(), strict=True)
        setattr(block, self.attribute, stock)
