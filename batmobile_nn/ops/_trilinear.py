"""Double backward of an op that is linear in each of its three tensor inputs.

The tensor product ``T(a, b, c)`` (and the convolution, which only adds a gather and a scatter)
is linear in ``a`` and ``b`` separately, and ``T = T_c + T_0`` with ``T_c`` linear in ``c`` and ``T_0``
(the paths without weights) independent of ``c``. Its backward ``B(g, a, b, c) = (dA, dB, dC)`` is
then linear in ``g`` and in each input too, and the derivatives of ``<(ga, gb, gc), B(g, a, b, c)>``
are again forward and backward calls: the double backward is built from the same two ops, so
it is itself differentiable (any order) and runs on whatever kernels those ops have. The terms
that carry the weights' cotangent ``gc`` take ``T_c`` alone (``forward_c``, ``backward_c``): with ``T``
they would wrongly add ``T_0``'s contribution.
"""

from typing import Callable, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from . import _plan


def _add(x: Optional[Tensor], y: Optional[Tensor]) -> Optional[Tensor]:
    """``x + y``, accumulated into ``x``: ``x`` is always a fresh output of the ops below (or a sum of them),
    which nothing else holds, so adding in place saves a buffer of its size at the double backward's peak
    (``[n_edges, weight_numel]``, 880 MB at MACE-MP-medium's 170k edges in float32)."""
    if x is None:
        return y
    return x if y is None else x.add_(y)


def double_backward(forward: Callable, backward: Callable, grad_out: Tensor, a: Tensor, b: Tensor, c: Tensor,
                    cotangents: List[Optional[Tensor]], needs: List[bool], forward_c: Optional[Callable] = None,
                    backward_c: Optional[Callable] = None, backward_into: Optional[Callable] = None):
    """Gradients ``(grad_out, a, b, c)`` of ``<cotangents, backward(grad_out, a, b, c)>``.

    ``forward(a, b, c)`` and ``backward(g, a, b, c, needs)`` close over the non-tensor arguments;
    ``forward_c`` and ``backward_c`` are the same for the part linear in ``c`` (default: all of it);
    ``backward_into(dest_c, g, a, b, c, needs) -> (d_a, d_b)``, optional, is ``backward`` adding its ``c``
    gradient into ``dest_c`` (the second ``c`` term then needs no buffer of its own);
    ``cotangents[i]`` is None where output ``i`` of the backward was not computed or not used;
    ``needs`` says which of ``(grad_out, a, b, c)`` need a gradient.
    """
    ga, gb, gc = cotangents
    need_g, need_a, need_b, need_c = needs
    d_g = d_a = d_b = d_c = None
    if ga is not None:
        if need_g:
            d_g = _add(d_g, forward(ga, b, c))
        if need_b or need_c:
            _, x_b, x_c = backward(grad_out, ga, b, c, [False, need_b, need_c])
            d_b, d_c = _add(d_b, x_b if need_b else None), _add(d_c, x_c if need_c else None)
    if gb is not None:
        if need_g:
            d_g = _add(d_g, forward(a, gb, c))
        if need_c and d_c is not None and backward_into is not None:
            x_a, _ = backward_into(d_c, grad_out, a, gb, c, [need_a, False, True])
            d_a = _add(d_a, x_a if need_a else None)
        elif need_a or need_c:
            x_a, _, x_c = backward(grad_out, a, gb, c, [need_a, False, need_c])
            d_a, d_c = _add(d_a, x_a if need_a else None), _add(d_c, x_c if need_c else None)
    if gc is not None:
        forward_c, backward_c = forward_c or forward, backward_c or backward
        if need_g:
            d_g = _add(d_g, forward_c(a, b, gc))
        if need_a or need_b:
            x_a, x_b, _ = backward_c(grad_out, a, b, gc, [need_a, need_b, False])
            d_a, d_b = _add(d_a, x_a if need_a else None), _add(d_b, x_b if need_b else None)
    return d_g, d_a, d_b, d_c


def used(cotangent: Optional[Tensor], computed: bool) -> Optional[Tensor]:
    """The cotangent of a backward output, or None where that output was an empty placeholder."""
    if not computed or cotangent is None:
        return None
    return cotangent.contiguous()


def planned_double_backward(forward: Callable, backward: Callable, plan: List[int], grad_out: Tensor, a: Tensor,
                            b: Tensor, c: Tensor, cotangents: List[Optional[Tensor]], needs: List[bool],
                            backward_into: Optional[Callable] = None):
    """``double_backward`` of a tensor-product op: ``forward(a, b, c, plan)`` and ``backward(g, a, b, c, plan,
    needs)`` (and ``backward_into(dest_c, g, a, b, c, needs)``, optional, with the plan closed over); the weights'
    cotangent takes the plan's weighted paths (``_plan.weighted_part``)."""
    plan_c = _plan.weighted_part(plan)
    return double_backward(lambda x, y, z: forward(x, y, z, plan), lambda g, x, y, z, n: backward(g, x, y, z, plan, n),
                           grad_out, a, b, c, cotangents, list(needs),
                           lambda x, y, z: forward(x, y, z, plan_c), lambda g, x, y, z, n: backward(g, x, y, z, plan_c, n),
                           backward_into)


def reached(cotangents: Sequence[Optional[Tensor]]) -> Tuple[bool, bool, bool, bool]:
    """Which of ``(grad_out, a, b, c)`` the cotangents present give a gradient (the others get zero)."""
    ga, gb, gc = (g is not None for g in cotangents)
    return ga or gb or gc, gb or gc, ga or gc, ga or gb


def op_outputs(grads: Sequence[Optional[Tensor]], likes: Sequence[Tensor], needs: Sequence[bool]) -> Tuple[Tensor, ...]:
    """Gradients as an op returns them: zeros where needed but None, empty where not needed."""
    return tuple((torch.zeros_like(like) if g is None else g) if n else like.new_empty(0)
                 for g, like, n in zip(grads, likes, needs))
