"""OpenEquivariance's API (batmobile_nn.TPProblem, TensorProduct, TensorProductConv) against e3nn."""

import numpy as np
import pytest
import torch
from e3nn import o3

import batmobile_nn as bn
from _seed_references import TOL, default_dtype_of, e3nn_conv

UVU = ("4x0e+4x1o", "0e+1o+2e+3o")  # MACE-like: node features x spherical harmonics, channelwise
UVW = ("3x0e+3x1o", "0e+1o", "2x0e+2x1o+2x1e")


def _uvu_problem():
    irreps_in1, irreps_in2 = o3.Irreps(UVU[0]), o3.Irreps(UVU[1])
    irreps_out, instructions = [], []
    for i, (mul, ir1) in enumerate(irreps_in1):
        for j, (_, ir2) in enumerate(irreps_in2):
            for ir_out in ir1 * ir2:
                if ir_out.l <= 3:
                    instructions.append((i, j, len(irreps_out), "uvu", True))
                    irreps_out.append((mul, ir_out))
    return UVU[0], UVU[1], o3.Irreps(irreps_out), instructions


def _uvw_problem():
    irreps_in1, irreps_in2, irreps_out = (o3.Irreps(s) for s in UVW)
    instructions = [(i, j, k, "uvw", True) for i, (_, ir1) in enumerate(irreps_in1)
                    for j, (_, ir2) in enumerate(irreps_in2) for k, (_, ir_out) in enumerate(irreps_out)
                    if ir_out in ir1 * ir2]
    return UVW[0], UVW[1], irreps_out, instructions


PROBLEMS = {"uvu": _uvu_problem, "uvw": _uvw_problem}


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)


def _e3nn_tp(args, shared_weights, dtype):
    with default_dtype_of(dtype):
        return o3.TensorProduct(*args, shared_weights=shared_weights, internal_weights=False)


def _inputs(problem, n_x, n_y, dtype):
    X = torch.randn(n_x, problem.irreps_in1.dim, dtype=dtype)
    Y = torch.randn(n_y, problem.irreps_in2.dim, dtype=dtype)
    W = torch.randn(*(() if problem.shared_weights else (n_y,)), problem.weight_numel, dtype=dtype)
    return X, Y, W


def test_problem_matches_e3nn():
    args = _uvw_problem()
    problem = bn.TPProblem(*args)
    e3nn_tp = o3.TensorProduct(*args)
    assert problem.shared_weights is True and problem.internal_weights is False  # OpenEquivariance's defaults
    assert problem.weight_numel == e3nn_tp.weight_numel
    assert [tuple(i) for i in problem.instructions] == [tuple(i) for i in e3nn_tp.instructions]
    start, stop, shape = problem.weight_range_and_shape_for_instruction(2)
    assert (start, stop, shape) == (2 * 3 * 1 * 2, 3 * 3 * 1 * 2, (3, 1, 2))
    weighted = bn.TPProblem(*args[:3], [args[3][0] + (0.25,)] + args[3][1:], irrep_normalization="none",
                            path_normalization="path")
    e3nn_weighted = o3.TensorProduct(*args[:3], [args[3][0] + (0.25,)] + args[3][1:], irrep_normalization="none",
                                     path_normalization="path")
    assert [i.path_weight for i in weighted.instructions] == [i.path_weight for i in e3nn_weighted.instructions]


@pytest.mark.parametrize("kind", ["uvu", "uvw"])
@pytest.mark.parametrize("shared_weights", [False, True])
def test_tensor_product_matches_e3nn(default_dtype, kind, shared_weights):
    args = PROBLEMS[kind]()
    problem = bn.TPProblem(*args, shared_weights=shared_weights, irrep_dtype=default_dtype,
                           weight_dtype=default_dtype)
    X, Y, W = _inputs(problem, 9, 9, default_dtype)
    X.requires_grad_(True)
    W.requires_grad_(True)
    tp = bn.TensorProduct(problem, torch_op=True)
    out = tp(X, Y, W)
    e3nn_tp = _e3nn_tp(args, shared_weights, default_dtype)
    expected = e3nn_tp(X, Y, W)
    torch.testing.assert_close(out, expected, **TOL[default_dtype])
    cotangent = torch.randn_like(out)
    for g, e in zip(torch.autograd.grad(out, (X, W), cotangent), torch.autograd.grad(expected, (X, W), cotangent)):
        torch.testing.assert_close(g, e, **TOL[default_dtype])
    assert tp.reorder_weights_from_e3nn(W) is W and tp.reorder_weights_to_e3nn(W) is W


def _graph(n_nodes, n_edges):
    rows = torch.randint(0, n_nodes, (n_edges,))  # receivers
    cols = torch.randint(0, n_nodes, (n_edges,))  # senders
    return rows, cols


@pytest.mark.parametrize("kind", ["uvu", "uvw"])
def test_conv_matches_e3nn_tp_and_scatter(default_dtype, kind):
    args = PROBLEMS[kind]()
    problem = bn.TPProblem(*args, shared_weights=False, irrep_dtype=default_dtype, weight_dtype=default_dtype)
    X, Y, W = _inputs(problem, 5, 20, default_dtype)
    for t in (X, Y, W):
        t.requires_grad_(True)
    rows, cols = _graph(5, 20)
    out = bn.TensorProductConv(problem)(X, Y, W, rows, cols)
    expected = e3nn_conv(_e3nn_tp(args, False, default_dtype), X, Y, W, rows, cols)
    assert out.shape == (5, problem.irreps_out.dim)
    torch.testing.assert_close(out, expected, **TOL[default_dtype])
    cotangent = torch.randn_like(out)
    ours = torch.autograd.grad(out, (X, Y, W), cotangent)
    for g, e in zip(ours, torch.autograd.grad(expected, (X, Y, W), cotangent)):
        torch.testing.assert_close(g, e, **TOL[default_dtype])


def test_deterministic_conv_with_sender_perm(default_dtype):
    """OpenEquivariance's README workflow: sort the edges by receiver, pass the sender permutation."""
    args = _uvu_problem()
    problem = bn.TPProblem(*args, shared_weights=False, irrep_dtype=default_dtype, weight_dtype=default_dtype)
    X, Y, W = _inputs(problem, 6, 25, default_dtype)
    rows, cols = _graph(6, 25)
    expected = e3nn_conv(_e3nn_tp(args, False, default_dtype), X, Y, W, rows, cols)
    receiver_perm = torch.argsort(rows, stable=True)
    rows_sorted, cols_sorted = rows[receiver_perm], cols[receiver_perm]
    sender_perm = torch.argsort(cols_sorted, stable=True)
    conv = bn.TensorProductConv(problem, deterministic=True)
    for perm in (sender_perm, None):
        out = conv(X, Y[receiver_perm], W[receiver_perm], rows_sorted, cols_sorted, perm)
        torch.testing.assert_close(out, expected, **TOL[default_dtype])
    with pytest.raises(ValueError, match="sorted by receiver"):
        conv(X, Y, W, rows, cols)


def test_kahan_conv_is_more_accurate_in_float32():
    args = _uvu_problem()
    problem = bn.TPProblem(*args, shared_weights=False)  # float32 by default
    assert problem.irrep_dtype is np.float32
    X, Y, W = _inputs(problem, 2, 3000, torch.float32)
    rows, cols = torch.sort(torch.randint(0, 2, (3000,))).values, torch.randint(0, 2, (3000,))
    exact = e3nn_conv(_e3nn_tp(args, False, torch.float64), X.double(), Y.double(), W.double(), rows, cols)
    kahan = bn.TensorProductConv(problem, deterministic=True, kahan=True)(X, Y, W, rows, cols)
    plain = bn.TensorProductConv(problem, deterministic=True)(X, Y, W, rows, cols)
    assert kahan.dtype == torch.float32
    kahan_error = (kahan.double() - exact).abs()
    assert (kahan_error <= exact.abs() * 2.0**-24 + 1e-12).all()  # correctly rounded, up to float64 noise
    assert kahan_error.max() < (plain.double() - exact).abs().max() / 10


def test_module_to_dtype_converts_the_problem():
    args = _uvw_problem()
    tp = bn.TensorProduct(bn.TPProblem(*args, shared_weights=False)).double()
    assert tp.problem.irrep_dtype == torch.float64
    X, Y, W = _inputs(tp.problem, 4, 4, torch.float64)
    torch.testing.assert_close(tp(X, Y, W), _e3nn_tp(args, False, torch.float64)(X, Y, W), **TOL[torch.float64])
    with pytest.raises(ValueError, match="X must be a torch.float64 tensor"):
        tp(X.float(), Y.float(), W.float())
    kahan = bn.TensorProductConv(bn.TPProblem(*args), deterministic=True, kahan=True)
    with pytest.raises(ValueError, match="kahan=True is for float32"):
        kahan.double()


def test_bad_inputs_raise_value_errors():
    args = _uvw_problem()
    for kwargs, match in [(dict(irrep_normalization="integral"), "irrep_normalization"),
                          (dict(path_normalization="elements"), "path_normalization"),
                          (dict(internal_weights=True), "internal_weights must be False"),
                          (dict(layout="ir_mul"), "layout must be 'mul_ir'"),
                          (dict(irrep_dtype=np.float16), "irrep_dtype must be float32 or float64")]:
        with pytest.raises(ValueError, match=match):
            bn.TPProblem(*args, **kwargs)
    with pytest.raises(ValueError, match="not supported"):
        bn.TPProblem("2x0e", "2x0e", "2x0e", [(0, 0, 0, "uuu", True)])
    with pytest.raises(ValueError, match="e3nn rejects"):
        bn.TPProblem("2x0e", "1o", "2x0e", [(0, 0, 0, "uvw", True)])  # parity: 0e x 1o has no 0e
    with pytest.raises(ValueError, match="problem must be a batmobile_nn.TPProblem"):
        bn.TensorProduct(o3.TensorProduct(*args))
    shared = bn.TPProblem(*args)
    X, Y, W = _inputs(shared, 3, 3, torch.float32)
    with pytest.raises(ValueError, match=r"shared_weights=True: W must have shape \[weight_numel"):
        bn.TensorProduct(shared)(X, Y, W.expand(3, -1))
    with pytest.raises(ValueError, match="Y must be a torch.float32 tensor"):
        bn.TensorProduct(shared)(X, Y.double(), W)
    with pytest.raises(ValueError, match="kahan=True needs deterministic=True"):
        bn.TensorProductConv(shared, kahan=True)
    with pytest.raises(ValueError, match="kahan=True is for float32"):
        bn.TensorProductConv(bn.TPProblem(*args, irrep_dtype=torch.float64), deterministic=True, kahan=True)
    with pytest.raises(ValueError, match="holds indices"):
        bn.TensorProductConv(shared)(X, Y, W, torch.tensor([0, 1, 2]), torch.tensor([0, 1, 3]))
    with pytest.raises(ValueError, match="int32 or int64"):
        bn.TensorProductConv(shared)(X, Y, W, torch.tensor([0, 1, 2]), torch.tensor([0.0, 1.0, 2.0]))
