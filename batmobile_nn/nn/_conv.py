"""``EquivariantConv``: the fused gather -> tensor product -> scatter that MACE's interactions make."""

from typing import List, Optional

import torch
from e3nn import o3

from ..o3._tensor_product import TensorProductBase
from ..ops.conv import conv as _conv
from ..ops.conv_radial import conv_radial
from ._pairing import CONV_TO_RADIAL, RADIAL_TO_CONV, partner


def _stock_coefficients(stock: o3.TensorProduct) -> List[float]:
    """The Clebsch-Gordan table of ``stock`` as it computes it, in the op's ``cg`` layout.

    e3nn multiplies each path by its ``path_weight`` and by the ``_w3j_*`` buffer of its generated
    code, a buffer kept in the default dtype of the moment the module was built (so float32 values in a
    model built in float32 and converted to float64); paths with an ``l = 0`` input or output use
    exact ``1/sqrt(d)`` in place of a buffer. Reading the buffers makes the patched model compute what
    this very module computes, whatever dtype it was built in.
    """
    compiled = getattr(stock, "_compiled_main_left_right", None)
    buffers = dict(compiled.named_buffers()) if isinstance(compiled, torch.nn.Module) else {}
    cg: List[float] = []
    for ins in stock.instructions:
        l1, l2 = stock.irreps_in1[ins.i_in1].ir.l, stock.irreps_in2[ins.i_in2].ir.l
        l_out = stock.irreps_out[ins.i_out].ir.l
        w3j = buffers.get(f"_w3j_{l1}_{l2}_{l_out}")
        if w3j is None:
            w3j = o3.wigner_3j(l1, l2, l_out, dtype=torch.float64)
        cg += (w3j.detach().to("cpu", torch.float64) * ins.path_weight).flatten().tolist()  # [d1 * d2 * d_out]
    return cg


class EquivariantConv(TensorProductBase):
    """An e3nn tensor product fused with MACE's message passing.

    ``forward(node_feats, edge_attrs, tp_weights, edge_index)`` returns
    ``out[i] = sum_{e: edge_index[1, e] == i} TP(node_feats[edge_index[0, e]], edge_attrs[e], tp_weights[e])``,
    i.e. what a MACE interaction computes with ``conv_tp`` and ``scatter_sum``, without the
    ``[n_edges, irreps_out.dim]`` message tensor. Constructor arguments, buffers, parameters and weight
    layout are e3nn's ``o3.TensorProduct``'s, so ``conv_tp.state_dict()`` of a MACE block loads unchanged.

    Args: as ``e3nn.o3.TensorProduct``, plus ``deterministic``: edges must come sorted by receiver and
    the sums run in a fixed order (bitwise reproducible on the GPU; the backward then keeps an
    ``[n_edges, irreps_in1.dim]`` buffer). Otherwise the GPU backward sums by sender with atomics.

    Shapes: ``node_feats [n_nodes, irreps_in1.dim]``, ``edge_attrs [n_edges, irreps_in2.dim]``,
    ``tp_weights [n_edges, weight_numel]`` (``[weight_numel]`` or None when shared), ``edge_index [2, n_edges]``
    int32 or int64 (row 0 sender, row 1 receiver) -> ``[n_nodes, irreps_out.dim]``.

    >>> conv = EquivariantConv("8x0e", "0e+1o", "8x0e+8x1o", [(0, 0, 0, "uvu", True), (0, 1, 1, "uvu", True)])
    >>> edge_index = torch.tensor([[0, 1, 2], [1, 2, 0]])
    >>> conv(torch.randn(3, 8), torch.randn(3, 4), torch.randn(3, conv.weight_numel), edge_index).shape
    torch.Size([3, 32])
    """

    deterministic: bool

    def __init__(self, irreps_in1, irreps_in2, irreps_out, instructions: List, shared_weights: bool = False,
                 internal_weights: bool = False, in1_var=None, in2_var=None, out_var=None,
                 irrep_normalization: Optional[str] = None, path_normalization: Optional[str] = None,
                 deterministic: bool = False):
        super().__init__(irreps_in1, irreps_in2, irreps_out, instructions, in1_var, in2_var, out_var,
                         irrep_normalization, path_normalization, internal_weights, shared_weights)
        self.deterministic = deterministic

    def forward(self, node_feats: torch.Tensor, edge_attrs: torch.Tensor, tp_weights: Optional[torch.Tensor],
                edge_index: torch.Tensor, sender_perm: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Args: ``node_feats [n_nodes, irreps_in1.dim]``, ``edge_attrs [n_edges, irreps_in2.dim]``,
        ``tp_weights [n_edges, weight_numel]`` (``[weight_numel]`` when shared, None for internal weights; when
        ``patch``'s default fusion paired this module with its block's radial MLP, which then deferred its last
        layer, the MLP's hidden features ``[n_edges, hidden]``), ``edge_index [2, n_edges]`` int32/int64
        (sender, receiver), ``sender_perm [n_edges]`` (optional, the permutation sorting edges by sender).

        Returns: ``[n_nodes, irreps_out.dim]``. Raises ``ValueError`` for bad shapes, dtypes, index ranges,
        or unsorted receivers when ``deterministic``.
        """
        if edge_index.dim() != 2 or edge_index.shape[0] != 2:
            raise ValueError("edge_index must have shape [2, n_edges], got " + str(list(edge_index.shape)))
        if not torch.jit.is_scripting():
            radial = partner(self, CONV_TO_RADIAL, RADIAL_TO_CONV)  # nn/_pairing.py: the block's radial MLP
            if radial is not None and tp_weights is not None and tp_weights.shape[-1] != self.weight_numel:
                # its hidden features (scaled by MACE's cutoff): the MLP deferred its last layer to here
                return conv_radial(node_feats, edge_attrs, tp_weights, radial.last_weight(), radial.last_alpha(),
                                   edge_index[0], edge_index[1], sender_perm, self._plan, self._cg,
                                   self.deterministic)  # [n_nodes, irreps_out.dim]
        weight = self._get_weights(tp_weights)
        if torch.jit.is_scripting():
            return torch.ops.batmobile.conv(node_feats, edge_attrs, weight, edge_index[0], edge_index[1], sender_perm,
                                            self._plan, self._cg, self.deterministic)
        return _conv(node_feats, edge_attrs, weight, edge_index[0], edge_index[1], sender_perm, self._plan,
                     self._cg, self.deterministic)  # eager: without the custom-op layers (ops/_eager.py)

    @classmethod
    def from_e3nn(cls, stock: o3.TensorProduct) -> "EquivariantConv":
        """The ``EquivariantConv`` computing exactly what ``stock`` followed by MACE's scatter_sum computes.

        The returned module holds ``stock``'s tensors themselves (same device, dtype, values) under the
        same ``state_dict`` keys.

        >>> tp = o3.TensorProduct("4x0e", "0e+1o", "4x0e+4x1o", [(0, 0, 0, "uvu", True), (0, 1, 1, "uvu", True)],
        ...                       shared_weights=False, internal_weights=False)
        >>> EquivariantConv.from_e3nn(tp).state_dict().keys() == tp.state_dict().keys()
        True
        """
        instructions = [(i.i_in1, i.i_in2, i.i_out, i.connection_mode, i.has_weight) for i in stock.instructions]
        conv = cls(stock.irreps_in1, stock.irreps_in2, stock.irreps_out, instructions,
                   shared_weights=stock.shared_weights, internal_weights=stock.internal_weights)
        shapes = [(i.i_in1, i.i_in2, i.i_out, i.connection_mode, i.has_weight, i.path_shape)
                  for i in stock.instructions]
        if shapes != [(i.i_in1, i.i_in2, i.i_out, i.connection_mode, i.has_weight, i.path_shape)
                      for i in conv.instructions] or conv.weight_numel != stock.weight_numel:
            raise ValueError(f"EquivariantConv does not reproduce the paths of {stock}")
        # Same path weights and coefficients as the stock module (they differ from the defaults when the
        # module was built with other normalizations or in float32).
        cg = _stock_coefficients(stock)
        if len(cg) != len(conv._cg):
            raise ValueError(f"EquivariantConv's coefficient table does not match {stock}")
        conv.instructions = list(stock.instructions)
        conv._cg = cg
        conv.load_state_dict(stock.state_dict(), strict=True, assign=True)
        return conv
