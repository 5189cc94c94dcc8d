"""The link that ``patch``'s default fusion (``patches/_fusion.py``) makes between an interaction block's radial MLP
(``FullyConnectedNet``) and its convolution (``EquivariantConv``): the MLP stops before its last layer, which the
convolution applies (``ops.conv_radial``).

The link is a plain attribute on each module (neither a submodule nor in ``state_dict``; TorchScript never reads
it), and counts only where it goes both ways: a module copied or replicated alone (``copy.copy``,
``nn.DataParallel``'s replicas) still points at the other's original, which does not point back, so it computes
unpaired.
"""

from typing import Optional

import torch

RADIAL_TO_CONV = "_last_layer_in_conv"  # on the FullyConnectedNet
CONV_TO_RADIAL = "_paired_radial"  # on the EquivariantConv


class Partner:
    """The other module of a pair (a plain object: not registered, not seen by TorchScript)."""

    __slots__ = ("module",)

    def __init__(self, module: torch.nn.Module):
        self.module = module


def partner(module: torch.nn.Module, attribute: str, back: str) -> Optional[torch.nn.Module]:
    """``module``'s partner through ``attribute`` when the partner links back through ``back``, else None."""
    link = module.__dict__.get(attribute)
    if link is None:
        return None
    other = link.module.__dict__.get(back)
    return link.module if other is not None and other.module is module else None


def link(radial: torch.nn.Module, conv: torch.nn.Module) -> None:
    object.__setattr__(radial, RADIAL_TO_CONV, Partner(conv))
    object.__setattr__(conv, CONV_TO_RADIAL, Partner(radial))


def unlink(radial: torch.nn.Module, conv: torch.nn.Module) -> None:
    radial.__dict__.pop(RADIAL_TO_CONV, None)
    conv.__dict__.pop(CONV_TO_RADIAL, None)
