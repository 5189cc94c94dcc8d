"""``SymmetricContraction``: MACE's product basis on ``torch.ops.batmobile.symmetric_contraction``."""

from typing import Dict, List, Optional, Tuple, Union

import torch
from e3nn import o3
from torch import Tensor

from ..ops.symmetric_contraction import MAX_CORRELATION, symmetric_contraction  # also registers the ops
from ._elements import element_of
from ._mace_cg import u_matrix


class _FrozenZeros(torch.nn.Parameter):
    """A weight whose path does not exist: zeros that stay frozen (mace's ``EmptyParam``)."""

    def __new__(cls, data):  # pylint: disable=signature-differs
        return super().__new__(cls, torch.zeros_like(data), requires_grad=False)

    def requires_grad_(self, mode: bool = True):  # pylint: disable=arguments-differ
        del mode
        return self


class _Contraction(torch.nn.Module):
    """The buffers and parameters of one output irrep, named and shaped as mace's ``Contraction``:
    ``U_matrix_{nu}`` for ``nu = 1 .. K``, ``weights_max`` (degree ``K``), ``weights[j]`` (degree ``K - 1 - j``)
    and the ``*_zeroed`` flags."""

    def __init__(self, coupling_irreps: o3.Irreps, ir_out: o3.Irrep, correlation: int, num_features: int,
                 num_elements: int, use_reduced_cg: bool, u_matrices: Optional[List[Tensor]] = None):
        super().__init__()
        dtype = torch.get_default_dtype()
        self.correlation = correlation
        self.dim_out = ir_out.dim
        self.dim_in = coupling_irreps.dim
        keep = []
        for nu in range(1, correlation + 1):
            if u_matrices is not None:
                U = u_matrices[nu - 1].detach().clone()
            else:
                U = u_matrix(coupling_irreps, o3.Irreps(str(ir_out)), nu, dtype, use_reduced_cg)
            keep.append(not torch.equal(U, torch.zeros_like(U)))
            self.register_buffer(f"U_matrix_{nu}", U)
        self.weights = torch.nn.ParameterList([])
        for nu in range(correlation, 0, -1):  # mace's order, and its initialization
            num_params = self.u(nu).shape[-1]
            w = torch.nn.Parameter(torch.randn((num_elements, num_params, num_features)) / num_params)
            if nu == correlation:
                self.weights_max = w
            else:
                self.weights.append(w)
        # exactly mace-torch 0.3.16's flags; note that flag idx is about degree idx + 1 while self.weights[idx]
        # holds degree correlation - 1 - idx (the same degree only for correlation <= 2)
        for idx, kept in enumerate(keep):
            if idx < correlation - 1:
                if not kept:
                    self.weights[idx] = _FrozenZeros(self.weights[idx])
                self.register_buffer(f"weights_{idx}_zeroed", torch.tensor(not kept, dtype=torch.bool))
            else:
                if not kept:
                    self.weights_max = _FrozenZeros(self.weights_max)
                self.register_buffer("weights_max_zeroed", torch.tensor(not kept, dtype=torch.bool))

    def u(self, nu: int) -> Tensor:
        return dict(self.named_buffers())["U_matrix_" + str(nu)]

    def blocks(self) -> Tuple[List[Tensor], List[Tensor]]:
        """Per degree ``nu = 1 .. K``, in the op's layout: ``u`` (``[D, L**nu, P]``) and weights (``[E, P, mul]``)."""
        us: List[Tensor] = []
        weights: List[Tensor] = []
        for w in self.weights:  # degrees K - 1 .. 1
            weights.insert(0, w)
        weights.append(self.weights_max)
        for nu in range(1, self.correlation + 1):
            U = self.u(nu)
            us.append(U.reshape(self.dim_out, -1, U.shape[-1]))
        return us, weights


class SymmetricContraction(torch.nn.Module):
    """MACE's symmetric contraction (``mace.modules.symmetric_contraction.SymmetricContraction``, mace-torch
    0.3.16): per node, channel and output irrep, a polynomial of degree ``correlation`` in the node's
    features whose coefficients are per-element weights times generalized Clebsch-Gordan tensors.

    Same constructor arguments, same ``state_dict`` keys and shapes (``contractions.{i}.U_matrix_{nu}``,
    ``.weights_max``, ``.weights.{j}``, ``.weights_*_zeroed``): a mace module's ``state_dict`` loads here and
    back. The ``U`` tensors are computed as mace computes them (by mace's own ``U_matrix_real``).

    Args:
        irreps_in: ``num_features x`` each coupled irrep, e.g. ``"8x0e+8x1o+8x2e+8x3o"`` (every multiplicity
            equal, with one ``0e``), as mace's ``EquivariantProductBasisBlock`` passes.
        irreps_out: the output irreps, e.g. ``"8x0e+8x1o"``; as in mace, each has ``num_features`` copies.
        correlation: the degree, 1 to 3 (or a dict from output irrep to degree).
        irrep_normalization, path_normalization: checked and ignored, as in mace.
        use_reduced_cg: as mace's: only with cuequivariance installed does it change ``U``.
        internal_weights, shared_weights: the weights are always internal, per element, shared by the nodes
            (mace fails for anything else).
        num_elements: number of elements (rows of every weight).
        u_matrices: per output irrep, its ``U_matrix_1 .. U_matrix_K`` as mace holds them (``from_mace`` passes a
            mace module's); when not given they are computed with mace's ``U_matrix_real`` (seconds at
            correlation 3).

    ``forward(x, y)``: ``x [n_nodes, num_features, irreps_in.dim / num_features]`` (mace's layout) and ``y`` the
    one-hot ``node_attrs [n_nodes, num_elements]`` (or the element index ``[n_nodes]``) ->
    ``[n_nodes, num_features * sum(2l+1 for the output irreps)]``. A float ``y`` is read as one-hot
    (``y.argmax(-1)``, as mace's cuequivariance path does): it gets no gradient.

    >>> sc = SymmetricContraction("4x0e+4x1o", "4x0e+4x1o", correlation=2, num_elements=3)
    >>> sc(torch.randn(5, 4, 4), torch.tensor([0, 2, 1, 1, 0])).shape
    torch.Size([5, 16])
    """

    def __init__(self, irreps_in, irreps_out, correlation: Union[int, Dict],
                 irrep_normalization: Optional[str] = "component", path_normalization: Optional[str] = "element", use_reduced_cg: bool = False,
                 internal_weights: Optional[bool] = None, shared_weights: Optional[bool] = None,
                 num_elements: Optional[int] = None, u_matrices: Optional[List[List[Tensor]]] = None) -> None:
        super().__init__()
        irrep_normalization = "component" if irrep_normalization is None else irrep_normalization
        path_normalization = "element" if path_normalization is None else path_normalization
        if irrep_normalization not in ("component", "norm", "none"):
            raise ValueError(f"irrep_normalization must be 'component', 'norm' or 'none', got {irrep_normalization!r}")
        if path_normalization not in ("element", "path", "none"):
            raise ValueError(f"path_normalization must be 'element', 'path' or 'none', got {path_normalization!r}")
        if internal_weights is False or shared_weights is False:
            raise ValueError("SymmetricContraction's weights are internal and shared by the nodes (per element); "
                             "internal_weights=False / shared_weights=False are not supported (nor by mace-torch)")
        if not isinstance(num_elements, int) or num_elements < 1:
            raise ValueError(f"num_elements must be a positive int, got {num_elements!r}")
        self.irreps_in = o3.Irreps(irreps_in)
        self.irreps_out = o3.Irreps(irreps_out)
        muls = {mul for mul, _ in self.irreps_in}
        self.num_features = self.irreps_in.count((0, 1))
        if len(muls) != 1 or self.num_features not in muls or self.num_features == 0:
            raise ValueError(f"irreps_in must be num_features copies of each irrep, one of them 0e "
                             f"(e.g. '8x0e+8x1o+8x2e'), got {self.irreps_in}")
        self.coupling_irreps = o3.Irreps([ir for _, ir in self.irreps_in])
        if self.coupling_irreps.dim < 2:
            raise ValueError(f"irreps_in must couple more than one scalar, got {self.irreps_in}")
        self.internal_weights, self.shared_weights = True, shared_weights
        self.num_elements = num_elements
        correlations = [self._correlation(correlation, ir) for _, ir in self.irreps_out]
        if u_matrices is not None and [len(us) for us in u_matrices] != correlations:
            raise ValueError(f"u_matrices must hold correlation U tensors per output irrep ({correlations}), got "
                             f"{[len(us) for us in u_matrices]}")
        self.contractions = torch.nn.ModuleList([
            _Contraction(self.coupling_irreps, ir, K, self.num_features, num_elements, use_reduced_cg,
                         None if u_matrices is None else u_matrices[i])
            for i, ((_, ir), K) in enumerate(zip(self.irreps_out, correlations))])
        self.correlations: List[int] = correlations

    @classmethod
    def from_mace(cls, stock: torch.nn.Module) -> "SymmetricContraction":
        """The same contraction as mace's ``SymmetricContraction`` ``stock``, holding ``stock``'s very tensors
        (same ``state_dict`` keys, device, dtype and values; its ``U`` are not recomputed)."""
        contractions = list(stock.contractions)
        correlations = {o3.Irrep(str(ir)): c.correlation for (_, ir), c in zip(stock.irreps_out, contractions)}
        u_matrices = [[dict(c.named_buffers())[f"U_matrix_{nu}"] for nu in range(1, c.correlation + 1)]
                      for c in contractions]
        module = cls(stock.irreps_in, stock.irreps_out, correlations, num_elements=contractions[0].weights_max.shape[0],
                     u_matrices=u_matrices)
        module.load_state_dict(stock.state_dict(), strict=True, assign=True)
        return module

    @staticmethod
    def _correlation(correlation, ir: o3.Irrep) -> int:
        if isinstance(correlation, dict):
            by_irrep = {o3.Irrep(key): value for key, value in correlation.items()}
            if ir not in by_irrep:
                raise ValueError(f"correlation has no entry for output irrep {ir}")
            correlation = by_irrep[ir]
        if isinstance(correlation, bool) or not isinstance(correlation, int) \
                or not 1 <= correlation <= MAX_CORRELATION:
            raise ValueError(f"correlation must be an int in [1, {MAX_CORRELATION}], got {correlation!r}")
        return correlation

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """Args: ``x [n_nodes, num_features, dim]``, ``y`` one-hot ``[n_nodes, num_elements]`` or int ``[n_nodes]``.

        Returns: ``[n_nodes, num_features * sum_o (2l_o+1)]``. Raises ``ValueError`` for bad shapes, dtypes
        and element indices.
        """
        element = element_of(y, x.shape[0], self.num_elements)  # [n_nodes]
        us: List[Tensor] = []
        weights: List[Tensor] = []
        for contraction in self.contractions:
            u_o, weights_o = contraction.blocks()
            us.extend(u_o)
            weights.extend(weights_o)
        weight = torch.cat(weights, dim=1)  # [num_elements, num_params, num_features]
        if torch.jit.is_scripting():
            return torch.ops.batmobile.symmetric_contraction(x, element, weight, us, self.correlations)
        return symmetric_contraction(x, element, weight, us, self.correlations)  # eager: ops/_eager.py

    def extra_repr(self) -> str:
        return (f"{self.irreps_in} -> {self.irreps_out}, correlation={self.correlations}, "
                f"num_elements={self.num_elements}")
