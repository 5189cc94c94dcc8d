"""``torch.ops.batmobile.tensor_product`` (uvu / uvw, per-sample or shared weights) and its backward."""

from typing import List, Tuple

import torch
from torch import Tensor

from .. import _backend
from . import _checks, _eager, _plan, _trilinear

OP = "tensor_product"


def _tensor_product(in1: Tensor, in2: Tensor, weight: Tensor, plan: List[int], cg: List[float]) -> Tensor:
    """``in1 [batch, dim_in1]`` x ``in2 [batch, dim_in2]`` with ``weight [batch, weight_numel]`` or
    ``[weight_numel]`` -> ``[batch, dim_out]``; ``plan`` and ``cg`` from ``make_plan``."""
    _checks.tensor_product(OP, in1, in2, weight, plan, cg)
    return _backend.implementation(OP, in1.device)(in1, in2, weight, plan, cg)


def _tensor_product_backward(grad_out: Tensor, in1: Tensor, in2: Tensor, weight: Tensor, plan: List[int],
                            cg: List[float], needs: List[bool]) -> Tuple[Tensor, Tensor, Tensor]:
    """Gradients w.r.t. ``(in1, in2, weight)``; those not asked for in ``needs`` come back empty."""
    _check_backward(grad_out, in1, in2, weight, plan, cg, needs)
    return _backend.implementation(OP + "_backward", in1.device)(grad_out, in1, in2, weight, plan, cg, needs)


def _check_backward(grad_out, in1, in2, weight, plan, cg, needs):
    _checks.tensor_product(OP, in1, in2, weight, plan, cg)
    _checks.float_tensor(OP, "grad_out", grad_out, 2, _plan.dims(plan)[2])
    _checks.same(OP, {"in1": in1, "grad_out": grad_out})
    if grad_out.shape[0] != in1.shape[0] or len(needs) != 3:
        raise ValueError(f"batmobile.{OP}: grad_out must be [batch, dim_out] and needs 3 booleans")


_tensor_product_op = torch.library.custom_op("batmobile::tensor_product", _tensor_product, mutates_args=())
_backward_op = torch.library.custom_op("batmobile::tensor_product_backward", _tensor_product_backward,
                                       mutates_args=())


@_tensor_product_op.register_fake
def _(in1, in2, weight, plan, cg):
    _checks.tensor_product(OP, in1, in2, weight, plan, cg)
    return in1.new_empty(in1.shape[0], _plan.dims(plan)[2])


@_backward_op.register_fake
def _(grad_out, in1, in2, weight, plan, cg, needs):
    _check_backward(grad_out, in1, in2, weight, plan, cg, needs)
    return tuple(torch.empty_like(t) if n else t.new_empty(0) for t, n in zip((in1, in2, weight), needs))


def _setup(ctx, inputs, output):
    in1, in2, weight, plan, cg = inputs
    ctx.save_for_backward(in1, in2, weight)
    ctx.args = (plan, cg)


def _backward(ctx, grad_out):
    in1, in2, weight = ctx.saved_tensors
    needs = _eager.needs(ctx)[:3]
    grads = _eager.pick(ctx, tensor_product_backward)(grad_out.contiguous(), in1, in2, weight, *ctx.args, needs)
    return *(g if n else None for g, n in zip(grads, needs)), None, None


def _setup_backward(ctx, inputs, output):
    grad_out, in1, in2, weight, plan, cg, needs = inputs
    ctx.save_for_backward(grad_out, in1, in2, weight)
    ctx.args = (plan, cg)
    ctx.computed = needs


def _backward_backward(ctx, grad_in1, grad_in2, grad_weight):
    grad_out, in1, in2, weight = ctx.saved_tensors
    plan, cg = ctx.args
    cotangents = [_trilinear.used(g, c) for g, c in zip((grad_in1, grad_in2, grad_weight), ctx.computed)]
    forward, backward = _eager.pick(ctx, tensor_product), _eager.pick(ctx, tensor_product_backward)
    grads = _trilinear.planned_double_backward(
        lambda a, b, c, p: forward(a, b, c, p, cg), lambda g, a, b, c, p, n: backward(g, a, b, c, p, cg, n),
        plan, grad_out, in1, in2, weight, cotangents, _eager.needs(ctx)[:4])
    return *grads, None, None, None


# the ops' autograd, and what the package calls (eager: an autograd.Function with the same chain;
# tracing: the ops), ops/_eager.py
tensor_product = _eager.fast_path(_tensor_product_op, _tensor_product, _setup, _backward)
tensor_product_backward = _eager.fast_path(_backward_op, _tensor_product_backward, _setup_backward,
                                           _backward_backward)
