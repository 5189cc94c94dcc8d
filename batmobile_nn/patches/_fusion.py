"""The interaction-block fusion: ``patch(model, fuse_interactions="auto" | True | False)``.

Both fusions take the radial MLP's last layer into the convolution (``ops.conv_radial``): what autograd keeps
for the backward is the MLP's hidden features ``[n_edges, hidden]`` instead of the per-edge weights
``[n_edges, weight_numel]``, and the backward makes the weights again (one matrix product more).

"auto" (``patch``'s default) pairs, in every block but its parent's last and where ``weight_numel`` is above the
MLP's hidden width (MACE-MP's first block: 512 against 64), the block's radial MLP (``nn.FullyConnectedNet``)
with its convolution (``nn.EquivariantConv``; ``nn/_pairing.py``); the block stays mace's, with mace's forward.
While the MLP's last weight needs no gradient (inference, MD) and not under TorchScript, the MLP stops before its
last layer and the convolution applies it; otherwise both compute as unpaired. Why these blocks: an
energy-and-forces step peaks in the last block's convolution backward, with every earlier block's weights alive
(``torch.cuda.memory`` traces on an H200, MACE-MP-medium at 1,000 atoms, float32: 71.5 MB); pairing an earlier
block frees its weights, pairing the last one would only add its matrix product. With trainable weights the
weight gradient needs the buffer anyway.

True replaces every supported block, in its parent (``model.interactions``), by a
``batmobile_nn.nn.FusedInteraction`` holding the block's very submodules (same ``state_dict``), always fused;
the block rides along unregistered and comes back on unpatch, before the swaps are undone.
"""

from typing import Dict, List

import torch

from ..nn import EquivariantConv, FullyConnectedNet, FusedInteraction
from ..nn import _pairing
from ..nn._fused_interaction import unsupported

BLOCK = "_batmobile_block"  # the stock-class block a FusedInteraction replaced (plain attribute, not a submodule)


def why_not_fused(block: torch.nn.Module) -> str:
    """Why ``block`` (a supported-class interaction block) is not fused, or "" when it can be."""
    if not isinstance(block.conv_tp, EquivariantConv):
        return "its convolution was not swapped"
    if not isinstance(block.conv_tp_weights, FullyConnectedNet):
        return "its radial MLP was not swapped"
    return unsupported(block) or ""


def fuse(model: torch.nn.Module, block_classes, mode) -> Dict[str, List[str]]:
    """Fuse the blocks of ``block_classes`` in ``model`` as ``mode`` ("auto" or True, see above) says; returns
    {reason: [block names]} of the blocks left."""
    left: Dict[str, List[str]] = {}
    for parent_name, parent in list(model.named_modules()):
        children = list(parent.named_children())
        for index, (name, child) in enumerate(children):
            if type(child) not in block_classes or (mode == "auto" and (index == len(children) - 1
                                                                          or not _pairing_saves_memory(child))):
                continue
            reason = why_not_fused(child)
            if reason:
                left.setdefault(reason, []).append(f"{parent_name}.{name}" if parent_name else name)
            elif mode == "auto":
                pair(child)
            else:
                fused = FusedInteraction.from_mace(child)
                object.__setattr__(fused, BLOCK, child)  # out of state_dict, .to(), parameters(): shares submodules
                setattr(parent, name, fused)
    return left


def _pairing_saves_memory(block: torch.nn.Module) -> bool:
    """Whether the paired block keeps less for the backward: ``[n_edges, hidden]`` instead of the weights."""
    radial = block.conv_tp_weights
    return isinstance(radial, FullyConnectedNet) and block.conv_tp.weight_numel > radial.hs[-2]


def _has_conv_and_radial(block: torch.nn.Module) -> bool:
    """Whether ``block`` is an interaction block with a convolution and a radial MLP (mace's names)."""
    return hasattr(block, "conv_tp") and hasattr(block, "conv_tp_weights")


def pair(block: torch.nn.Module) -> None:
    """The radial MLP of ``block`` defers its last layer to the block's convolution (see above)."""
    _pairing.link(block.conv_tp_weights, block.conv_tp)


def paired(block: torch.nn.Module) -> bool:
    conv = block.conv_tp
    return isinstance(conv, EquivariantConv) and (
        _pairing.partner(conv, _pairing.CONV_TO_RADIAL, _pairing.RADIAL_TO_CONV) is block.conv_tp_weights)


def unpair(block: torch.nn.Module) -> None:
    _pairing.unlink(block.conv_tp_weights, block.conv_tp)


def defuse(model: torch.nn.Module) -> None:
    """Undo ``fuse``: unpair the paired blocks, and put back the blocks ``FusedInteraction``s replaced (their
    submodules are the fused modules' own, with current values)."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if _has_conv_and_radial(child):
                unpair(child)
            block = getattr(child, BLOCK, None) if isinstance(child, FusedInteraction) else None
            if block is not None:
                child.sync_attributes(block)  # plain attributes set while fused (mace's fine-tuning sets some)
                setattr(parent, name, block)


def fused_mode(model: torch.nn.Module):
    """The ``fuse_interactions`` that ``patch`` applied: "auto" (paired blocks), True (``FusedInteraction``s), or
    False."""
    modules = list(model.modules())
    if any(isinstance(m, FusedInteraction) and hasattr(m, BLOCK) for m in modules):
        return True
    if any(_has_conv_and_radial(m) and paired(m) for m in modules):
        return "auto"
    return False
