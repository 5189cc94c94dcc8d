"""The fused convolution in plain PyTorch: gather senders, tensor product, scatter to receivers.

``out[i] = sum over edges e with receiver[e] == i of TP(node_feats[sender[e]], edge_attrs[e], weight[e])``
(MACE's convention: ``edge_index[0]`` is the sender, ``edge_index[1]`` the receiver).
``index_add_`` on the CPU sums in edge order, so this path is deterministic.
"""

from typing import List

import torch

from ..ops import _trilinear
from .tensor_product import tensor_product, tensor_product_backward


def conv(node_feats: torch.Tensor, edge_attrs: torch.Tensor, weight: torch.Tensor, sender: torch.Tensor,
         receiver: torch.Tensor, plan: List[int], cg: List[float]) -> torch.Tensor:
    messages = tensor_product(node_feats[sender], edge_attrs, weight, plan, cg)  # [n_edges, dim_out]
    out = node_feats.new_zeros(node_feats.shape[0], messages.shape[1])  # [n_nodes, dim_out]
    return out.index_add_(0, receiver.long(), messages)


def radial_weights(radial_hidden: torch.Tensor, radial_weight: torch.Tensor, alpha: float) -> torch.Tensor:
    """``alpha * radial_hidden @ radial_weight``: ``[n_edges, weight_numel]``, one kernel (also the op's backward and
    the CUDA path's)."""
    empty = radial_hidden.new_empty(())  # addmm's first argument, not read (beta = 0)
    return torch.addmm(empty, radial_hidden, radial_weight, beta=0, alpha=alpha)


def conv_radial(node_feats: torch.Tensor, edge_attrs: torch.Tensor, radial_hidden: torch.Tensor,
                radial_weight: torch.Tensor, alpha: float, sender: torch.Tensor, receiver: torch.Tensor,
                plan: List[int], cg: List[float]) -> torch.Tensor:
    """``conv`` with ``alpha * radial_hidden @ radial_weight`` as its per-edge weights (``ops/conv_radial.py``)."""
    weight = radial_weights(radial_hidden, radial_weight, alpha)  # [n_edges, weight_numel]
    return conv(node_feats, edge_attrs, weight, sender, receiver, plan, cg)


def conv_backward(grad_out: torch.Tensor, node_feats: torch.Tensor, edge_attrs: torch.Tensor, weight: torch.Tensor,
                  sender: torch.Tensor, receiver: torch.Tensor, plan: List[int], cg: List[float], needs: List[bool]):
    """Gradients ``(node_feats, edge_attrs, weight)``; entries not in ``needs`` are empty tensors."""
    grad_messages = grad_out[receiver]  # [n_edges, dim_out]
    g_sender, g_edge, g_weight = tensor_product_backward(grad_messages, node_feats[sender], edge_attrs, weight,
                                                         plan, cg, needs)
    if needs[0]:
        g_node = torch.zeros_like(node_feats).index_add_(0, sender.long(), g_sender)  # [n_nodes, dim_in1]
    else:
        g_node = node_feats.new_empty(0)
    return g_node, g_edge, g_weight


def conv_double_backward(grad_grad_node: torch.Tensor, grad_grad_edge: torch.Tensor, grad_grad_weight: torch.Tensor,
                         grad_out: torch.Tensor, node_feats: torch.Tensor, edge_attrs: torch.Tensor,
                         weight: torch.Tensor, sender: torch.Tensor, receiver: torch.Tensor, plan: List[int],
                         cg: List[float], needs: List[bool]):
    """Gradients ``(grad_out, node_feats, edge_attrs, weight)`` of ``<cotangents, conv_backward(...)>``
    (an empty cotangent stands for zeros), composed of forward and backward calls (``ops/_trilinear.py``)."""
    cotangents = [g if g.numel() else None for g in (grad_grad_node, grad_grad_edge, grad_grad_weight)]
    grads = _trilinear.planned_double_backward(
        lambda a, b, c, p: conv(a, b, c, sender, receiver, p, cg),
        lambda g, a, b, c, p, n: conv_backward(g, a, b, c, sender, receiver, p, cg, n),
        plan, grad_out, node_feats, edge_attrs, weight, cotangents, needs)
    return _trilinear.op_outputs(grads, (grad_out, node_feats, edge_attrs, weight), needs)
