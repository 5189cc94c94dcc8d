"""The convolution swap: a block's e3nn ``conv_tp`` + ``scatter_sum`` becomes one ``EquivariantConv``.

MACE's interaction blocks (mace-torch 0.3.16) already carry a fused branch in their ``forward``::

    if hasattr(self, "conv_fusion"):
        message = self.conv_tp(node_feats, edge_attrs, tp_weights, edge_index)
    else:
        message = scatter_sum(self.conv_tp(node_feats[edge_index[0]], edge_attrs, tp_weights), edge_index[1], ...)

so the swap sets ``block.conv_fusion`` and replaces ``block.conv_tp``; the block keeps its class and
its stock ``forward``, which is why the math around the convolution (``/ avg_num_neighbors``,
densities, residuals, ...) is stock by construction. The stock module is kept (unregistered, so it
is not in the ``state_dict``) and comes back on unpatch with the patched module's tensors.
"""

from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import torch
from e3nn import o3

from ..nn import EquivariantConv
from ._registry import Swap

FUSION_FLAG = "conv_fusion"  # the attribute MACE's forwards test with hasattr


@dataclass
class _StockConv:
    """What unpatch needs: the e3nn module and the block's ``conv_fusion`` attribute before patching
    (plain data, so that it survives ``copy.deepcopy`` and pickling of a patched model)."""

    conv_tp: torch.nn.Module
    had_conv_fusion: bool
    conv_fusion: Any = None


class ConvSwap(Swap):
    """``block.conv_tp`` (e3nn ``o3.TensorProduct``) -> ``EquivariantConv``, for blocks whose class'
    ``forward`` has the ``conv_fusion`` branch (``fused_forwards``)."""

    name = "conv"

    def __init__(self, fused_forwards: Callable[[], Sequence[Callable]]):
        self._fused_forwards = fused_forwards

    def applies_to(self, block: torch.nn.Module) -> bool:
        return isinstance(getattr(block, "conv_tp", None), torch.nn.Module)

    def is_patched(self, block: torch.nn.Module) -> bool:
        return isinstance(getattr(block.conv_tp, "_batmobile_stock", None), _StockConv)

    def why_unsupported(self, block: torch.nn.Module) -> Optional[str]:
        if self.is_patched(block):
            return None
        if "forward" in vars(block) or type(block).forward not in self._fused_forwards():
            return "its forward has no fused-convolution branch that batmobile_nn knows"
        if type(block.conv_tp) is not o3.TensorProduct:
            kind = type(block.conv_tp)
            return f"its conv_tp is a {kind.__module__}.{kind.__qualname__}, not an e3nn o3.TensorProduct"
        modes = sorted({ins.connection_mode for ins in block.conv_tp.instructions} - {"uvu", "uvw"})
        if modes:
            return f"its conv_tp has {modes} paths (EquivariantConv has 'uvu' and 'uvw')"
        return None

    def patch_block(self, block: torch.nn.Module) -> None:
        stock = block.conv_tp
        conv = EquivariantConv.from_e3nn(stock)
        # a plain attribute, not a submodule: out of state_dict, .to() and parameters()
        saved = _StockConv(stock, FUSION_FLAG in vars(block), vars(block).get(FUSION_FLAG))
        object.__setattr__(conv, "_batmobile_stock", saved)
        block.conv_tp = conv
        setattr(block, FUSION_FLAG, "batmobile")

    def unpatch_block(self, block: torch.nn.Module) -> None:
        conv = block.conv_tp
        saved: _StockConv = conv._batmobile_stock
        stock = saved.conv_tp
        reference = conv.output_mask  # the device and dtype the model lives in now
        stock.to(device=reference.device, dtype=reference.dtype)
        stock.load_state_dict(conv.state_dict(), strict=True)
        block.conv_tp = stock
        if saved.had_conv_fusion:
            setattr(block, FUSION_FLAG, saved.conv_fusion)
        else:
            delattr(block, FUSION_FLAG)
