"""Batmobile's functional API (``batmobile.spherical_harmonics``, ``tensor_product``, ...) on our ops.

Conventions (the e3nn computation each function equals):

* A 16-vector is the irreps ``0e+1e+2e+3e``: components ``[l=0 | l=1 (3) | l=2 (5) | l=3 (7)]``, each
  block in e3nn's ``m`` order. Parity is ignored, as Batmobile does: every ``l`` is labelled even, so all
  34 triangles ``(l1, l2, l_out)`` with ``l1, l2, l_out <= 3`` are allowed paths.
* Paths come in Batmobile's order: ``l1``, then ``l2``, then ``l_out`` ascending (``get_tp_path_info``).
* Coupling: e3nn's ``wigner_3j(l1, l2, l_out)`` with e3nn's default normalization of an
  ``o3.TensorProduct`` with these instructions (``irrep_normalization="component"``,
  ``path_normalization="element"``). Batmobile's own kernels use ``sqrt(2 l_out + 1) * wigner_3j``
  without path normalization; ours equal e3nn's module instead, whose weights and outputs MACE uses
  (the two differ by e3nn's path weight ``1 / sqrt(c_in * n_paths(l_out))``, ``c_in = 1`` without weights).
* Spherical harmonics: e3nn's real harmonics with ``normalize=True`` and ``normalization="component"``
  (``Y_0 = 1``, ``Y_1 = sqrt(3) * (x, y, z)`` for a unit vector), as Batmobile's kernels.
* Any float32 or float64 input works (Batmobile's kernels take float32 only); every device our ops run on.
"""

from functools import lru_cache
from typing import Tuple

import torch
from torch import Tensor

from ..ops import _checks, make_plan
from ..ops._sh_table import L_MAX as _L_MAX_TABLE

L_MAX = 3
DIM = (L_MAX + 1) ** 2  # 16 components per feature vector
IRREPS = "+".join(f"{l}e" for l in range(L_MAX + 1))  # "0e+1e+2e+3e"
PATHS: Tuple[Tuple[int, int, int], ...] = tuple(
    (l1, l2, l_out) for l1 in range(L_MAX + 1) for l2 in range(L_MAX + 1)
    for l_out in range(abs(l1 - l2), min(l1 + l2, L_MAX) + 1))


def _fail(function: str, message: str):
    raise ValueError(f"batmobile_nn.{function}: {message}")


def _check_float(function: str, name: str, t: Tensor, shape: str, ndim: int, last: int = -1):
    if not isinstance(t, Tensor) or t.dtype not in (torch.float32, torch.float64):
        _fail(function, f"{name} must be a float32 or float64 tensor {shape}, got "
                        f"{t.dtype if isinstance(t, Tensor) else type(t).__name__}")
    if t.dim() != ndim or (last >= 0 and t.shape[-1] != last):
        _fail(function, f"{name} must have shape {shape}, got {tuple(t.shape)}")


def _check_batch(function: str, **tensors: Tensor):
    sizes = {name: t.shape[0] for name, t in tensors.items()}
    if len(set(sizes.values())) != 1:
        _fail(function, f"inputs need the same first dimension, got {sizes}")


# Plans are built once per shape, outside torch.compile's tracing (their result is a constant).
@torch.compiler.assume_constant_result
def simple_plan() -> Tuple[Tuple[int, ...], Tuple[float, ...]]:
    """``plan, cg`` of e3nn's ``0e+1e+2e+3e (x) 0e+1e+2e+3e -> 0e+1e+2e+3e``, 34 ``uvu`` paths, no weights."""
    return _simple_plan()


@torch.compiler.assume_constant_result
def weighted_plan(c_in: int, c_out: int) -> Tuple[Tuple[int, ...], Tuple[float, ...]]:
    """``plan, cg`` of e3nn's ``c_in x (0e+1e+2e+3e) (x) 0e+1e+2e+3e -> c_out x (0e+1e+2e+3e)``, 34 ``uvw`` paths."""
    return _weighted_plan(c_in, c_out)


@lru_cache(maxsize=None)
def _simple_plan() -> Tuple[Tuple[int, ...], Tuple[float, ...]]:
    plan = make_plan(IRREPS, IRREPS, IRREPS, [(l1, l2, lo, "uvu", False) for l1, l2, lo in PATHS])
    return plan.plan, plan.cg


@lru_cache(maxsize=64)
def _weighted_plan(c_in: int, c_out: int) -> Tuple[Tuple[int, ...], Tuple[float, ...]]:
    irreps_in1 = "+".join(f"{c_in}x{l}e" for l in range(L_MAX + 1))
    irreps_out = "+".join(f"{c_out}x{l}e" for l in range(L_MAX + 1))
    plan = make_plan(irreps_in1, IRREPS, irreps_out, [(l1, l2, lo, "uvw", True) for l1, l2, lo in PATHS])
    return plan.plan, plan.cg


def to_e3nn_layout(x: Tensor) -> Tensor:
    """Channel-major ``[n, c, 16]`` -> e3nn's irrep-major ``[n, c*1 | c*3 | c*5 | c*7]`` (a permutation)."""
    n, c = x.shape[0], x.shape[1]
    return torch.cat([x[:, :, l * l:(l + 1) ** 2].reshape(n, c * (2 * l + 1)) for l in range(L_MAX + 1)], dim=1)


def from_e3nn_layout(x: Tensor, c: int) -> Tensor:
    """Inverse of ``to_e3nn_layout``: ``[n, 16 c]`` (irrep-major) -> ``[n, c, 16]``."""
    n, blocks, offset = x.shape[0], [], 0
    for l in range(L_MAX + 1):
        blocks.append(x[:, offset:offset + c * (2 * l + 1)].reshape(n, c, 2 * l + 1))
        offset += c * (2 * l + 1)
    return torch.cat(blocks, dim=2)


def _check_l_max(function: str, L_max) -> int:
    if isinstance(L_max, bool) or not isinstance(L_max, int) or not 0 <= L_max <= _L_MAX_TABLE:
        _fail(function, f"L_max must be an int in [0, {_L_MAX_TABLE}], got {L_max!r}")
    return L_max


def spherical_harmonics(edge_vectors: Tensor, L_max: int) -> Tensor:
    """Real spherical harmonics ``Y_lm`` of ``edge_vectors [n, 3]`` for ``l = 0..L_max``: ``[n, (L_max+1)^2]``.

    e3nn's ``o3.spherical_harmonics(range(L_max + 1), edge_vectors, normalize=True, normalization="component")``:
    ``Y[:, 0] = 1`` and ``Y[:, 1:4] = sqrt(3) * v / |v|``. Differentiable (any order).

    >>> spherical_harmonics(torch.tensor([[0.0, 0.0, 2.0]]), L_max=1)
    tensor([[1.0000, 0.0000, 0.0000, 1.7321]])
    """
    _check_l_max("spherical_harmonics", L_max)
    _check_float("spherical_harmonics", "edge_vectors", edge_vectors, "[n, 3]", 2, 3)
    return torch.ops.batmobile.spherical_harmonics(edge_vectors, list(range(L_max + 1)), True, "component")


def spherical_harmonics_backward(edge_vectors: Tensor, grad_Y_lm: Tensor) -> Tensor:
    """Gradient w.r.t. ``edge_vectors [n, 3]`` of ``<grad_Y_lm, spherical_harmonics(edge_vectors, L_max)>``.

    ``L_max`` is read from ``grad_Y_lm [n, (L_max+1)^2]``.

    >>> v = torch.tensor([[0.0, 0.0, 2.0]])
    >>> spherical_harmonics_backward(v, torch.tensor([[0.0, 1.0, 0.0, 0.0]]))  # d(sqrt(3) x / |v|) / dv
    tensor([[0.8660, 0.0000, 0.0000]])
    """
    _check_float("spherical_harmonics_backward", "edge_vectors", edge_vectors, "[n, 3]", 2, 3)
    _check_float("spherical_harmonics_backward", "grad_Y_lm", grad_Y_lm, "[n, (L_max+1)^2]", 2)
    _check_batch("spherical_harmonics_backward", edge_vectors=edge_vectors, grad_Y_lm=grad_Y_lm)
    L_max = round(grad_Y_lm.shape[1] ** 0.5) - 1
    if (L_max + 1) ** 2 != grad_Y_lm.shape[1]:
        _fail("spherical_harmonics_backward", f"grad_Y_lm must have (L_max+1)^2 columns, got {grad_Y_lm.shape[1]}")
    _check_l_max("spherical_harmonics_backward", L_max)
    return torch.ops.batmobile.spherical_harmonics_backward(grad_Y_lm, edge_vectors, list(range(L_max + 1)), True,
                                                            "component")


def tensor_product_simple(input1: Tensor, input2: Tensor) -> Tensor:
    """The 34 Clebsch-Gordan paths of two 16-vectors, no weights: ``[n, 16] x [n, 16] -> [n, 16]``.

    Equals e3nn's ``o3.TensorProduct("0e+1e+2e+3e", "0e+1e+2e+3e", "0e+1e+2e+3e",
    [(l1, l2, l_out, "uvu", False) for l1, l2, l_out in get_tp_path_info().tolist()])``.

    >>> one = torch.zeros(1, 16); one[0, 0] = 1.0
    >>> tensor_product_simple(one, one)[0, :4]  # four paths reach l_out = 0: e3nn's path weight is sqrt(1/4)
    tensor([0.5000, 0.0000, 0.0000, 0.0000])
    """
    _check_float("tensor_product_simple", "input1", input1, "[n, 16]", 2, DIM)
    _check_float("tensor_product_simple", "input2", input2, "[n, 16]", 2, DIM)
    _check_batch("tensor_product_simple", input1=input1, input2=input2)
    plan, cg = simple_plan()
    return torch.ops.batmobile.tensor_product(input1, input2, input1.new_zeros(0), list(plan), list(cg))


def check_tensor_product_inputs(function: str, input1: Tensor, input2: Tensor, weights: Tensor) -> Tuple[int, int]:
    """Validate ``tensor_product``'s inputs; returns ``(c_in, c_out)``."""
    _check_float(function, "input1", input1, "[n, c_in, 16]", 3, DIM)
    _check_float(function, "input2", input2, "[n, 16]", 2, DIM)
    _check_float(function, "weights", weights, f"[{len(PATHS)}, c_in, c_out]", 3)
    _check_batch(function, input1=input1, input2=input2)
    c_in, c_out = input1.shape[1], weights.shape[2]
    if weights.shape[0] != len(PATHS) or weights.shape[1] != c_in or c_in == 0 or c_out == 0:
        _fail(function, f"weights must have shape [{len(PATHS)}, c_in={c_in}, c_out] with c_in, c_out > 0, "
                        f"got {tuple(weights.shape)}")
    return c_in, c_out


def tensor_product(input1: Tensor, input2: Tensor, weights: Tensor) -> Tensor:
    """Weighted tensor product: ``input1 [n, c_in, 16]``, ``input2 [n, 16]``, ``weights [34, c_in, c_out]``
    -> ``[n, c_out, 16]``.

    Equals e3nn's ``o3.TensorProduct("c_in x (0e+1e+2e+3e)", "0e+1e+2e+3e", "c_out x (0e+1e+2e+3e)",
    [(l1, l2, l_out, "uvw", True) for each path], shared_weights=True)`` called with
    ``weight=weights.reshape(-1)``: the weights are e3nn's, path-major ``[34, c_in, 1, c_out]``, no reordering.
    Only the feature layout differs: Batmobile's ``[n, c, 16]`` is channel-major, e3nn's irrep-major.

    >>> out = tensor_product(torch.randn(5, 4, 16), torch.randn(5, 16), torch.randn(34, 4, 8))
    >>> out.shape
    torch.Size([5, 8, 16])
    """
    c_in, c_out = check_tensor_product_inputs("tensor_product", input1, input2, weights)
    plan, cg = weighted_plan(c_in, c_out)
    out = torch.ops.batmobile.tensor_product(to_e3nn_layout(input1), input2, weights.reshape(-1), list(plan),
                                             list(cg))
    return from_e3nn_layout(out, c_out)  # [n, c_out, 16]


def get_tp_num_paths() -> int:
    """The number of Clebsch-Gordan paths with ``l1, l2, l_out <= 3``.

    >>> get_tp_num_paths()
    34
    """
    return len(PATHS)


def get_tp_path_info() -> Tensor:
    """``(l1, l2, l_out)`` of each path, in the order of ``tensor_product``'s weights: int32 tensor ``[34, 3]``.

    >>> get_tp_path_info()[:3].tolist()
    [[0, 0, 0], [0, 1, 1], [0, 2, 2]]
    """
    return torch.tensor(PATHS, dtype=torch.int32)


def fused_sh_tp_simple(edge_vectors: Tensor, node_features: Tensor, source_idx: Tensor) -> Tensor:
    """Per-edge messages ``tensor_product_simple(node_features[source_idx], spherical_harmonics(edge_vectors, 3))``.

    Args:
        edge_vectors: ``[n_edges, 3]`` float.
        node_features: ``[n_nodes, 16]``, same dtype.
        source_idx: ``[n_edges]`` int32/int64, the node each edge reads, in ``[0, n_nodes)``.

    Returns: ``[n_edges, 16]``.

    >>> fused_sh_tp_simple(torch.randn(3, 3), torch.randn(2, 16), torch.tensor([0, 1, 1])).shape
    torch.Size([3, 16])
    """
    name = "fused_sh_tp_simple"
    _check_float(name, "edge_vectors", edge_vectors, "[n_edges, 3]", 2, 3)
    _check_float(name, "node_features", node_features, "[n_nodes, 16]", 2, DIM)
    if not isinstance(source_idx, Tensor) or source_idx.dtype not in (torch.int32, torch.int64) \
            or source_idx.shape != (edge_vectors.shape[0],):
        got = f"{source_idx.dtype} {tuple(source_idx.shape)}" if isinstance(source_idx, Tensor) else type(source_idx)
        _fail(name, f"source_idx must be an int32/int64 tensor [n_edges={edge_vectors.shape[0]}], got {got}")
    if not torch.compiler.is_compiling():  # reads the data: not inside a compiled graph
        _checks.index_ranges(name, node_features.shape[0], source_idx=source_idx)
    sources = node_features.index_select(0, source_idx)  # [n_edges, 16]
    return tensor_product_simple(sources, spherical_harmonics(edge_vectors, L_MAX))
