"""``torch.ops.batmobile.conv``: gather -> tensor product -> scatter, and its backward.

``out[i] = sum_{e: receiver[e] == i} TP(node_feats[sender[e]], edge_attrs[e], weight[e])`` with
``out`` of shape ``[n_nodes, dim_out]``, ``n_nodes = node_feats.shape[0]``. ``deterministic``
asks for receiver-sorted edges (checked) and a fixed summation order: bitwise reproducible on the GPU,
at the cost of an ``[n_edges, dim_in1]`` buffer in the backward, summed by sender. ``sender_perm``
(optional) is the permutation that sorts the edges by sender, for that sum (computed on demand when not
given). Without either, the GPU backward adds the node-feature gradient at the senders with float
atomics (no buffer; the last bits vary run to run, as with e3nn's and mace's ``scatter_sum``).
"""

from typing import List, Optional, Tuple

import torch
from torch import Tensor

from .. import _backend
from . import _checks, _eager, _plan, _trilinear

OP = "conv"


def _check(node_feats, edge_attrs, weight, sender, receiver, sender_perm, plan, cg):
    _checks.conv(OP, node_feats, edge_attrs, weight, sender, receiver, plan, cg)
    if sender_perm is not None:
        _checks.sender_perm(OP, sender_perm, edge_attrs.shape[0], node_feats.device)


def _check_data(node_feats, sender, receiver, deterministic, op: str = OP):
    """The checks that read the indices (each tensor once, remembered: ``_checks``); also conv_radial's."""
    _checks.index_ranges(op, node_feats.shape[0], sender=sender, receiver=receiver)
    if deterministic:
        _checks.sorted_receivers(op, receiver)


def _conv(node_feats: Tensor, edge_attrs: Tensor, weight: Tensor, sender: Tensor, receiver: Tensor,
         sender_perm: Optional[Tensor], plan: List[int], cg: List[float], deterministic: bool) -> Tensor:
    """``node_feats [n_nodes, dim_in1]``, ``edge_attrs [n_edges, dim_in2]``, ``weight [n_edges, weight_numel]``
    (or shared ``[weight_numel]``), ``sender``/``receiver [n_edges]`` int32/int64 -> ``[n_nodes, dim_out]``."""
    _check(node_feats, edge_attrs, weight, sender, receiver, sender_perm, plan, cg)
    _check_data(node_feats, sender, receiver, deterministic)
    impl = _backend.implementation(OP, node_feats.device)
    if impl is getattr(_backend.reference, OP):
        return impl(node_feats, edge_attrs, weight, sender, receiver, plan, cg)
    return impl(node_feats, edge_attrs, weight, sender, receiver, sender_perm, plan, cg, deterministic)


def _conv_backward(grad_out: Tensor, node_feats: Tensor, edge_attrs: Tensor, weight: Tensor, sender: Tensor,
                  receiver: Tensor, sender_perm: Optional[Tensor], plan: List[int], cg: List[float],
                  deterministic: bool, needs: List[bool]) -> Tuple[Tensor, Tensor, Tensor]:
    """Gradients w.r.t. ``(node_feats, edge_attrs, weight)``; those not in ``needs`` come back empty."""
    _check_backward(grad_out, node_feats, edge_attrs, weight, sender, receiver, sender_perm, plan, cg, needs)
    _check_data(node_feats, sender, receiver, deterministic)
    impl = _backend.implementation(OP + "_backward", node_feats.device)
    if impl is getattr(_backend.reference, OP + "_backward"):
        return impl(grad_out, node_feats, edge_attrs, weight, sender, receiver, plan, cg, needs)
    return impl(grad_out, node_feats, edge_attrs, weight, sender, receiver, sender_perm, plan, cg, deterministic,
                needs)


def _conv_double_backward(grad_grad_node: Tensor, grad_grad_edge: Tensor, grad_grad_weight: Tensor, grad_out: Tensor,
                         node_feats: Tensor, edge_attrs: Tensor, weight: Tensor, sender: Tensor, receiver: Tensor,
                         sender_perm: Optional[Tensor], plan: List[int], cg: List[float], deterministic: bool,
                         needs: List[bool]) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradients w.r.t. ``(grad_out, node_feats, edge_attrs, weight)`` of ``<grad_grad_node, d_node> +
    <grad_grad_edge, d_edge> + <grad_grad_weight, d_weight>``, ``(d_node, d_edge, d_weight)`` the backward; an
    empty ``grad_grad_*`` stands for zeros, gradients not in ``needs`` come back empty. One fused kernel on
    the GPU for MACE's convolutions. Not differentiable: a backward that builds a graph (third derivatives)
    composes forward and backward calls instead."""
    _check_double_backward(grad_grad_node, grad_grad_edge, grad_grad_weight, grad_out, node_feats, edge_attrs,
                           weight, sender, receiver, sender_perm, plan, cg, needs)
    _check_data(node_feats, sender, receiver, deterministic)
    impl = _backend.implementation(OP + "_double_backward", node_feats.device)
    if impl is getattr(_backend.reference, OP + "_double_backward"):
        return impl(grad_grad_node, grad_grad_edge, grad_grad_weight, grad_out, node_feats, edge_attrs, weight,
                    sender, receiver, plan, cg, needs)
    return impl(grad_grad_node, grad_grad_edge, grad_grad_weight, grad_out, node_feats, edge_attrs, weight, sender,
                receiver, sender_perm, plan, cg, deterministic, needs)


def _check_double_backward(grad_grad_node, grad_grad_edge, grad_grad_weight, grad_out, node_feats, edge_attrs, weight,
                           sender, receiver, sender_perm, plan, cg, needs):
    _check_backward(grad_out, node_feats, edge_attrs, weight, sender, receiver, sender_perm, plan, cg, [True] * 3)
    for name, cotangent, like in (("grad_grad_node", grad_grad_node, node_feats),
                                  ("grad_grad_edge", grad_grad_edge, edge_attrs),
                                  ("grad_grad_weight", grad_grad_weight, weight)):
        if cotangent.numel() or cotangent.dim() != 1:  # empty 1-d: zeros
            _checks.same(OP, {"node_feats": node_feats, name: cotangent})
            if cotangent.shape != like.shape:
                raise ValueError(f"batmobile.{OP}: {name} must be empty or of shape {list(like.shape)}, "
                                 f"got {list(cotangent.shape)}")
    if len(needs) != 4:
        raise ValueError(f"batmobile.{OP}: needs must hold 4 booleans (grad_out, node_feats, edge_attrs, weight)")


def _check_backward(grad_out, node_feats, edge_attrs, weight, sender, receiver, sender_perm, plan, cg, needs):
    _check(node_feats, edge_attrs, weight, sender, receiver, sender_perm, plan, cg)
    _checks.float_tensor(OP, "grad_out", grad_out, 2, _plan.dims(plan)[2])
    _checks.same(OP, {"node_feats": node_feats, "grad_out": grad_out})
    if grad_out.shape[0] != node_feats.shape[0] or len(needs) != 3:
        raise ValueError(f"batmobile.{OP}: grad_out must be [n_nodes, dim_out] and needs 3 booleans")


_conv_op = torch.library.custom_op("batmobile::conv", _conv, mutates_args=())
_conv_backward_op = torch.library.custom_op("batmobile::conv_backward", _conv_backward, mutates_args=())
_conv_double_backward_op = torch.library.custom_op("batmobile::conv_double_backward", _conv_double_backward,
                                                   mutates_args=())


@_conv_op.register_fake
def _(node_feats, edge_attrs, weight, sender, receiver, sender_perm, plan, cg, deterministic):
    _check(node_feats, edge_attrs, weight, sender, receiver, sender_perm, plan, cg)
    return node_feats.new_empty(node_feats.shape[0], _plan.dims(plan)[2])


@_conv_backward_op.register_fake
def _(grad_out, node_feats, edge_attrs, weight, sender, receiver, sender_perm, plan, cg, deterministic, needs):
    _check_backward(grad_out, node_feats, edge_attrs, weight, sender, receiver, sender_perm, plan, cg, needs)
    return tuple(torch.empty_like(t) if n else t.new_empty(0) for t, n in zip((node_feats, edge_attrs, weight), needs))


@_conv_double_backward_op.register_fake
def _(grad_grad_node, grad_grad_edge, grad_grad_weight, grad_out, node_feats, edge_attrs, weight, sender, receiver,
      sender_perm, plan, cg, deterministic, needs):
    _check_double_backward(grad_grad_node, grad_grad_edge, grad_grad_weight, grad_out, node_feats, edge_attrs, weight,
                           sender, receiver, sender_perm, plan, cg, needs)
    return tuple(torch.empty_like(t) if n else t.new_empty(0)
                 for t, n in zip((grad_out, node_feats, edge_attrs, weight), needs))


def _setup(ctx, inputs, output):
    node_feats, edge_attrs, weight, sender, receiver, sender_perm, plan, cg, deterministic = inputs
    ctx.save_for_backward(node_feats, edge_attrs, weight, sender, receiver, sender_perm)
    ctx.args = (plan, cg, deterministic)


def _backward(ctx, grad_out):
    node_feats, edge_attrs, weight, sender, receiver, sender_perm = ctx.saved_tensors
    needs = _eager.needs(ctx)[:3]
    grads = _eager.pick(ctx, conv_backward)(grad_out.contiguous(), node_feats, edge_attrs, weight, sender, receiver,
                                            sender_perm, *ctx.args, needs)
    return *(g if n else None for g, n in zip(grads, needs)), None, None, None, None, None, None


def _setup_backward(ctx, inputs, output):
    grad_out, node_feats, edge_attrs, weight, sender, receiver, sender_perm, plan, cg, deterministic, needs = inputs
    ctx.save_for_backward(grad_out, node_feats, edge_attrs, weight, sender, receiver, sender_perm)
    ctx.args = (plan, cg, deterministic)
    ctx.computed = needs


def _backward_backward(ctx, grad_node, grad_edge, grad_weight):
    grad_out, node_feats, edge_attrs, weight, sender, receiver, sender_perm = ctx.saved_tensors
    plan, cg, deterministic = ctx.args
    graph = (sender, receiver, sender_perm)
    cotangents = [_trilinear.used(g, c) for g, c in zip((grad_node, grad_edge, grad_weight), ctx.computed)]
    wanted = _eager.needs(ctx)[:4]
    if not torch.is_grad_enabled():  # no graph of this backward is built (training on forces): one fused op
        # only the gradients a cotangent reaches (the others are zero: autograd takes None)
        needs = [need and reach for need, reach in zip(wanted, _trilinear.reached(cotangents))]
        if not any(needs):
            return None, None, None, None, None, None, None, None, None, None, None
        empty = node_feats.new_empty(0)
        grads = _eager.pick(ctx, conv_double_backward)(*(empty if g is None else g for g in cotangents), grad_out,
                                                       node_feats, edge_attrs, weight, *graph, plan, cg,
                                                       deterministic, needs)
        return *(g if n else None for g, n in zip(grads, needs)), None, None, None, None, None, None, None
    forward, backward = _eager.pick(ctx, conv), _eager.pick(ctx, conv_backward)
    grads = _trilinear.planned_double_backward(
        lambda a, b, c, p: forward(a, b, c, *graph, p, cg, deterministic),
        lambda g, a, b, c, p, n: backward(g, a, b, c, *graph, p, cg, deterministic, n),
        plan, grad_out, node_feats, edge_attrs, weight, cotangents, wanted)
    return *grads, None, None, None, None, None, None, None


# the ops' autograd, and what the package calls (eager: an autograd.Function with the same chain;
# tracing: the ops), ops/_eager.py
conv = _eager.fast_path(_conv_op, _conv, _setup, _backward)
conv_backward = _eager.fast_path(_conv_backward_op, _conv_backward, _setup_backward, _backward_backward)
conv_double_backward = _eager.fast_path(_conv_double_backward_op, _conv_double_backward)
