"""Reference ``element_linear`` / ``element_outer``: one matrix product per element present.

The nodes of each element are gathered and multiplied by that element's weight: no ``[n, mul_in, mul_out]``
per-node weight and no ``[n, mul_in * E]`` outer product (what e3nn's FullyConnectedTensorProduct with
one-hot attributes builds), so this is also a fast CPU path. Listing the elements present reads
``element`` to the host (a synchronization on CUDA, where this is only the fallback).
"""

import torch
from torch import Tensor

from .symmetric_contraction import _groups  # (element, nodes) for the elements present


def element_linear(x: Tensor, element: Tensor, weight: Tensor, alpha: float) -> Tensor:
    """``x [n, mul_in, d]``, ``element [n]``, ``weight [E, mul_in, mul_out]`` -> ``[n, mul_out, d]``."""
    out = x.new_zeros(x.shape[0], weight.shape[2], x.shape[2])  # [n, mul_out, d]
    for e, nodes in _groups(element.long(), weight.shape[0]):
        # [k, mul_out, d] = [mul_out, mul_in] @ [k, mul_in, d]
        out.index_copy_(0, nodes, torch.matmul(weight[e].transpose(0, 1), x.index_select(0, nodes)) * alpha)
    return out


def element_outer(x: Tensor, y: Tensor, element: Tensor, n_elements: int, alpha: float) -> Tensor:
    """``x [n, mul_in, d]``, ``y [n, mul_out, d]``, ``element [n]`` -> ``[n_elements, mul_in, mul_out]``."""
    out = x.new_zeros(n_elements, x.shape[1], y.shape[1])  # [E, mul_in, mul_out]
    for e, nodes in _groups(element.long(), n_elements):
        xe = x.index_select(0, nodes).transpose(0, 1).reshape(x.shape[1], -1)  # [mul_in, k * d]
        ye = y.index_select(0, nodes).transpose(0, 1).reshape(y.shape[1], -1)  # [mul_out, k * d]
        out[e] = (xe @ ye.transpose(0, 1)) * alpha
    return out
