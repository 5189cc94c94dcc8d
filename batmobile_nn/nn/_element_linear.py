"""``ElementLinear``: a per-element linear map of irreps, MACE's skip connection, on ``torch.ops.batmobile.element_linear``.

MACE's interaction blocks compute ``skip_tp(node_feats, node_attrs)`` with an e3nn
``FullyConnectedTensorProduct(irreps_in, "E x 0e", irreps_out)``: with one-hot ``node_attrs`` that is, per
node, a linear map of each irrep whose weights are those of the node's element. e3nn computes it
through a ``[n, mul_in, mul_out]`` weight per node (or a ``[n, mul_in * E]`` outer product); this module
picks each node's weights instead. It holds the e3nn module's tensors (same ``state_dict``).
"""

from typing import List, Optional

import torch
from e3nn import o3
from torch import Tensor

from .._irrep_blocks import add_block, concat_blocks
from ..ops.element_linear import element_linear  # also registers torch.ops.batmobile.element_linear
from ._elements import element_of


def _unsupported(tp: torch.nn.Module) -> Optional[str]:
    """Why ``tp`` is not a per-element linear (None when it is)."""
    if not isinstance(tp, o3.TensorProduct):
        return f"it is a {type(tp).__module__}.{type(tp).__qualname__}, not an e3nn TensorProduct"
    if len(tp.irreps_in2) != 1 or tp.irreps_in2[0].ir != o3.Irrep("0e"):
        return f"its second input is {tp.irreps_in2}, not one block of scalars 'E x 0e' (the element one-hot)"
    if not (tp.internal_weights and tp.shared_weights):
        return "its weights are not internal and shared"
    for ins in tp.instructions:
        if ins.connection_mode != "uvw" or not ins.has_weight:
            return f"it has a {ins.connection_mode!r} path (a per-element linear has weighted 'uvw' paths only)"
    return None


class ElementLinear(torch.nn.Module):
    """``out = x . W[element]`` per irrep: e3nn's ``FullyConnectedTensorProduct(irreps_in, f"{num_elements}x0e",
    irreps_out)`` applied to one-hot element attributes, with the same weights, normalization and ``state_dict``.

    Args:
        irreps_in, irreps_out: the node features' irreps in and out.
        num_elements: the length of the one-hot attributes.

    >>> lin = ElementLinear("4x0e+4x1o", "8x0e+2x1o", num_elements=3)
    >>> x, attrs = torch.randn(5, 16), torch.nn.functional.one_hot(torch.tensor([0, 2, 1, 1, 0]), 3).float()
    >>> lin(x, attrs).shape
    torch.Size([5, 14])
    """

    # class-level annotations: TorchScript reads these (an empty list has no type to infer)
    num_elements: int
    _dim_in: int
    _paths: List[List[int]]
    _alphas: List[float]
    _out_blocks: List[List[int]]
    _in_sizes: List[int]
    _weight_sizes: List[int]

    def __init__(self, irreps_in, irreps_out, num_elements: int, _stock: Optional[o3.TensorProduct] = None):
        super().__init__()
        stock = _stock if _stock is not None else o3.FullyConnectedTensorProduct(irreps_in, f"{num_elements}x0e",
                                                                                 irreps_out)
        reason = _unsupported(stock)
        if reason is not None:
            raise ValueError(f"ElementLinear: {stock} is not a per-element linear: {reason}")
        self.irreps_in, self.irreps_out = stock.irreps_in1, stock.irreps_out
        self.num_elements = stock.irreps_in2[0].mul
        self._dim_in = self.irreps_in.dim
        self.weight = stock.weight  # [weight_numel], e3nn's layout: per path [mul_in, num_elements, mul_out]
        self.register_buffer("output_mask", stock.output_mask)
        # one split of the input into its irrep blocks and of the weight into its paths (see o3.Linear)
        self._in_sizes: List[int] = [mul * ir.dim for mul, ir in self.irreps_in]
        self._weight_sizes: List[int] = []
        # per path: input block index, mul_in, d, output block index, mul_out
        self._paths: List[List[int]] = []
        self._alphas: List[float] = []
        for ins in stock.instructions:
            mul_in, ir = self.irreps_in[ins.i_in1]
            mul_out = self.irreps_out[ins.i_out].mul
            self._paths.append([ins.i_in1, mul_in, ir.dim, ins.i_out, mul_out])
            # e3nn: path_weight times the (l, 0, l) coupling, which is the identity over sqrt(2l + 1)
            self._alphas.append(ins.path_weight / ir.dim ** 0.5)
            self._weight_sizes.append(mul_in * self.num_elements * mul_out)
        self._out_blocks: List[List[int]] = [[mul, ir.dim] for mul, ir in self.irreps_out]

    @classmethod
    def from_e3nn(cls, stock: o3.TensorProduct) -> "ElementLinear":
        """The module computing what ``stock`` computes on one-hot attributes, holding ``stock``'s tensors."""
        return cls(stock.irreps_in1, stock.irreps_out, stock.irreps_in2[0].mul, _stock=stock)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """Args: ``x [n_nodes, irreps_in.dim]``, ``y`` one-hot ``[n_nodes, num_elements]`` (read as its argmax,
        as mace's cuEquivariance path does) or int element indices ``[n_nodes]``.

        Returns: ``[n_nodes, irreps_out.dim]``.
        """
        n = x.shape[0]
        if x.dim() != 2 or x.shape[1] != self._dim_in:
            raise ValueError("x must have shape [n_nodes, " + str(self._dim_in) + "], got " + str(list(x.shape)))
        element = element_of(y, x.shape[0], self.num_elements)  # [n_nodes]
        outs: List[Optional[Tensor]] = [None for _ in self._out_blocks]
        blocks = x.split_with_sizes(self._in_sizes, dim=1)  # views [n, mul * d]
        weights = self.weight.split_with_sizes(self._weight_sizes)
        for k, (path, alpha) in enumerate(zip(self._paths, self._alphas)):
            i_in, mul_in, d, i_out, mul_out = path
            xi = blocks[i_in].reshape(n, mul_in, d)  # [n, mul_in, d]
            w = weights[k].view(mul_in, self.num_elements, mul_out).transpose(0, 1)  # [E, mul_in, mul_out]
            if torch.jit.is_scripting():
                yi = torch.ops.batmobile.element_linear(xi, element, w, alpha)  # [n, mul_out, d]
            else:  # eager: without the custom-op layers (ops/_eager.py)
                yi = element_linear(xi, element, w, alpha)
            add_block(outs, i_out, yi)
        return concat_blocks(outs, self._out_blocks, x)  # [n, irreps_out.dim]

    def extra_repr(self) -> str:
        return f"{self.irreps_in} -> {self.irreps_out}, num_elements={self.num_elements}"
