"""``FusedInteraction``: a MACE interaction block as one module, the radial MLP's last layer taken into the convolution.

mace-torch's ``RealAgnosticResidualInteractionBlock`` (and ``RealAgnosticInteractionBlock``, MACE's first
layer) compute ``linear_up`` -> radial MLP -> ``conv_tp`` + ``scatter_sum`` -> ``linear`` / avg_num_neighbors,
with the skip connection ``skip_tp`` before (residual) or after (first layer). Here the same submodules run,
under the same names (same ``state_dict``), except that the radial MLP stops before its last layer and
``ops.conv_radial`` takes that layer in: what autograd keeps for the backward is the MLP's hidden features
(``[n_edges, 64]`` at MACE-MP's shape) and not the per-edge weights (``[n_edges, weight_numel]``).
The price is one matrix product more in the backward (the weights are made again). ``patch``'s default fusion
(``patches/_fusion.py``) does the same inside mace's blocks, where and while it lowers the peak;
``patch(model, fuse_interactions=True)`` puts this module in place of every supported block.
"""

from typing import Any, Optional, Tuple

import torch
from torch import Tensor

from ..ops.conv_radial import conv_radial
from ._conv import EquivariantConv
from ._radial import FullyConnectedNet


def _block_classes() -> Tuple[type, type]:
    from mace.modules import blocks  # mace is needed only to build or convert a block
    return blocks.RealAgnosticResidualInteractionBlock, blocks.RealAgnosticInteractionBlock


def unsupported(block: torch.nn.Module) -> Optional[str]:
    """Why ``block`` cannot become a ``FusedInteraction`` (None when it can)."""
    residual, first = _block_classes()
    if type(block) not in (residual, first) or "forward" in vars(block):
        return (f"it is a {type(block).__module__}.{type(block).__qualname__}; FusedInteraction mirrors mace's "
                "RealAgnosticResidualInteractionBlock and RealAgnosticInteractionBlock")
    radial = block.conv_tp_weights
    if not isinstance(radial, FullyConnectedNet):
        from ._radial import unsupported as radial_unsupported
        reason = radial_unsupported(radial)
        if reason is not None:
            return f"its radial MLP: {reason}"
        radial = FullyConnectedNet.from_e3nn(radial)
    reason = radial.last_layer_unsupported()
    if reason is not None:
        return f"its radial MLP: {reason}"
    conv = block.conv_tp
    if getattr(conv, "shared_weights", True) or getattr(conv, "internal_weights", True):
        return "its conv_tp does not take per-edge weights"
    if not isinstance(conv, EquivariantConv) and any(ins.connection_mode not in ("uvu", "uvw")
                                                     for ins in conv.instructions):
        return "its conv_tp has paths other than 'uvu' and 'uvw'"
    return None


class FusedInteraction(torch.nn.Module):
    """A MACE interaction block (``RealAgnosticResidualInteractionBlock``, or ``RealAgnosticInteractionBlock``
    with ``residual=False``): the inputs mace passes (by keyword; the positional order is the residual block's),
    the outputs and the ``state_dict`` of mace's. The constructor takes mace's irreps arguments (not
    ``edge_irreps`` nor the cuEquivariance / OpenEquivariance configs).

    ``forward(node_attrs, node_feats, edge_attrs, edge_feats, edge_index, cutoff=None, ...)`` returns
    ``(message [n_nodes, mul, (l_max + 1) ** 2], sc)`` with ``sc`` the skip connection (residual) or None.
    ``FusedInteraction.from_mace(block)`` converts a built block (its very tensors); the constructor builds
    one with mace (its instructions and initialization) and converts it.

    >>> from e3nn import o3
    >>> block = FusedInteraction(o3.Irreps("3x0e"), o3.Irreps("8x0e"), o3.Irreps("0e+1o"), o3.Irreps("4x0e"),
    ...                          o3.Irreps("8x0e+8x1o"), o3.Irreps("8x0e"), avg_num_neighbors=2.0, radial_MLP=[16])
    >>> edge_index = torch.tensor([[0, 1, 2], [1, 2, 0]])
    >>> message, sc = block(torch.eye(3), torch.randn(3, 8), torch.randn(3, 4), torch.randn(3, 4), edge_index)
    >>> message.shape, sc.shape
    (torch.Size([3, 8, 4]), torch.Size([3, 8]))
    """

    # the block's descriptive attributes (irreps, radial_MLP: mace's tools read them) are plain Python objects
    _MACE_ATTRIBUTES = ("node_attrs_irreps", "node_feats_irreps", "edge_attrs_irreps", "edge_feats_irreps",
                        "target_irreps", "hidden_irreps", "edge_irreps", "radial_MLP", "irreps_out")
    __jit_ignored_attributes__ = list(_MACE_ATTRIBUTES) + ["_batmobile_block"]
    residual: bool
    avg_num_neighbors: float

    def __init__(self, node_attrs_irreps, node_feats_irreps, edge_attrs_irreps, edge_feats_irreps, target_irreps,
                 hidden_irreps, avg_num_neighbors: float, radial_MLP=None, residual: bool = True, *,
                 _block: Optional[torch.nn.Module] = None):
        super().__init__()
        if _block is None:
            residual_class, first_class = _block_classes()
            _block = (residual_class if residual else first_class)(
                node_attrs_irreps, node_feats_irreps, edge_attrs_irreps, edge_feats_irreps, target_irreps,
                hidden_irreps, avg_num_neighbors, radial_MLP=radial_MLP)
        reason = unsupported(_block)
        if reason is not None:
            raise ValueError(f"FusedInteraction: {_block.__class__.__name__} is not supported: {reason}")
        self.residual = type(_block) is _block_classes()[0]
        self.avg_num_neighbors = float(_block.avg_num_neighbors)
        radial, conv = _block.conv_tp_weights, _block.conv_tp
        # the block's submodules themselves, under their names and in its order (the same state_dict and
        # parameters() order: an optimizer's state saved with one loads into the other); the linears and skip as
        # they are, stock or ours
        converted = {"conv_tp": conv if isinstance(conv, EquivariantConv) else EquivariantConv.from_e3nn(conv),
                     "conv_tp_weights": radial if isinstance(radial, FullyConnectedNet)
                     else FullyConnectedNet.from_e3nn(radial)}
        for name, module in _block.named_children():
            if name in ("linear_up", "conv_tp", "conv_tp_weights", "linear", "skip_tp", "reshape"):
                self.add_module(name, converted.get(name, module))
        for name in self._MACE_ATTRIBUTES:
            if hasattr(_block, name):
                setattr(self, name, getattr(_block, name))

    @classmethod
    def from_mace(cls, block: torch.nn.Module) -> "FusedInteraction":
        """The ``FusedInteraction`` computing what ``block`` computes, holding its tensors (same ``state_dict``)."""
        return cls(None, None, None, None, None, None, 0.0, _block=block)

    @torch.jit.unused
    def sync_attributes(self, block: torch.nn.Module) -> None:
        """Give ``block`` (mace's, sharing this module's submodules) this module's plain attributes, which may
        have been set since (mace's fine-tuning sets ``avg_num_neighbors`` on live models)."""
        for attribute in ("avg_num_neighbors",) + self._MACE_ATTRIBUTES:
            if hasattr(self, attribute):
                setattr(block, attribute, getattr(self, attribute))

    def forward(self, node_attrs: Tensor, node_feats: Tensor, edge_attrs: Tensor, edge_feats: Tensor,
                edge_index: Tensor, cutoff: Optional[Tensor] = None, lammps_class: Optional[Any] = None,
                lammps_natoms: Tuple[int, int] = (0, 0), first_layer: bool = False) -> Tuple[Tensor, Optional[Tensor]]:
        """``node_attrs [n_nodes, n_elements]``, ``node_feats [n_nodes, node_feats_irreps.dim]``, ``edge_attrs
        [n_edges, sh.dim]``, ``edge_feats [n_edges, n_radial]``, ``edge_index [2, n_edges]`` (sender, receiver),
        ``cutoff [n_edges, 1]`` or None. LAMMPS' ghost exchange (``lammps_class``): the block that ``patch``
        replaced runs it (eager only); a ``FusedInteraction`` built on its own refuses it."""
        if lammps_class is not None:
            return self._stock_forward(node_attrs, node_feats, edge_attrs, edge_feats, edge_index, cutoff,
                                       lammps_class, lammps_natoms, first_layer)
        if edge_index.dim() != 2 or edge_index.shape[0] != 2:
            raise ValueError("edge_index must have shape [2, n_edges], got " + str(list(edge_index.shape)))
        sc: Optional[Tensor] = None
        if self.residual:
            sc = self.skip_tp(node_feats, node_attrs)  # [n_nodes, hidden_irreps.dim]
        node_feats = self.linear_up(node_feats)  # [n_nodes, edge_irreps.dim]
        hidden = self.conv_tp_weights.hidden(edge_feats)  # [n_edges, radial_MLP[-1]]
        if cutoff is not None:  # MACE scales the weights by the cutoff: the last layer is linear, so the hidden rows
            hidden = hidden * cutoff
        message = conv_radial(node_feats, edge_attrs, hidden, self.conv_tp_weights.last_weight(),
                              self.conv_tp_weights.last_alpha(), edge_index[0], edge_index[1], None,
                              self.conv_tp._plan, self.conv_tp._cg, self.conv_tp.deterministic)  # [n_nodes, mid.dim]
        message = self.linear(message) / self.avg_num_neighbors  # [n_nodes, target_irreps.dim]
        if not self.residual:
            message = self.skip_tp(message, node_attrs)
        return self.reshape(message), sc

    @torch.jit.unused
    def _stock_forward(self, node_attrs: Tensor, node_feats: Tensor, edge_attrs: Tensor, edge_feats: Tensor,
                       edge_index: Tensor, cutoff: Optional[Tensor], lammps_class: Any, lammps_natoms: Tuple[int, int],
                       first_layer: bool) -> Tuple[Tensor, Optional[Tensor]]:
        """mace's block (the one ``patch`` replaced, same submodules) for LAMMPS' ghost-atom exchange."""
        block = getattr(self, "_batmobile_block", None)
        if block is None:
            raise NotImplementedError("FusedInteraction does not support LAMMPS' ghost-atom exchange; "
                                      "unpatch the model (batmobile_nn.unpatch) to run it in LAMMPS")
        self.sync_attributes(block)
        return block(node_attrs=node_attrs, node_feats=node_feats, edge_attrs=edge_attrs, edge_feats=edge_feats,
                     edge_index=edge_index, cutoff=cutoff, lammps_class=lammps_class, lammps_natoms=lammps_natoms,
                     first_layer=first_layer)
