"""The MACE backend: ``patch`` / ``unpatch`` a mace-torch model in place.

What is swapped (see ``batmobile_nn.patches.registered_swaps``): the convolution of every interaction
block (``conv_tp`` + ``scatter_sum`` -> ``batmobile_nn.nn.EquivariantConv``), its skip connection
(``skip_tp``, a per-element e3nn tensor product -> ``batmobile_nn.nn.ElementLinear``), the symmetric
contraction of every product block (-> ``batmobile_nn.nn.SymmetricContraction``), the radial MLP of the
interaction blocks whose ``conv_tp_weights`` is e3nn's SiLU ``FullyConnectedNet`` (-> ``batmobile_nn.nn.
FullyConnectedNet``; the ResidualNonLinear block's, mace's own ``RadialMLP``, stays stock), and the edge
spherical harmonics of mace's models and their subclasses (-> ``batmobile_nn.o3.SphericalHarmonics``). The e3nn ``o3.Linear``s
stay stock by default: ``LINEAR_SWAPS`` (interaction blocks' ``linear_up`` and ``linear``, product blocks, the
node embedding and the readouts -> ``batmobile_nn.o3.Linear``) are opt-in, ``register_swap`` each, because
on an H200 (MACE-MP-medium, float32) they measured more kernel launches and kernel time per training step
and a higher inference peak than e3nn's einsums (the transposed copies move from the forward into the
backward). Other e3nn modules (gates, readout MLPs) stay stock; later swaps register themselves in the
same registry. Parameters are never touched: a patched model has the same ``state_dict`` (keys
and tensors) as the stock one, so it loads into stock MACE and back, and ``unpatch`` gives back the
stock modules (a pickled unpatched model holds no reference to batmobile_nn).

Supported interaction blocks (mace-torch 0.3.16), and subclasses that keep their ``forward``:
``RealAgnosticInteractionBlock``, ``RealAgnosticResidualInteractionBlock``,
``RealAgnosticDensityInteractionBlock``, ``RealAgnosticDensityResidualInteractionBlock``,
``RealAgnosticAttResidualInteractionBlock``, ``RealAgnosticResidualNonLinearInteractionBlock``;
and product blocks: ``EquivariantProductBasisBlock`` (and subclasses that keep its ``forward``) whose
symmetric contraction is mace's e3nn module (not cuEquivariance's); in any model that holds them
(``MACE``, ``ScaleShiftMACE``, multi-head, dipole models, ...).
"""

import warnings
from contextlib import contextmanager
from typing import Callable, Dict, Iterator, List, Tuple, Union

import torch
from mace.modules import blocks as mace_blocks
from mace.modules import models as mace_models
from mace.modules import symmetric_contraction as mace_sc

from . import _fusion
from ._conv import ConvSwap
from ._linear import LinearSwap
from ._product import ProductSwap
from ._radial import RadialSwap
from ._sh import SphericalHarmonicsSwap
from ._skip import SkipSwap
from ._registry import UnsupportedBlockWarning, register_swap, registered_swaps

SUPPORTED_BLOCKS: Tuple[type, ...] = (
    mace_blocks.RealAgnosticInteractionBlock,
    mace_blocks.RealAgnosticResidualInteractionBlock,
    mace_blocks.RealAgnosticDensityInteractionBlock,
    mace_blocks.RealAgnosticDensityResidualInteractionBlock,
    mace_blocks.RealAgnosticAttResidualInteractionBlock,
    mace_blocks.RealAgnosticResidualNonLinearInteractionBlock,
)


# mace-torch's model classes (and subclasses) that compute their edges' harmonics with ``self.spherical_harmonics``
MACE_MODELS: Tuple[type, ...] = (mace_models.MACE, mace_models.AtomicDipolesMACE, mace_models.EnergyDipolesMACE)


def _fused_forwards() -> List[Callable]:
    return [cls.forward for cls in SUPPORTED_BLOCKS]


CONV_SWAP = register_swap(ConvSwap(_fused_forwards))
PRODUCT_SWAP = register_swap(ProductSwap(mace_blocks.EquivariantProductBasisBlock, mace_sc.SymmetricContraction,
                                         lambda: mace_blocks.EquivariantProductBasisBlock.forward))
SKIP_SWAP = register_swap(SkipSwap(lambda: SUPPORTED_BLOCKS))
SH_SWAP = register_swap(SphericalHarmonicsSwap(lambda: MACE_MODELS))  # the model's edge harmonics
RADIAL_SWAP = register_swap(RadialSwap(lambda: SUPPORTED_BLOCKS))
# opt-in (not registered): see the module docstring
LINEAR_SWAPS = tuple(LinearSwap(attribute, classes) for attribute, classes in (
    ("linear_up", lambda: SUPPORTED_BLOCKS),
    ("linear", lambda: SUPPORTED_BLOCKS + (mace_blocks.EquivariantProductBasisBlock,
                                           mace_blocks.LinearNodeEmbeddingBlock, mace_blocks.LinearReadoutBlock)),
    ("linear_1", lambda: (mace_blocks.NonLinearReadoutBlock,)),
    ("linear_2", lambda: (mace_blocks.NonLinearReadoutBlock,)),
))


def _check_model(model) -> None:
    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"expected a torch.nn.Module (a MACE model), got {type(model).__name__}")


def _blocks(model: torch.nn.Module) -> Iterator[Tuple[str, torch.nn.Module]]:
    """The blocks some registered swap is about (listed first: swaps replace submodules)."""
    _check_model(model)
    swaps = registered_swaps()
    for name, module in list(model.named_modules()):
        if any(swap.applies_to(module) for swap in swaps):
            yield name or "<model>", module


# the interaction blocks ``fuse_interactions`` fuses (MACE-MP's two): "auto" pairs their radial MLP and convolution,
# True replaces them by ``batmobile_nn.nn.FusedInteraction``s
FUSABLE_BLOCKS: Tuple[type, ...] = (mace_blocks.RealAgnosticResidualInteractionBlock,
                                    mace_blocks.RealAgnosticInteractionBlock)


def patch(model: torch.nn.Module, *, fuse_interactions: Union[bool, str] = "auto") -> torch.nn.Module:
    """Swap the e3nn modules of a MACE model for batmobile_nn's, in place; returns ``model``.

    Every registered swap runs on every block it is about (interaction blocks: the convolution; product
    blocks: the symmetric contraction); a block that a swap cannot handle stays stock, with one
    ``UnsupportedBlockWarning`` per block class naming it. Patching a patched model
    changes nothing but the fusion, to the one asked for. The ``state_dict`` (keys and tensors) is unchanged.

    Args:
        model: a mace-torch model (``MACE``, ``ScaleShiftMACE``, multi-head, ...), or any module
            containing MACE interaction or product blocks.
        fuse_interactions: whether the convolutions of ``RealAgnosticResidualInteractionBlock``s and
            ``RealAgnosticInteractionBlock``s take their radial MLP's last layer in, keeping the MLP's hidden
            features for the backward instead of the per-edge weights (``patches/_fusion.py``). "auto" (default):
            in every such block but the last, while the radial MLP's last weight is frozen (inference, MD: a
            lower peak); the blocks stay mace's. True: every such block becomes a
            ``batmobile_nn.nn.FusedInteraction``, always fused (named in a warning when one cannot be); mace's tools
            that read a model's block classes (``extract_config_mace_model``: its conversions, ``extract_model``)
            then need the model inside ``unpatched(model)``. False: none.

    Returns:
        ``model``, patched.

    >>> model = patch(model)  # doctest: +SKIP
    >>> out = model(batch.to_dict(), compute_force=True)  # doctest: +SKIP
    """
    if not (isinstance(fuse_interactions, bool) or fuse_interactions == "auto"):
        raise ValueError(f"batmobile_nn.patch: fuse_interactions must be 'auto', True or False, "
                         f"got {fuse_interactions!r}")
    _check_model(model)
    _fusion.defuse(model)  # the swaps see mace's blocks (a swap registered since the last patch too); fused again below
    unsupported: Dict[str, Dict[str, List[str]]] = {}  # block class -> reason -> block names
    for name, block in _blocks(model):
        for swap in registered_swaps():
            if not swap.applies_to(block):
                continue
            reason = swap.why_unsupported(block)
            if reason is None and not swap.is_patched(block):
                try:
                    swap.patch_block(block)
                except (ValueError, AttributeError) as error:  # the block stays stock: swaps change nothing
                    # before they succeed (AttributeError: a module pickled with another version of its library)
                    reason = f"the {swap.name} swap failed: {error}"
            if reason is not None:
                unsupported.setdefault(type(block).__name__, {}).setdefault(reason, []).append(name)
    for class_name, reasons in sorted(unsupported.items()):
        details = "; ".join(f"{', '.join(names)}: {reason}" for reason, names in reasons.items())
        warnings.warn(f"batmobile_nn.patch: left {class_name} stock ({details})", UnsupportedBlockWarning,
                      stacklevel=2)
    if fuse_interactions:
        left = _fusion.fuse(model, FUSABLE_BLOCKS, fuse_interactions)
        if left and fuse_interactions is True:
            details = "; ".join(f"{', '.join(names)}: {reason}" for reason, names in left.items())
            warnings.warn(f"batmobile_nn.patch: interaction blocks not fused ({details})", UnsupportedBlockWarning,
                          stacklevel=2)
    return model


def unpatch(model: torch.nn.Module) -> torch.nn.Module:
    """Put the stock e3nn modules back into a model patched with ``patch``, in place; returns ``model``.

    Modules keep the model's current device, dtype and tensors; an unpatched model is a stock
    mace-torch model (``torch.save`` of it needs no batmobile_nn to load). Unpatching a stock
    model changes nothing.

    >>> model = unpatch(model)  # doctest: +SKIP
    >>> torch.save(model, "stock.model")  # doctest: +SKIP
    """
    _fusion.defuse(model)  # the blocks first (they hold the swapped modules), then the swaps
    for _, block in _blocks(model):
        for swap in reversed(registered_swaps()):
            if swap.applies_to(block) and swap.is_patched(block):
                swap.unpatch_block(block)
    return model


def is_patched(model: torch.nn.Module) -> bool:
    """Whether any block of ``model`` carries a batmobile_nn swap.

    >>> is_patched(patch(model))  # doctest: +SKIP
    True
    """
    return bool(_fusion.fused_mode(model)) or any(swap.applies_to(block) and swap.is_patched(block)
                                          for _, block in _blocks(model) for swap in registered_swaps())


@contextmanager
def unpatched(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Within the ``with``, ``model`` is stock (e.g. to ``torch.save`` it); patched again after if it was.

    >>> with unpatched(model):  # doctest: +SKIP
    ...     torch.save(model, "stock.model")
    """
    was_patched, was_fused = is_patched(model), _fusion.fused_mode(model)
    unpatch(model)
    try:
        yield model
    finally:
        if was_patched:
            patch(model, fuse_interactions=was_fused)
