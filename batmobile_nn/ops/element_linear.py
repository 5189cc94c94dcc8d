"""``torch.ops.batmobile.element_linear`` and ``element_outer``: linear maps whose weights depend on each node's element.

- ``element_linear(x [n, mul_in, d], element [n], weight [E, mul_in, mul_out], alpha) -> [n, mul_out, d]``:
  ``out[i, w, m] = alpha * sum_u weight[element[i], u, w] * x[i, u, m]``;
- ``element_outer(x [n, mul_in, d], y [n, mul_out, d], element [n], n_elements, alpha) -> [E, mul_in, mul_out]``:
  ``out[e, u, w] = alpha * sum over the nodes i of element e and over m of x[i, u, m] * y[i, w, m]``,
  the weight gradient of ``element_linear``.

Both are bilinear, and the derivatives of each are the two ops again, so derivatives of any order
chain (forces, then training on them). MACE's skip connection, an e3nn ``FullyConnectedTensorProduct``
of the node features with the one-hot node attributes, is one ``element_linear`` per irrep
(``batmobile_nn.nn.ElementLinear``); e3nn computes it as a ``[n, mul_in * E]`` outer product or a
``[n, mul_in, mul_out]`` weight per node, E = 89 for MACE-MP.
"""

from typing import Optional, Tuple

import torch
from torch import Tensor

from .. import _backend
from . import _checks, _eager

OP = "element_linear"


def _fail(message: str):
    _checks._fail(OP, message)


def _check_linear(x: Tensor, element: Tensor, weight: Tensor):
    _checks.float_tensor(OP, "x", x, 3)
    _checks.float_tensor(OP, "weight", weight, 3)
    _checks.same(OP, {"x": x, "weight": weight})
    _checks.index_tensor(OP, "element", element, "n_nodes", x.shape[0], "x", x)
    if weight.shape[1] != x.shape[1]:
        _fail(f"weight must have shape [n_elements, mul_in={x.shape[1]}, mul_out], got {tuple(weight.shape)}")


def _check_outer(x: Tensor, y: Tensor, element: Tensor, n_elements: int):
    _checks.float_tensor(OP, "x", x, 3)
    _checks.float_tensor(OP, "y", y, 3)
    _checks.same(OP, {"x": x, "y": y})
    _checks.index_tensor(OP, "element", element, "n_nodes", x.shape[0], "x", x)
    if y.shape[0] != x.shape[0] or y.shape[2] != x.shape[2]:
        _fail(f"y must have shape [n_nodes={x.shape[0]}, mul_out, d={x.shape[2]}], got {tuple(y.shape)}")
    if n_elements < 1:
        _fail(f"n_elements must be positive, got {n_elements}")


def _check_range(element: Tensor, n_elements: int):
    _checks.index_ranges(OP, n_elements, "there are {} elements", element=element)


def _element_linear(x: Tensor, element: Tensor, weight: Tensor, alpha: float) -> Tensor:
    """``x [n, mul_in, d]``, ``element [n]`` int32/int64, ``weight [n_elements, mul_in, mul_out]`` ->
    ``alpha * x[i] . weight[element[i]]``: ``[n, mul_out, d]``."""
    _check_linear(x, element, weight)
    _check_range(element, weight.shape[0])
    return _backend.implementation(OP, x.device)(x, element, weight, alpha)


def _element_outer(x: Tensor, y: Tensor, element: Tensor, n_elements: int, alpha: float) -> Tensor:
    """``x [n, mul_in, d]``, ``y [n, mul_out, d]``, ``element [n]`` -> per element, ``alpha`` times the sum over
    its nodes of ``x[i] y[i]^T``: ``[n_elements, mul_in, mul_out]``."""
    _check_outer(x, y, element, n_elements)
    _check_range(element, n_elements)
    return _backend.implementation("element_outer", x.device)(x, y, element, n_elements, alpha)


_element_linear_op = torch.library.custom_op("batmobile::element_linear", _element_linear, mutates_args=())
_element_outer_op = torch.library.custom_op("batmobile::element_outer", _element_outer, mutates_args=())


@_element_linear_op.register_fake
def _(x, element, weight, alpha):
    _check_linear(x, element, weight)
    return x.new_empty(x.shape[0], weight.shape[2], x.shape[2])


@_element_outer_op.register_fake
def _(x, y, element, n_elements, alpha):
    _check_outer(x, y, element, n_elements)
    return x.new_empty(n_elements, x.shape[1], y.shape[1])


def _setup_linear(ctx, inputs, output):
    x, element, weight, alpha = inputs
    ctx.save_for_backward(x, element, weight)
    ctx.alpha = alpha


def _backward_linear(ctx, grad_out: Tensor) -> Tuple[Optional[Tensor], None, Optional[Tensor], None]:
    x, element, weight = ctx.saved_tensors
    linear, outer = _eager.pick(ctx, element_linear), _eager.pick(ctx, element_outer)
    needs = _eager.needs(ctx)
    grad_x = grad_weight = None
    if needs[0]:  # [n, mul_in, d]
        grad_x = linear(grad_out, element, weight.transpose(1, 2), ctx.alpha)
    if needs[2]:  # [E, mul_in, mul_out]
        grad_weight = outer(x, grad_out, element, weight.shape[0], ctx.alpha)
    return grad_x, None, grad_weight, None


def _setup_outer(ctx, inputs, output):
    x, y, element, n_elements, alpha = inputs
    ctx.save_for_backward(x, y, element)
    ctx.alpha = alpha


def _backward_outer(ctx, grad_out: Tensor):
    x, y, element = ctx.saved_tensors  # grad_out: [E, mul_in, mul_out]
    linear = _eager.pick(ctx, element_linear)
    needs = _eager.needs(ctx)
    grad_x = grad_y = None
    if needs[0]:
        grad_x = linear(y, element, grad_out.transpose(1, 2), ctx.alpha)
    if needs[1]:
        grad_y = linear(x, element, grad_out, ctx.alpha)
    return grad_x, grad_y, None, None, None


# the ops' autograd, and what the package calls (eager: an autograd.Function with the same chain;
# tracing: the ops), ops/_eager.py
element_linear = _eager.fast_path(_element_linear_op, _element_linear, _setup_linear, _backward_linear)
element_outer = _eager.fast_path(_element_outer_op, _element_outer, _setup_outer, _backward_outer)
