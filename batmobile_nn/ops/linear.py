"""``torch.ops.batmobile.linear`` and ``linear_outer``: the channel-mixing map of one irrep block, e3nn's ``o3.Linear``.

- ``linear(x [n, mul_in, d], weight [mul_in, mul_out], alpha) -> [n, mul_out, d]``:
  ``out[i, w, m] = alpha * sum_u weight[u, w] * x[i, u, m]``;
- ``linear_outer(x [n, mul_in, d], y [n, mul_out, d], alpha) -> [mul_in, mul_out]``:
  ``out[u, w] = alpha * sum over i and m of x[i, u, m] * y[i, w, m]``, the weight gradient of ``linear``.

Both are bilinear and the derivatives of each are the two ops again, so derivatives of any order chain.
The backward keeps only the op's inputs: e3nn's einsum keeps a transposed copy of ``x`` per block
(``[n, irreps_in.dim]`` per linear; MACE's linear after the convolution is 2,048 wide at MACE-MP-medium).
"""

from typing import Optional, Tuple

import torch
from torch import Tensor

from .. import _backend
from . import _checks, _eager

OP = "linear"


def _check_linear(x: Tensor, weight: Tensor):
    _checks.float_tensor(OP, "x", x, 3)
    _checks.float_tensor(OP, "weight", weight, 2)
    _checks.same(OP, {"x": x, "weight": weight})
    if weight.shape[0] != x.shape[1]:
        _checks._fail(OP, f"weight must have shape [mul_in={x.shape[1]}, mul_out], got {tuple(weight.shape)}")


def _check_outer(x: Tensor, y: Tensor):
    _checks.float_tensor(OP, "x", x, 3)
    _checks.float_tensor(OP, "y", y, 3)
    _checks.same(OP, {"x": x, "y": y})
    if y.shape[0] != x.shape[0] or y.shape[2] != x.shape[2]:
        _checks._fail(OP, f"y must have shape [n={x.shape[0]}, mul_out, d={x.shape[2]}], got {tuple(y.shape)}")


def _linear(x: Tensor, weight: Tensor, alpha: float) -> Tensor:
    """``x [n, mul_in, d]``, ``weight [mul_in, mul_out]`` -> ``alpha * x . weight``: ``[n, mul_out, d]``."""
    _check_linear(x, weight)
    return _backend.implementation(OP, x.device)(x, weight, alpha)


def _linear_outer(x: Tensor, y: Tensor, alpha: float) -> Tensor:
    """``x [n, mul_in, d]``, ``y [n, mul_out, d]`` -> ``alpha * sum_{i, m} x[i, :, m] y[i, :, m]^T``: ``[mul_in, mul_out]``."""
    _check_outer(x, y)
    return _backend.implementation("linear_outer", x.device)(x, y, alpha)


_linear_op = torch.library.custom_op("batmobile::linear", _linear, mutates_args=())
_linear_outer_op = torch.library.custom_op("batmobile::linear_outer", _linear_outer, mutates_args=())


@_linear_op.register_fake
def _(x, weight, alpha):
    _check_linear(x, weight)
    return x.new_empty(x.shape[0], weight.shape[1], x.shape[2])


@_linear_outer_op.register_fake
def _(x, y, alpha):
    _check_outer(x, y)
    return x.new_empty(x.shape[1], y.shape[1])


def _setup_linear(ctx, inputs, output):
    x, weight, alpha = inputs
    ctx.save_for_backward(x, weight)
    ctx.alpha = alpha


def _backward_linear(ctx, grad_out: Tensor) -> Tuple[Optional[Tensor], Optional[Tensor], None]:
    x, weight = ctx.saved_tensors  # grad_out: [n, mul_out, d]
    needs = _eager.needs(ctx)
    grad_x = grad_weight = None
    if needs[0]:  # [n, mul_in, d]
        grad_x = _eager.pick(ctx, linear)(grad_out, weight.transpose(0, 1), ctx.alpha)
    if needs[1]:  # [mul_in, mul_out]
        grad_weight = _eager.pick(ctx, linear_outer)(x, grad_out, ctx.alpha)
    return grad_x, grad_weight, None


def _setup_outer(ctx, inputs, output):
    x, y, alpha = inputs
    ctx.save_for_backward(x, y)
    ctx.alpha = alpha


def _backward_outer(ctx, grad_out: Tensor):
    x, y = ctx.saved_tensors  # grad_out: [mul_in, mul_out]
    needs = _eager.needs(ctx)
    grad_x = grad_y = None
    if needs[0]:
        grad_x = _eager.pick(ctx, linear)(y, grad_out.transpose(0, 1), ctx.alpha)
    if needs[1]:
        grad_y = _eager.pick(ctx, linear)(x, grad_out, ctx.alpha)
    return grad_x, grad_y, None


# the ops' autograd, and what the package calls (eager: an autograd.Function with the same chain;
# tracing: the ops), ops/_eager.py
linear = _eager.fast_path(_linear_op, _linear, _setup_linear, _backward_linear)
linear_outer = _eager.fast_path(_linear_outer_op, _linear_outer, _setup_outer, _backward_outer)
