"""Patching models in place: their e3nn modules swapped for batmobile_nn's, parameters untouched.

``patch(model)`` / ``unpatch(model)`` (the MACE backend, ``batmobile_nn.patches.mace``) are imported
on first use, so ``import batmobile_nn`` does not import mace. New swaps (a gate, the radial MLP, another
model's blocks, ...) subclass ``Swap`` and are added with ``register_swap``.

>>> import batmobile_nn
>>> model = batmobile_nn.patch(model)  # doctest: +SKIP
>>> model = batmobile_nn.unpatch(model)  # doctest: +SKIP
"""

from ._registry import Swap, UnsupportedBlockWarning, register_swap, registered_swaps, unregister_swap


def patch(model, *, fuse_interactions="auto"):
    """``batmobile_nn.patches.mace.patch``: swap a MACE model's e3nn modules in place; returns it
    (``fuse_interactions``: "auto", True or False, how the interaction blocks take their radial MLP's last layer
    into the convolution)."""
    from . import mace

    return mace.patch(model, fuse_interactions=fuse_interactions)


def unpatch(model):
    """``batmobile_nn.patches.mace.unpatch``: restore the stock modules in place; returns the model."""
    from . import mace

    return mace.unpatch(model)


def is_patched(model) -> bool:
    """``batmobile_nn.patches.mace.is_patched``: whether any block of ``model`` is patched."""
    from . import mace

    return mace.is_patched(model)


__all__ = ["patch", "unpatch", "is_patched", "Swap", "UnsupportedBlockWarning", "register_swap",
           "registered_swaps", "unregister_swap"]
