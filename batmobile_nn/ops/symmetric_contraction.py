"""``torch.ops.batmobile.symmetric_contraction`` (MACE's product basis) and its backward and double backward.

The op knows nothing of mace or irreps; everything it needs is in tensors and int lists:

- ``x [n_nodes, mul, L]``: per node and channel the coupled irreps (``L = sum(2l+1)``, e.g. 16 for
  ``0e+1o+2e+3o``), mace's ``[n_nodes, num_features, dim]`` layout;
- ``element [n_nodes]`` int32/int64: each node's element (``node_attrs.argmax(-1)`` of a one-hot);
- ``weight [num_elements, num_params, mul]``: every block's weights, concatenated along ``num_params``;
- ``u``: the generalized Clebsch-Gordan tensors, one per block, each ``[D_o, L**nu, P]``;
- ``correlations``: the correlation ``K_o`` of each output irrep ``o``.

Blocks are ordered output irrep after output irrep, degrees ``nu = 1 .. K_o`` ascending; block ``j``'s
weights are the next ``P_j = u[j].shape[2]`` rows of ``weight``'s second axis. The output is
``[n_nodes, mul * sum_o D_o]``, output irrep after output irrep, each ``[mul, D_o]`` (e3nn's ``mul x ir``
layout, what mace's ``SymmetricContraction`` returns). The formula is in ``reference/symmetric_contraction.py``.
``u`` is a constant: it gets no gradient.
"""

from typing import List, Tuple

import torch
from torch import Tensor

from .. import _backend
from . import _checks, _eager

OP = "symmetric_contraction"
MAX_CORRELATION = 3


def _fail(message: str):
    _checks._fail(OP, message)


def _check(x: Tensor, element: Tensor, weight: Tensor, u: List[Tensor], correlations: List[int]) -> int:
    """Shapes, dtypes and devices (no data read); returns the output width."""
    _checks.float_tensor(OP, "x", x, 3)
    _checks.float_tensor(OP, "weight", weight, 3)
    n, mul, L = x.shape
    _checks.index_tensor(OP, "element", element, "n_nodes", n, "x", x)
    if len(correlations) == 0 or min(correlations) < 1 or max(correlations) > MAX_CORRELATION:
        _fail(f"correlations must be a non-empty list of values in [1, {MAX_CORRELATION}], got {list(correlations)}")
    if len(u) != sum(correlations):
        _fail(f"u must hold sum(correlations) = {sum(correlations)} tensors, got {len(u)}")
    _checks.same(OP, {"x": x, "weight": weight, **{f"u[{j}]": t for j, t in enumerate(u)}})
    j, n_params, width = 0, 0, 0
    for K in correlations:
        D = u[j].shape[0] if u[j].dim() == 3 else -1
        for nu in range(1, K + 1):
            _checks.float_tensor(OP, f"u[{j}]", u[j], 3)
            if u[j].shape[0] != D or u[j].shape[1] != L**nu:
                _fail(f"u[{j}] (degree {nu}) must have shape [D={D}, L**{nu}={L**nu}, P], got {tuple(u[j].shape)}")
            n_params += u[j].shape[2]
            j += 1
        width += mul * D
    if weight.shape[1] != n_params or weight.shape[2] != mul:
        _fail(f"weight must have shape [num_elements, num_params={n_params}, mul={mul}], got {tuple(weight.shape)}")
    return width


def _check_element_range(element: Tensor, n_elements: int):
    """``0 <= element < n_elements`` (reads the data once per element tensor; skipped while a CUDA graph is captured)."""
    _checks.index_ranges(OP, n_elements, "weight has {} elements", element=element)


def _check_backward(grad_out, x, element, weight, u, correlations):
    width = _check(x, element, weight, u, correlations)
    _checks.float_tensor(OP, "grad_out", grad_out, 2, width)
    _checks.same(OP, {"x": x, "grad_out": grad_out})
    if grad_out.shape[0] != x.shape[0]:
        _fail(f"grad_out must have shape [n_nodes={x.shape[0]}, {width}], got {tuple(grad_out.shape)}")


def _check_cotangent(name: str, t: Tensor, like: Tensor):
    """A cotangent of the backward: ``like``'s shape, or empty (zeros)."""
    if t.numel() == 0 and t.dim() == 1:
        return
    if t.shape != like.shape:
        _fail(f"{name} must have shape {tuple(like.shape)} (or be empty for zeros), got {tuple(t.shape)}")
    _checks.same(OP, {name: t, "x": like})


def _symmetric_contraction(x: Tensor, element: Tensor, weight: Tensor, u: List[Tensor],
                          correlations: List[int]) -> Tensor:
    """MACE's symmetric contraction: ``x [n, mul, L]``, ``element [n]``, ``weight [n_elements, n_params, mul]``,
    ``u`` (``[D_o, L**nu, P]`` per output irrep and degree), ``correlations`` -> ``[n, mul * sum_o D_o]``."""
    _check(x, element, weight, u, correlations)
    _check_element_range(element, weight.shape[0])
    return _backend.implementation(OP, x.device)(x, element, weight, u, correlations)


def _symmetric_contraction_backward(grad_out: Tensor, x: Tensor, element: Tensor, weight: Tensor, u: List[Tensor],
                                   correlations: List[int], needs: List[bool]) -> Tuple[Tensor, Tensor]:
    """Gradients w.r.t. ``(x, weight)``; those not asked for in ``needs`` come back empty."""
    _check_backward(grad_out, x, element, weight, u, correlations)
    if len(needs) != 2:
        _fail(f"needs must hold 2 booleans (x, weight), got {list(needs)}")
    _check_element_range(element, weight.shape[0])
    return _backend.implementation(OP + "_backward", x.device)(grad_out, x, element, weight, u, correlations, needs)


def _symmetric_contraction_double_backward(grad_grad_x: Tensor, grad_grad_weight: Tensor, grad_out: Tensor, x: Tensor,
                                          element: Tensor, weight: Tensor, u: List[Tensor], correlations: List[int],
                                          needs: List[bool]) -> Tuple[Tensor, Tensor, Tensor]:
    """Gradients w.r.t. ``(grad_out, x, weight)`` of ``<grad_grad_x, dx> + <grad_grad_weight, dweight>``, where
    ``(dx, dweight)`` is the backward; an empty ``grad_grad_*`` stands for zeros; those not asked for in
    ``needs`` come back empty."""
    _check_double_backward(grad_grad_x, grad_grad_weight, grad_out, x, element, weight, u, correlations, needs)
    _check_element_range(element, weight.shape[0])
    return _backend.implementation(OP + "_double_backward", x.device)(
        grad_grad_x, grad_grad_weight, grad_out, x, element, weight, u, correlations, needs)


def _check_double_backward(grad_grad_x, grad_grad_weight, grad_out, x, element, weight, u, correlations, needs):
    _check_backward(grad_out, x, element, weight, u, correlations)
    _check_cotangent("grad_grad_x", grad_grad_x, x)
    _check_cotangent("grad_grad_weight", grad_grad_weight, weight)
    if len(needs) != 3:
        _fail(f"needs must hold 3 booleans (grad_out, x, weight), got {list(needs)}")


def _empty_unless(needed: bool, like: Tensor) -> Tensor:
    return torch.empty_like(like) if needed else like.new_empty(0)


_symmetric_contraction_op = torch.library.custom_op("batmobile::symmetric_contraction", _symmetric_contraction,
                                                   mutates_args=())
_backward_op = torch.library.custom_op("batmobile::symmetric_contraction_backward", _symmetric_contraction_backward,
                                       mutates_args=())
_double_backward_op = torch.library.custom_op("batmobile::symmetric_contraction_double_backward",
                                              _symmetric_contraction_double_backward, mutates_args=())


@_symmetric_contraction_op.register_fake
def _(x, element, weight, u, correlations):
    return x.new_empty(x.shape[0], _check(x, element, weight, u, correlations))


@_backward_op.register_fake
def _(grad_out, x, element, weight, u, correlations, needs):
    _check_backward(grad_out, x, element, weight, u, correlations)
    return _empty_unless(needs[0], x), _empty_unless(needs[1], weight)


@_double_backward_op.register_fake
def _(grad_grad_x, grad_grad_weight, grad_out, x, element, weight, u, correlations, needs):
    _check_double_backward(grad_grad_x, grad_grad_weight, grad_out, x, element, weight, u, correlations, needs)
    return _empty_unless(needs[0], grad_out), _empty_unless(needs[1], x), _empty_unless(needs[2], weight)


def _setup(ctx, inputs, output):
    x, element, weight, u, correlations = inputs
    ctx.save_for_backward(x, element, weight, *u)
    ctx.correlations = correlations


def _backward(ctx, grad_out):
    x, element, weight, *u = ctx.saved_tensors
    wanted = _eager.needs(ctx)
    needs = [wanted[0], wanted[2]]
    backward = _eager.pick(ctx, symmetric_contraction_backward)
    grad_x, grad_weight = backward(grad_out.contiguous(), x, element, weight, u, ctx.correlations, needs)
    return grad_x if needs[0] else None, None, grad_weight if needs[1] else None, [None] * len(u), None


def _setup_backward(ctx, inputs, output):
    grad_out, x, element, weight, u, correlations, needs = inputs
    ctx.save_for_backward(grad_out, x, element, weight, *u)
    ctx.correlations = correlations
    ctx.computed = needs


def _backward_backward(ctx, grad_grad_x, grad_grad_weight):
    grad_out, x, element, weight, *u = ctx.saved_tensors
    # a cotangent autograd did not produce, or of an output that was an empty placeholder: empty (zeros)
    cotangents = [g.contiguous() if g is not None and computed else like.new_empty(0)
                  for g, computed, like in zip((grad_grad_x, grad_grad_weight), ctx.computed, (x, weight))]
    wanted = _eager.needs(ctx)
    needs = [wanted[0], wanted[1], wanted[3]]
    double_backward = _eager.pick(ctx, symmetric_contraction_double_backward)
    grads = double_backward(*cotangents, grad_out, x, element, weight, u, ctx.correlations, needs)
    d_grad_out, d_x, d_weight = (g if n else None for g, n in zip(grads, needs))
    return d_grad_out, d_x, None, d_weight, [None] * len(u), None, None


# the ops' autograd, and what the package calls (eager: an autograd.Function with the same chain;
# tracing: the ops), ops/_eager.py
symmetric_contraction = _eager.fast_path(_symmetric_contraction_op, _symmetric_contraction, _setup, _backward)
symmetric_contraction_backward = _eager.fast_path(_backward_op, _symmetric_contraction_backward, _setup_backward,
                                                  _backward_backward)
symmetric_contraction_double_backward = _eager.fast_path(_double_backward_op, _symmetric_contraction_double_backward)
