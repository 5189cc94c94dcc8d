"""Batmobile's ``torch.autograd.Function`` wrappers (``batmobile.autograd``), on our ops.

``SphericalHarmonics.apply(edge_vectors, L_max)`` and ``TensorProduct.apply(input1, input2, weights)``
compute what ``batmobile_nn.spherical_harmonics`` and ``batmobile_nn.tensor_product`` compute (see
``batmobile_nn.seeds.batmobile`` for the conventions); their backward calls our backward ops, which are
differentiable themselves, so ``create_graph=True`` (forces, then training on them) works too.
The functions ``batmobile_nn.spherical_harmonics`` / ``tensor_product`` are differentiable already;
these classes exist for code written against Batmobile.
"""

from typing import Optional, Tuple

import torch
from torch import Tensor

from .seeds import batmobile as _bm


class SphericalHarmonics(torch.autograd.Function):
    """``SphericalHarmonics.apply(edge_vectors [n, 3], L_max) -> [n, (L_max+1)^2]``, differentiable in ``edge_vectors``.

    >>> v = torch.randn(4, 3, requires_grad=True)
    >>> SphericalHarmonics.apply(v, 3).sum().backward()
    >>> v.grad.shape
    torch.Size([4, 3])
    """

    @staticmethod
    def forward(ctx, edge_vectors: Tensor, L_max: int) -> Tensor:
        ctx.save_for_backward(edge_vectors)
        return _bm.spherical_harmonics(edge_vectors, L_max)  # [n, (L_max+1)^2]

    @staticmethod
    def backward(ctx, grad_Y_lm: Tensor) -> Tuple[Optional[Tensor], None]:
        (edge_vectors,) = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None
        return _bm.spherical_harmonics_backward(edge_vectors, grad_Y_lm.contiguous()), None


class TensorProduct(torch.autograd.Function):
    """``TensorProduct.apply(input1 [n, c_in, 16], input2 [n, 16], weights [34, c_in, c_out]) -> [n, c_out, 16]``.

    >>> x = torch.randn(5, 4, 16, requires_grad=True)
    >>> w = torch.randn(34, 4, 8, requires_grad=True)
    >>> TensorProduct.apply(x, torch.randn(5, 16), w).pow(2).sum().backward()
    >>> x.grad.shape, w.grad.shape
    (torch.Size([5, 4, 16]), torch.Size([34, 4, 8]))
    """

    @staticmethod
    def forward(ctx, input1: Tensor, input2: Tensor, weights: Tensor) -> Tensor:
        ctx.save_for_backward(input1, input2, weights)
        return _bm.tensor_product(input1, input2, weights)  # [n, c_out, 16]

    @staticmethod
    def backward(ctx, grad_output: Tensor) -> Tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
        input1, input2, weights = ctx.saved_tensors
        needs = list(ctx.needs_input_grad[:3])
        if not any(needs):
            return None, None, None
        c_in, c_out = input1.shape[1], weights.shape[2]
        plan, cg = _bm.weighted_plan(c_in, c_out)
        # the layout adapters are permutations: the gradient of one is the other
        grad_in1, grad_in2, grad_w = torch.ops.batmobile.tensor_product_backward(
            _bm.to_e3nn_layout(grad_output).contiguous(), _bm.to_e3nn_layout(input1), input2, weights.reshape(-1),
            list(plan), list(cg), needs)
        return (_bm.from_e3nn_layout(grad_in1, c_in) if needs[0] else None,  # [n, c_in, 16]
                grad_in2 if needs[1] else None,  # [n, 16]
                grad_w.reshape(weights.shape) if needs[2] else None)  # [34, c_in, c_out]


# the names Batmobile's package exports for the same classes
SphericalHarmonicsFunction = SphericalHarmonics
TensorProductFunction = TensorProduct

__all__ = ["SphericalHarmonics", "TensorProduct", "SphericalHarmonicsFunction", "TensorProductFunction"]
