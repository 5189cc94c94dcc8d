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
from typing import Any, Callable, List, Optional, Sequence

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


def _stock_coefficients(stock: o3.TensorProduct) -> List[float]:
    """The Clebsch-Gordan table of ``stock`` as it computes it, in the op's ``cg`` layout.

    e3nn multiplies each path by its ``path_weight`` and by the ``_w3j_*`` buffer of its generated
    code, a buffer kept in the default dtype of the moment the module was built (so float32 values in a
    model built in float32 and converted to float64); paths with an ``l = 0`` input or output use
    exact ``1/sqrt(d)`` in place of a buffer. Reading the buffers makes the patched model compute what
    this very module computes, whatever dtype it was built in.
    """
    compiled = getattr(stock, "_compiled_main_left_right", None)
    buffers = dict(compiled.named_buffers()) if isinstance(compiled, torch.nn.Module) else {}
    cg: List[float] = []
    for ins in stock.instructions:
        l1, l2 = stock.irreps_in1[ins.i_in1].ir.l, stock.irreps_in2[ins.i_in2].ir.l
        l_out = stock.irreps_out[ins.i_out].ir.l
        w3j = buffers.get(f"_w3j_{l1}_{l2}_{l_out}")
        if w3j is None:
            w3j = o3.wigner_3j(l1, l2, l_out, dtype=torch.float64)
        cg += (w3j.detach().to("cpu", torch.float64) * ins.path_weight).flatten().tolist()  # [d1 * d2 * d_out]
    return cg


def fused_conv_from(stock: o3.TensorProduct) -> EquivariantConv:
    """An ``EquivariantConv`` computing exactly what ``stock`` followed by MACE's scatter_sum computes.

    The returned module holds ``stock``'s tensors themselves (same device, dtype, values) under the
    same ``state_dict`` keys.

    >>> tp = o3.TensorProduct("4x0e", "0e+1o", "4x0e+4x1o", [(0, 0, 0, "uvu", True), (0, 1, 1, "uvu", True)],
    ...                       shared_weights=False, internal_weights=False)
    >>> fused_conv_from(tp).state_dict().keys() == tp.state_dict().keys()
    True
    """
    instructions = [(i.i_in1, i.i_in2, i.i_out, i.connection_mode, i.has_weight) for i in stock.instructions]
    conv = EquivariantConv(stock.irreps_in1, stock.irreps_in2, stock.irreps_out, instructions,
                           shared_weights=stock.shared_weights, internal_weights=stock.internal_weights)
    shapes = [(i.i_in1, i.i_in2, i.i_out, i.connection_mode, i.has_weight, i.path_shape) for i in stock.instructions]
    if shapes != [(i.i_in1, i.i_in2, i.i_out, i.connection_mode, i.has_weight, i.path_shape)
                  for i in conv.instructions] or conv.weight_numel != stock.weight_numel:
        raise ValueError(f"EquivariantConv does not reproduce the paths of {stock}")
    # Same path weights and coefficients as the stock module (they differ from the defaults when the
    # module was built with other normalizations or in float32).
    cg = _stock_coefficients(stock)
    if len(cg) != len(conv._cg):
        raise ValueError(f"EquivariantConv's coefficient table does not match {stock}")
    conv.instructions = list(stock.instructions)
    conv._cg = cg
    conv.load_state_dict(stock.state_dict(), strict=True, assign=True)
    return conv


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
        conv = fused_conv_from(stock)
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
