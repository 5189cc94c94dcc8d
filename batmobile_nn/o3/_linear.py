"""``Linear``: e3nn's ``o3.Linear`` (internal, shared weights, no biases) on ``torch.ops.batmobile.linear``.

One matrix product per instruction, and the backward keeps only the input (e3nn's einsum keeps a
transposed copy of it per block). Same constructor arguments, ``instructions``, weight layout and
``state_dict`` as e3nn's module (``weight``, the empty ``bias`` buffer, ``output_mask``): e3nn builds the
instructions and path weights, and ``from_e3nn`` holds an existing module's very tensors.
"""

from typing import List, Optional

import torch
from e3nn import o3
from torch import Tensor

from .._irrep_blocks import add_block, concat_blocks
from ..ops.linear import linear  # also registers torch.ops.batmobile.linear


def unsupported(stock: torch.nn.Module) -> Optional[str]:
    """Why ``stock`` is not an e3nn ``o3.Linear`` this module computes (None when it is)."""
    if not isinstance(stock, o3.Linear):
        return f"it is a {type(stock).__module__}.{type(stock).__qualname__}, not an e3nn o3.Linear"
    if not (stock.internal_weights and stock.shared_weights):
        return "its weights are not internal and shared"
    if stock.weight.dim() != 1:
        return "it has f_in / f_out batch dimensions of weights"
    if any(ins.i_in == -1 for ins in stock.instructions) or stock.bias.numel() > 0:
        return "it has biases"
    return None


class Linear(torch.nn.Module):
    """``out[v] = path_weight * sum_u weight[u, v] x[u]`` per instruction: e3nn's ``o3.Linear(irreps_in, irreps_out)``
    with the same weights, normalization and ``state_dict``.

    Args:
        irreps_in, irreps_out: input and output irreps.
        **kwargs: e3nn's ``o3.Linear`` arguments (``instructions``, ``path_normalization``, ...); weights
            internal and shared, no biases.

    >>> lin = Linear("4x0e+4x1o", "8x0e+2x1o")
    >>> lin(torch.randn(5, 16)).shape
    torch.Size([5, 14])
    """

    # class-level annotations: TorchScript reads these (an empty list has no type to infer)
    _dim_in: int
    _dim_out: int
    _paths: List[List[int]]
    _alphas: List[float]
    _out_blocks: List[List[int]]
    _in_sizes: List[int]
    _weight_sizes: List[int]

    def __init__(self, irreps_in, irreps_out, _stock: Optional[o3.Linear] = None, **kwargs):
        super().__init__()
        stock = _stock if _stock is not None else o3.Linear(irreps_in, irreps_out, **kwargs)
        reason = unsupported(stock)
        if reason is not None:
            raise ValueError(f"Linear: {stock} is not supported: {reason}")
        self.irreps_in, self.irreps_out = stock.irreps_in, stock.irreps_out
        self.instructions = stock.instructions
        self.weight_numel = stock.weight_numel
        self._dim_in, self._dim_out = self.irreps_in.dim, self.irreps_out.dim
        self.weight = stock.weight  # [weight_numel], e3nn's layout: per instruction [mul_in, mul_out]
        self.register_buffer("bias", stock.bias)  # e3nn's empty bias buffer, for the same state_dict
        self.register_buffer("output_mask", stock.output_mask)
        # the input split into its irrep blocks and the weight into its instructions' matrices, one split each
        # (a backward of one concatenation, where slices would each fill a zero tensor of the whole size)
        self._in_sizes: List[int] = [mul * ir.dim for mul, ir in self.irreps_in]
        self._weight_sizes: List[int] = []
        # per instruction with weights: input block index, mul_in, d, output block index, mul_out
        self._paths: List[List[int]] = []
        self._alphas: List[float] = []
        for ins in stock.instructions:
            mul_in, ir = self.irreps_in[ins.i_in]
            mul_out = self.irreps_out[ins.i_out].mul
            if mul_in * mul_out > 0:
                self._paths.append([ins.i_in, mul_in, ir.dim, ins.i_out, mul_out])
                self._alphas.append(float(ins.path_weight))
                self._weight_sizes.append(mul_in * mul_out)
        self._out_blocks: List[List[int]] = [[mul, ir.dim] for mul, ir in self.irreps_out]

    @classmethod
    def from_e3nn(cls, stock: o3.Linear) -> "Linear":
        """The module computing what ``stock`` computes, holding ``stock``'s tensors."""
        return cls(stock.irreps_in, stock.irreps_out, _stock=stock)

    def forward(self, features: Tensor) -> Tensor:
        """``features [..., irreps_in.dim]`` -> ``[..., irreps_out.dim]``."""
        if features.shape[-1] != self._dim_in:
            raise ValueError("features must have last dimension " + str(self._dim_in) + ", got shape "
                             + str(list(features.shape)))
        batch = list(features.shape[:-1])
        x = features.reshape(-1, self._dim_in)  # [n, dim_in]
        n = x.shape[0]
        outs: List[Optional[Tensor]] = [None for _ in self._out_blocks]
        blocks = x.split_with_sizes(self._in_sizes, dim=1)  # views [n, mul * d]
        weights = self.weight.split_with_sizes(self._weight_sizes)
        for k, (path, alpha) in enumerate(zip(self._paths, self._alphas)):
            i_in, mul_in, d, i_out, mul_out = path
            xi = blocks[i_in].reshape(n, mul_in, d)  # [n, mul_in, d], a view
            w = weights[k].view(mul_in, mul_out)
            if torch.jit.is_scripting():
                yi = torch.ops.batmobile.linear(xi, w, alpha)  # [n, mul_out, d]
            else:  # eager: without the custom-op layers (ops/_eager.py)
                yi = linear(xi, w, alpha)
            add_block(outs, i_out, yi)
        return concat_blocks(outs, self._out_blocks, x).reshape(batch + [self._dim_out])  # [..., dim_out]

    def extra_repr(self) -> str:
        return f"{self.irreps_in} -> {self.irreps_out} | {self.weight_numel} weights"
