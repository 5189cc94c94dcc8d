"""``ModuleSwap``: a swap that replaces one submodule of a block by a module called the same way.

The block keeps its class and ``forward``; the new module holds the stock module's very tensors (same
``state_dict``), and the stock module rides along unregistered (out of ``state_dict``, ``.to()`` and
``parameters()``) to come back on unpatch with the current values, device and dtype.
"""

import itertools
from dataclasses import dataclass

import torch

from ._registry import Swap


@dataclass
class StockModule:
    """What unpatch needs (plain data, so that it survives ``copy.deepcopy`` and pickling of a patched model)."""

    module: torch.nn.Module


class ModuleSwap(Swap):
    """Subclass with ``attribute`` (the submodule's name) and ``build(stock)`` (ours, holding stock's tensors)."""

    attribute: str = ""

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
