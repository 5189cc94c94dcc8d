"""OpenEquivariance's modules (``oeq.TensorProduct``, ``oeq.TensorProductConv``) on our ops.

Differences from OpenEquivariance, all in the user's favour:

* Weights are in e3nn's layout for every problem (``uvu`` and ``uvw``): an e3nn weight tensor works
  unchanged, and ``reorder_weights_from_e3nn`` / ``reorder_weights_to_e3nn`` return their input.
* Any device our ops run on (CPU included), float32 and float64.
* ``TensorProductConv``'s ``sender_perm`` is optional in deterministic mode (computed when needed).
"""

from typing import Optional

import torch
from torch import Tensor

from ..ops import conv, tensor_product
from ._oeq_problem import TPProblem, torch_dtype


def _fail(module: str, message: str):
    raise ValueError(f"batmobile_nn.{module}: {message}")


class _ProblemModule(torch.nn.Module):
    """A module computing one ``TPProblem``: dtype checks, weight-layout helpers, ``.to(dtype)``."""

    def __init__(self, problem: TPProblem):
        super().__init__()
        if not isinstance(problem, TPProblem):
            _fail(type(self).__name__, f"problem must be a batmobile_nn.TPProblem, got {type(problem).__name__}")
        self._set_problem(problem)

    def _set_problem(self, problem: TPProblem):
        self.problem = self.config = problem  # OpenEquivariance calls it ``config``
        self.weight_numel = problem.weight_numel
        self.L3_dim = problem.irreps_out.dim
        self._plan, self._cg = problem.plan.plan_list, problem.plan.cg_list
        self._irrep_dtype = torch_dtype(problem.irrep_dtype)
        self._weight_dtype = torch_dtype(problem.weight_dtype)

    def _inputs(self, X: Tensor, Y: Tensor, W: Tensor, batch_name: str) -> Tensor:
        """Check the dtypes and the weight rank; returns ``W`` in the irreps' dtype."""
        name = type(self).__name__
        for arg, t, dtype in (("X", X, self._irrep_dtype), ("Y", Y, self._irrep_dtype), ("W", W, self._weight_dtype)):
            if not isinstance(t, Tensor) or t.dtype != dtype:
                _fail(name, f"{arg} must be a {dtype} tensor (the problem's irrep_dtype / weight_dtype; "
                            f"module.to(dtype) converts the module), got {getattr(t, 'dtype', type(t).__name__)}")
        if self.problem.shared_weights and W.dim() != 1:
            _fail(name, f"shared_weights=True: W must have shape [weight_numel={self.weight_numel}], "
                        f"got {tuple(W.shape)}")
        if not self.problem.shared_weights and W.dim() != 2:
            _fail(name, f"shared_weights=False: W must have shape [{batch_name}, weight_numel={self.weight_numel}], "
                        f"got {tuple(W.shape)}")
        return W.to(self._irrep_dtype)

    def reorder_weights_from_e3nn(self, weights: Tensor, has_batch_dim: bool = True) -> Tensor:
        """Identity: our weights are in e3nn's layout (OpenEquivariance's ``uvw`` kernels need a reordering)."""
        return weights

    def reorder_weights_to_e3nn(self, weights: Tensor, has_batch_dim: bool = True) -> Tensor:
        """Identity: our weights are in e3nn's layout."""
        return weights

    def _apply(self, fn, recurse=True):
        # ``module.double()`` / ``.to(torch.float64)`` switch the problem's dtypes, as in OpenEquivariance
        converted = fn(torch.zeros((), dtype=self._irrep_dtype))
        if converted.is_floating_point() and converted.dtype != self._irrep_dtype:
            problem = self.problem.clone()
            problem.irrep_dtype = problem.weight_dtype = converted.dtype
            torch_dtype(converted.dtype, "the new dtype")
            self._check_problem(problem)
            self._set_problem(problem)
        return super()._apply(fn, recurse)

    def _check_problem(self, problem: TPProblem):
        pass


class TensorProduct(_ProblemModule):
    """OpenEquivariance's ``TensorProduct(problem)``: e3nn's ``o3.TensorProduct`` without internal weights.

    ``forward(X [batch, irreps_in1.dim], Y [batch, irreps_in2.dim], W)`` -> ``[batch, irreps_out.dim]`` with
    ``W [weight_numel]`` (``problem.shared_weights``) or ``[batch, weight_numel]``, in e3nn's layout: no
    reordering, unlike OpenEquivariance. Not to be confused with ``batmobile_nn.o3.TensorProduct`` (e3nn's
    signature). ``torch_op`` and ``use_opaque`` are accepted and ignored.

    >>> problem = TPProblem("8x0e+8x1o", "0e+1o", "8x0e+8x1o",
    ...                     [(0, 0, 0, "uvu", True), (0, 1, 1, "uvu", True), (1, 0, 1, "uvu", True)],
    ...                     shared_weights=False, internal_weights=False)
    >>> tp = TensorProduct(problem)
    >>> tp(torch.randn(10, 32), torch.randn(10, 4), torch.randn(10, problem.weight_numel)).shape
    torch.Size([10, 32])
    """

    def __init__(self, problem: TPProblem, torch_op: bool = True, use_opaque: bool = False):
        super().__init__(problem)

    def forward(self, X: Tensor, Y: Tensor, W: Tensor) -> Tensor:
        W = self._inputs(X, Y, W, "batch")
        if torch.jit.is_scripting():
            return torch.ops.batmobile.tensor_product(X, Y, W, self._plan, self._cg)  # [batch, irreps_out.dim]
        return tensor_product(X, Y, W, self._plan, self._cg)  # eager: without the custom-op layers


class TensorProductConv(_ProblemModule):
    """OpenEquivariance's ``TensorProductConv(problem, deterministic=False, kahan=False)``: a tensor product
    fused with a graph convolution.

    ``forward(X, Y, W, rows, cols, sender_perm=None)`` returns
    ``Z[i] = sum_{e: rows[e] == i} TP(X[cols[e]], Y[e], W[e])``, shape ``[X.shape[0], irreps_out.dim]``:
    ``rows`` is the receiver, ``cols`` the sender of each edge (OpenEquivariance's ``edge_index[0]`` and
    ``edge_index[1]``; MACE's ``edge_index`` is the other way round).

    Args:
        problem: the ``TPProblem``.
        deterministic: ``rows`` must be sorted (checked); the sums run in a fixed order. ``sender_perm``,
            the permutation sorting the edges by ``cols``, may be given (the GPU backward uses it);
            it is computed when needed otherwise.
        kahan: higher-accuracy sums for float32 (needs ``deterministic=True`` and a float32 problem, as in
            OpenEquivariance). Implemented by computing and accumulating in float64, then rounding the
            result to float32 once, so it is at least as accurate as Kahan summation.
        torch_op, use_opaque: accepted and ignored.

    Shapes: ``X [n_nodes, irreps_in1.dim]``, ``Y [n_edges, irreps_in2.dim]``, ``W [n_edges, weight_numel]``
    (``[weight_numel]`` with shared weights), ``rows``/``cols``/``sender_perm [n_edges]`` int32 or int64.

    >>> problem = TPProblem("8x0e", "0e+1o", "8x0e+8x1o", [(0, 0, 0, "uvu", True), (0, 1, 1, "uvu", True)],
    ...                     shared_weights=False)
    >>> conv = TensorProductConv(problem, deterministic=True)
    >>> rows, cols = torch.tensor([0, 1, 1, 2]), torch.tensor([1, 0, 2, 1])  # receivers sorted
    >>> conv(torch.randn(3, 8), torch.randn(4, 4), torch.randn(4, problem.weight_numel), rows, cols).shape
    torch.Size([3, 32])
    """

    def __init__(self, problem: TPProblem, *, deterministic: bool = False, kahan: bool = False,
                 torch_op: bool = True, use_opaque: bool = False):
        if kahan and not deterministic:
            _fail("TensorProductConv", "kahan=True needs deterministic=True (as in OpenEquivariance)")
        super().__init__(problem)
        self.deterministic, self.kahan = bool(deterministic), bool(kahan)
        self._check_problem(problem)

    def _check_problem(self, problem: TPProblem):
        if self.kahan and (torch_dtype(problem.irrep_dtype) != torch.float32
                           or torch_dtype(problem.weight_dtype) != torch.float32):
            _fail("TensorProductConv", "kahan=True is for float32 problems (irrep_dtype and weight_dtype)")

    def forward(self, X: Tensor, Y: Tensor, W: Tensor, rows: Tensor, cols: Tensor,
                sender_perm: Optional[Tensor] = None) -> Tensor:
        W = self._inputs(X, Y, W, "n_edges")
        if self.kahan:  # float64 products and sums, one rounding to float32 at the end
            X, Y, W = X.double(), Y.double(), W.double()
        deterministic = True if self.kahan else self.deterministic
        if torch.jit.is_scripting():
            out = torch.ops.batmobile.conv(X, Y, W, cols, rows, sender_perm, self._plan, self._cg, deterministic)
        else:  # eager: without the custom-op layers (ops/_eager.py)
            out = conv(X, Y, W, cols, rows, sender_perm, self._plan, self._cg, deterministic)
        return out.float() if self.kahan else out  # [n_nodes, irreps_out.dim]


__all__ = ["TPProblem", "TensorProduct", "TensorProductConv"]
