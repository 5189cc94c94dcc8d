"""The interaction-block fusion: ``patch(model, fuse_interactions="auto" | True | False)``.

After the swaps, supported interaction blocks whose convolution and radial MLP are batmobile_nn's are
replaced, in their parent (``model.interactions``), by ``batmobile_nn.nn.FusedInteraction``s holding the blocks'
very submodules (same ``state_dict``); each block rides along unregistered and comes back on unpatch, before
the swaps are undone. What it changes: the convolution keeps the radial MLP's hidden features for the backward
instead of the per-edge weights (``ops.conv_radial``), and the backward makes the weights again (one matrix
product more).

"auto" (``patch``'s default) fuses every block but its parent's last, with ``fuse_radial="frozen"``, where the
block's ``weight_numel`` is above the radial MLP's hidden width (MACE-MP: 256 or 512 against 64). The peak of an
energy-and-forces step is the last block's convolution backward, with every earlier block's weights alive
(by ``torch.cuda.memory`` traces on an H200: MACE-MP-medium at 1,000 atoms, float32); fusing an earlier block
frees its weights and keeps its hidden features instead, fusing the last one only adds its matrix product. With
trainable weights nothing is fused, since the weight gradient needs the buffer anyway
(``nn/_fused_interaction.py``). True fuses every block, always.
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


MODES = ("auto", True, False)  # patch's fuse_interactions


def fuse(model: torch.nn.Module, block_classes, mode) -> Dict[str, List[str]]:
    """Replace the fusable blocks of ``block_classes`` in ``model`` (``mode``: "auto" or True, see above);
    returns {reason: [block names]} of the blocks left."""
    left: Dict[str, List[str]] = {}
    for parent_name, parent in list(model.named_modules()):
        children = list(parent.named_children())
        for index, (name, child) in enumerate(children):
            if type(child) not in block_classes or (mode == "auto" and (index == len(children) - 1
                                                                          or not _fusing_saves_memory(child))):
                continue
            reason = why_not_fused(child)
            if reason:
                left.setdefault(reason, []).append(f"{parent_name}.{name}" if parent_name else name)
                continue
            fused = FusedInteraction.from_mace(child, "frozen" if mode == "auto" else "always")
            object.__setattr__(fused, BLOCK, child)  # out of state_dict, .to() and parameters(): shares submodules
            setattr(parent, name, fused)
    return left


def _fusing_saves_memory(block: torch.nn.Module) -> bool:
    """Whether the fused block keeps less for the backward: ``[n_edges, hidden]`` instead of the weights."""
    radial = block.conv_tp_weights
    return isinstance(radial, FullyConnectedNet) and block.conv_tp.weight_numel > radial.hs[-2]


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


def fused_mode(model: torch.nn.Module):
    """The ``fuse_interactions`` that ``patch`` was given: "auto", True, or False when no block is fused."""
    fused = [module for module in model.modules() if isinstance(module, FusedInteraction) and hasattr(module, BLOCK)]
    if not fused:
        return False
    return "auto" if any(module.fuse_radial == "frozen" for module in fused) else True
