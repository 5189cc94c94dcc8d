"""``torch.ops.batmobile.spherical_harmonics`` and its backward and double backward ops."""

from typing import List, Tuple

import torch
from torch import Tensor

from .. import _backend
from ..reference.spherical_harmonics import L_MAX_TABLE
from . import _checks, _eager

OP = "spherical_harmonics"


def _n_out(ls: List[int]) -> int:
    return sum(2 * l + 1 for l in ls)


def _spherical_harmonics(vectors: Tensor, ls: List[int], normalize: bool, normalization: str) -> Tensor:
    """e3nn's spherical harmonics of ``vectors [n, 3]`` for the degrees ``ls``: ``[n, sum(2l+1)]``."""
    _checks.spherical_harmonics(OP, vectors, ls, normalization, L_MAX_TABLE)
    return _backend.implementation(OP, vectors.device)(vectors, ls, normalize, normalization)


def _spherical_harmonics_backward(grad_sh: Tensor, vectors: Tensor, ls: List[int], normalize: bool,
                                 normalization: str) -> Tensor:
    """Gradient w.r.t. ``vectors [n, 3]`` given ``grad_sh [n, sum(2l+1)]``."""
    _check_backward(grad_sh, vectors, ls, normalization)
    return _backend.implementation(OP + "_backward", vectors.device)(grad_sh, vectors, ls, normalize, normalization)


def _spherical_harmonics_double_backward(grad_grad_vectors: Tensor, grad_sh: Tensor, vectors: Tensor, ls: List[int],
                                        normalize: bool, normalization: str) -> Tuple[Tensor, Tensor]:
    """Derivatives of ``<grad_grad_vectors, backward(grad_sh, vectors)>``: ``(grad_sh [n, k], vectors [n, 3])``."""
    _check_backward(grad_sh, vectors, ls, normalization)
    _checks.float_tensor(OP, "grad_grad_vectors", grad_grad_vectors, 2, 3)
    return _backend.implementation(OP + "_double_backward", vectors.device)(
        grad_grad_vectors, grad_sh, vectors, ls, normalize, normalization)


def _check_backward(grad_sh, vectors, ls, normalization):
    _checks.spherical_harmonics(OP, vectors, ls, normalization, L_MAX_TABLE)
    _checks.float_tensor(OP, "grad_sh", grad_sh, 2, _n_out(ls))
    _checks.same(OP, {"vectors": vectors, "grad_sh": grad_sh})


_harmonics_op = torch.library.custom_op("batmobile::spherical_harmonics", _spherical_harmonics, mutates_args=())
_backward_op = torch.library.custom_op("batmobile::spherical_harmonics_backward", _spherical_harmonics_backward,
                                       mutates_args=())
_double_backward_op = torch.library.custom_op("batmobile::spherical_harmonics_double_backward",
                                              _spherical_harmonics_double_backward, mutates_args=())


@_harmonics_op.register_fake
def _(vectors, ls, normalize, normalization):
    _checks.spherical_harmonics(OP, vectors, ls, normalization, L_MAX_TABLE)
    return vectors.new_empty(vectors.shape[0], _n_out(ls))


@_backward_op.register_fake
def _(grad_sh, vectors, ls, normalize, normalization):
    _check_backward(grad_sh, vectors, ls, normalization)
    return torch.empty_like(vectors)


@_double_backward_op.register_fake
def _(grad_grad_vectors, grad_sh, vectors, ls, normalize, normalization):
    _check_backward(grad_sh, vectors, ls, normalization)
    return torch.empty_like(grad_sh), torch.empty_like(vectors)


def _setup(ctx, inputs, output):
    vectors, ls, normalize, normalization = inputs
    ctx.save_for_backward(vectors)
    ctx.args = (ls, normalize, normalization)


def _backward(ctx, grad_sh):
    (vectors,) = ctx.saved_tensors
    backward = _eager.pick(ctx, spherical_harmonics_backward)
    return backward(grad_sh.contiguous(), vectors, *ctx.args), None, None, None


def _setup_backward(ctx, inputs, output):
    grad_sh, vectors, ls, normalize, normalization = inputs
    ctx.save_for_backward(grad_sh, vectors)
    ctx.args = (ls, normalize, normalization)


def _backward_backward(ctx, grad_grad_vectors):
    grad_sh, vectors = ctx.saved_tensors
    double_backward = _eager.pick(ctx, spherical_harmonics_double_backward)
    grad_grad_sh, grad_vectors = double_backward(grad_grad_vectors.contiguous(), grad_sh, vectors, *ctx.args)
    return grad_grad_sh, grad_vectors, None, None, None


# the ops' autograd, and what the package calls (eager: an autograd.Function with the same chain;
# tracing: the ops), ops/_eager.py
spherical_harmonics = _eager.fast_path(_harmonics_op, _spherical_harmonics, _setup, _backward)
spherical_harmonics_backward = _eager.fast_path(_backward_op, _spherical_harmonics_backward, _setup_backward,
                                                _backward_backward)
spherical_harmonics_double_backward = _eager.fast_path(_double_backward_op, _spherical_harmonics_double_backward)
