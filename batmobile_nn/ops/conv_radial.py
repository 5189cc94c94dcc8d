"""``torch.ops.batmobile.conv_radial``: the convolution with the radial MLP's last layer taken in.

MACE's per-edge convolution weights are the last linear layer of its radial MLP:
``weight = alpha * radial_hidden @ radial_weight`` (``[n_edges, hidden] @ [hidden, weight_numel]``, ``alpha``
the layer's normalization). This op computes ``conv(node_feats, edge_attrs, weight, sender, receiver, ...)``
from ``radial_hidden`` and ``radial_weight`` (``ops/conv.py`` for the convolution's arguments and modes).

Why an op of its own: the separate layers keep ``weight`` from the forward to the backward
(``[n_edges, weight_numel]``: 1,280 values an edge at MACE-MP-medium's shape, the largest tensor of an
energy-and-forces step); this op keeps ``radial_hidden`` (64 values an edge) and makes ``weight`` again in
its backward, one matrix product more. On the CPU, and by default on the GPU, ``weight`` still exists for the
time of one call (a matrix product, then the convolution); ``_uvu.RADIAL_IN_KERNEL`` makes the GPU forward
compute it inside the convolution kernel (``_uvu_radial_codegen.py``), never written (opt-in until measured).
"""

from typing import List, Optional

import torch
from torch import Tensor

from .. import _backend
from ..reference.conv import radial_weights
from . import _checks, _eager, _plan
from .conv import _check_data, conv_backward

OP = "conv_radial"


def _check(node_feats, edge_attrs, radial_hidden, radial_weight, sender, receiver, sender_perm, plan, cg):
    """What ``ops/conv.py`` checks, with ``radial_hidden`` and ``radial_weight`` in place of the weights."""
    _checks.plan(OP, plan, cg)
    dim1, dim2, _, weight_numel = _plan.dims(plan)
    _checks.float_tensor(OP, "node_feats", node_feats, 2, dim1)
    _checks.float_tensor(OP, "edge_attrs", edge_attrs, 2, dim2)
    _checks.float_tensor(OP, "radial_hidden", radial_hidden, 2)
    _checks.float_tensor(OP, "radial_weight", radial_weight, 2, weight_numel)
    _checks.same(OP, {"node_feats": node_feats, "edge_attrs": edge_attrs, "radial_hidden": radial_hidden,
                      "radial_weight": radial_weight})
    n_edges = edge_attrs.shape[0]
    if radial_hidden.shape[0] != n_edges or radial_hidden.shape[1] != radial_weight.shape[0]:
        raise ValueError(f"batmobile.{OP}: radial_hidden must have shape [n_edges={n_edges}, hidden] and "
                         f"radial_weight [hidden, weight_numel={weight_numel}] with one hidden size, got "
                         f"{list(radial_hidden.shape)} and {list(radial_weight.shape)}")
    for name, index in (("sender", sender), ("receiver", receiver)):
        _checks.index_tensor(OP, name, index, "n_edges", n_edges, "node_feats", node_feats)
    if sender_perm is not None:
        _checks.sender_perm(OP, sender_perm, n_edges, node_feats.device)


def _conv_radial(node_feats: Tensor, edge_attrs: Tensor, radial_hidden: Tensor, radial_weight: Tensor, alpha: float,
                 sender: Tensor, receiver: Tensor, sender_perm: Optional[Tensor], plan: List[int], cg: List[float],
                 deterministic: bool) -> Tensor:
    """``node_feats [n_nodes, dim_in1]``, ``edge_attrs [n_edges, dim_in2]``, ``radial_hidden [n_edges, hidden]``,
    ``radial_weight [hidden, weight_numel]``, ``sender``/``receiver [n_edges]`` -> ``[n_nodes, dim_out]``."""
    _check(node_feats, edge_attrs, radial_hidden, radial_weight, sender, receiver, sender_perm, plan, cg)
    _check_data(node_feats, sender, receiver, deterministic, OP)
    impl = _backend.implementation(OP, node_feats.device)
    if impl is getattr(_backend.reference, OP):
        return impl(node_feats, edge_attrs, radial_hidden, radial_weight, alpha, sender, receiver, plan, cg)
    return impl(node_feats, edge_attrs, radial_hidden, radial_weight, alpha, sender, receiver, sender_perm, plan, cg,
                deterministic)  # _cuda.conv_radial


_conv_radial_op = torch.library.custom_op("batmobile::conv_radial", _conv_radial, mutates_args=())


@_conv_radial_op.register_fake
def _(node_feats, edge_attrs, radial_hidden, radial_weight, alpha, sender, receiver, sender_perm, plan, cg,
      deterministic):
    _check(node_feats, edge_attrs, radial_hidden, radial_weight, sender, receiver, sender_perm, plan, cg)
    return node_feats.new_empty(node_feats.shape[0], _plan.dims(plan)[2])


def _setup(ctx, inputs, output):
    (node_feats, edge_attrs, radial_hidden, radial_weight, alpha, sender, receiver, sender_perm, plan, cg,
     deterministic) = inputs
    # not the [n_edges, weight_numel] weights: the backward makes them again from radial_hidden
    ctx.save_for_backward(node_feats, edge_attrs, radial_hidden, radial_weight, sender, receiver, sender_perm)
    ctx.args = (alpha, plan, cg, deterministic)


def _backward(ctx, grad_out):
    node_feats, edge_attrs, radial_hidden, radial_weight, sender, receiver, sender_perm = ctx.saved_tensors
    alpha, plan, cg, deterministic = ctx.args
    need_node, need_edge, need_hidden, need_radial = _eager.needs(ctx)[:4]
    # differentiable steps (a matrix product, the convolution's backward op, matrix products), so that a
    # backward building a graph (training on forces) has second derivatives
    weight = radial_weights(radial_hidden, radial_weight, alpha)  # [n_edges, weight_numel], again
    needs = [need_node, need_edge, need_hidden or need_radial]
    grad_node, grad_edge, grad_weight = _eager.pick(ctx, conv_backward)(
        grad_out.contiguous(), node_feats, edge_attrs, weight, sender, receiver, sender_perm, plan, cg, deterministic,
        needs)
    grad_hidden = torch.mm(grad_weight, radial_weight.t()) * alpha if need_hidden else None  # [n_edges, hidden]
    grad_radial = torch.mm(radial_hidden.t(), grad_weight) * alpha if need_radial else None  # [hidden, numel]
    return (grad_node if need_node else None, grad_edge if need_edge else None, grad_hidden, grad_radial,
            None, None, None, None, None, None, None)


# the op's autograd, and what the package calls (eager: an autograd.Function with the same chain), ops/_eager.py
conv_radial = _eager.fast_path(_conv_radial_op, _conv_radial, _setup, _backward)
