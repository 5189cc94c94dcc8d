"""The interaction-block fusion (opt-in: ``patch(model, fuse_interactions=True)``).

After the swaps, each supported interaction block whose convolution and radial MLP are batmobile_nn's is
replaced, in its parent (``model.interactions``), by a ``batmobile_nn.nn.FusedInteraction`` holding the block's
very submodules (same ``state_dict``); the block rides along unregistered and comes back on unpatch, before
the swaps are undone. What it changes: the convolution keeps the radial MLP's hidden features for the backward
instead of the per-edge weights (``ops.conv_radial``). Opt-in until measured on a GPU: the backward makes the
weights again (one matrix product more per interaction).
"""

from typing import Dict, List

import torch

from ..nn import EquivariantConv, FullyConnectedNet, FusedInteraction
from ..nn._fused_interaction import unsupported

BLOCK = "_batmobile_block"  # the stock-class block a FusedInteraction replaced (plain attribute, not a submodule)


def why_not_fused(block: torch.nn.Module) -> str:
    """Why ``block`` (a supported-class interaction block) is not fused, or "" when it can be."""
    if not isinstance(block.conv_tp, EquivariantConv):
        return "its convolution was not swapped"
    if not isinstance(block.conv_tp_weights, FullyConnectedNet):
        return "its radial MLP was not swapped"
    return unsupported(block) or ""


def fuse(model: torch.nn.Module, block_classes) -> Dict[str, List[str]]:
    """Replace the fusable blocks of ``block_classes`` in ``model``; returns {reason: [block names]} of those left."""
    left: Dict[str, List[str]] = {}
    for parent_name, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            if type(child) not in block_classes:
                continue
            reason = why_not_fused(child)
            if reason:
                left.setdefault(reason, []).append(f"{parent_name}.{name}" if parent_name else name)
                continue
            fused = FusedInteraction.from_mace(child)
            object.__setattr__(fused, BLOCK, child)  # out of state_dict, .to() and parameters(): shares submodules
            setattr(parent, name, fused)
    return left


def defuse(model: torch.nn.Module) -> None:
    """Put back the blocks ``fuse`` replaced (their submodules are the fused modules' own, with current values)."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            block = getattr(child, BLOCK, None) if isinstance(child, FusedInteraction) else None
            if block is not None:
                # the submodules are shared; plain attributes were copied (mace's fine-tuning sets
                # avg_num_neighbors on live models): the block takes the fused module's current ones
                for attribute in ("avg_num_neighbors",) + FusedInteraction._MACE_ATTRIBUTES:
                    if hasattr(child, attribute):
                        setattr(block, attribute, getattr(child, attribute))
                setattr(parent, name, block)


def is_fused(model: torch.nn.Module) -> bool:
    return any(isinstance(module, FusedInteraction) and hasattr(module, BLOCK) for module in model.modules())
