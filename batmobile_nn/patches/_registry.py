"""The swaps that ``batmobile_nn.patch`` applies to a model's blocks, and how a new one is added.

A swap replaces one e3nn submodule of a block (for MACE: the convolution, the skip connection, the
symmetric contraction and the linears, ``patches/mace.py``) by a batmobile_nn module with
the same ``state_dict``, and knows how to put the stock module back. ``patch`` runs every
registered swap on every block it finds; ``unpatch`` undoes them in reverse order.
"""

from typing import List, Optional

import torch


class UnsupportedBlockWarning(UserWarning):
    """A block that ``batmobile_nn.patch`` cannot swap was left stock (one warning per block class)."""


class Swap:
    """One replacement of an e3nn submodule inside a block; subclass it and pass it to ``register_swap``.

    A swap never adds, removes or changes parameters or buffers: the block's ``state_dict`` keys and
    tensors are the same before ``patch_block``, after it and after ``unpatch_block``.
    """

    name: str = "swap"

    def applies_to(self, block: torch.nn.Module) -> bool:
        """Whether ``block`` is a kind of block this swap is about (supported or not)."""
        raise NotImplementedError

    def why_unsupported(self, block: torch.nn.Module) -> Optional[str]:
        """``None`` when ``patch_block`` can handle ``block`` (or it is already patched), else the reason."""
        raise NotImplementedError

    def is_patched(self, block: torch.nn.Module) -> bool:
        raise NotImplementedError

    def patch_block(self, block: torch.nn.Module) -> None:
        """Swap in place; called only when ``why_unsupported(block)`` is None and the block is not patched.
        May raise ``ValueError`` (having changed nothing): the block then stays stock, with a warning."""
        raise NotImplementedError

    def unpatch_block(self, block: torch.nn.Module) -> None:
        """Restore the stock submodule in place; called only when ``is_patched(block)``."""
        raise NotImplementedError


_SWAPS: List[Swap] = []


def register_swap(swap: Swap) -> Swap:
    """Add ``swap`` to those ``patch`` applies (after the ones already registered); returns it.

    >>> class NothingSwap(Swap):
    ...     name = "nothing"
    ...     def applies_to(self, block):
    ...         return False
    >>> swap = register_swap(NothingSwap())
    >>> unregister_swap(swap)
    """
    if not isinstance(swap, Swap):
        raise ValueError(f"register_swap expects a batmobile_nn.patches.Swap, got {type(swap).__name__}")
    if any(s.name == swap.name for s in _SWAPS):
        raise ValueError(f"a swap named {swap.name!r} is already registered")
    _SWAPS.append(swap)
    return swap


def unregister_swap(swap: Swap) -> None:
    """Remove a swap added with ``register_swap`` (models it patched can still be unpatched by it)."""
    _SWAPS.remove(swap)


def registered_swaps() -> List[Swap]:
    """The swaps ``patch`` applies, in order."""
    return list(_SWAPS)
