"""Batmobile's functions (batmobile_nn.spherical_harmonics, tensor_product, ...) against e3nn."""

import pytest
import torch

import batmobile_nn as bn
from _seed_references import (BATMOBILE_PATHS, TOL, channel_major_to_e3nn, e3nn_sh, e3nn_simple_tp,
                              e3nn_to_channel_major, e3nn_weighted_tp)


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)


def _vectors(n, dtype, seed=0):
    return torch.randn(n, 3, dtype=dtype, generator=torch.Generator().manual_seed(seed)) * 2.0


def test_path_info_is_the_34_triangles_in_order():
    info = bn.get_tp_path_info()
    assert info.dtype == torch.int32 and info.shape == (34, 3)
    assert bn.get_tp_num_paths() == 34
    rows = [tuple(r) for r in info.tolist()]
    assert len(set(rows)) == 34
    assert all(max(r) <= 3 and abs(r[0] - r[1]) <= r[2] <= r[0] + r[1] for r in rows)
    assert rows == BATMOBILE_PATHS


@pytest.mark.parametrize("l_max", [0, 1, 3, 6])
def test_spherical_harmonics_match_e3nn(default_dtype, l_max):
    v = _vectors(20, default_dtype)
    out = bn.spherical_harmonics(v, l_max)
    assert out.shape == (20, (l_max + 1) ** 2) and out.dtype == default_dtype
    torch.testing.assert_close(out, e3nn_sh(v, l_max), **TOL[default_dtype])


def test_spherical_harmonics_convention():
    """Batmobile's kernels: sh[0] = 1, sh[1:4] = sqrt(3) * (x, y, z) of the unit vector."""
    v = torch.tensor([[0.6, 0.0, 0.8], [0.0, -3.0, 0.0]], dtype=torch.float64)
    sh = bn.spherical_harmonics(v, 1)
    expected = torch.tensor([[1.0, 0.6 * 3**0.5, 0.0, 0.8 * 3**0.5], [1.0, 0.0, -(3**0.5), 0.0]], dtype=torch.float64)
    torch.testing.assert_close(sh, expected)


def test_spherical_harmonics_backward_matches_e3nn(default_dtype):
    v = _vectors(15, default_dtype, seed=1).requires_grad_(True)
    grad_y = torch.randn(15, 16, dtype=default_dtype)
    (expected,) = torch.autograd.grad(e3nn_sh(v, 3), v, grad_y)
    out = bn.spherical_harmonics_backward(v.detach(), grad_y)
    assert out.shape == (15, 3)
    torch.testing.assert_close(out, expected, **TOL[default_dtype])


def test_tensor_product_simple_matches_e3nn(default_dtype):
    x, y = torch.randn(12, 16, dtype=default_dtype), torch.randn(12, 16, dtype=default_dtype)
    out = bn.tensor_product_simple(x, y)
    assert out.shape == (12, 16)
    torch.testing.assert_close(out, e3nn_simple_tp(default_dtype)(x, y), **TOL[default_dtype])


@pytest.mark.parametrize("c_in,c_out", [(1, 1), (3, 5)])
def test_tensor_product_matches_e3nn_with_e3nn_weights(default_dtype, c_in, c_out):
    x = torch.randn(7, c_in, 16, dtype=default_dtype)
    y = torch.randn(7, 16, dtype=default_dtype)
    w = torch.randn(34, c_in, c_out, dtype=default_dtype)
    tp = e3nn_weighted_tp(c_in, c_out, default_dtype)
    assert tp.weight_numel == w.numel()
    expected = e3nn_to_channel_major(tp(channel_major_to_e3nn(x), y, w.reshape(-1)), c_out)
    out = bn.tensor_product(x, y, w)
    assert out.shape == (7, c_out, 16)
    torch.testing.assert_close(out, expected, **TOL[default_dtype])


def test_tensor_product_weights_are_path_major():
    """weights[p] only feeds path p = get_tp_path_info()[p], into its l_out block."""
    x, y = torch.randn(4, 2, 16, dtype=torch.float64), torch.randn(4, 16, dtype=torch.float64)
    for p, (l1, l2, lo) in enumerate(bn.get_tp_path_info().tolist()):
        w = torch.zeros(34, 2, 3, dtype=torch.float64)
        w[p] = torch.randn(2, 3, dtype=torch.float64)
        out = bn.tensor_product(x, y, w)
        block = slice(lo * lo, (lo + 1) ** 2)
        assert out[:, :, block].abs().max() > 0
        out[:, :, block] = 0
        assert out.abs().max() == 0, (p, l1, l2, lo)


def test_fused_sh_tp_simple_matches_e3nn(default_dtype):
    v = _vectors(30, default_dtype, seed=2)
    nodes = torch.randn(6, 16, dtype=default_dtype)
    source = torch.randint(0, 6, (30,), generator=torch.Generator().manual_seed(3))
    expected = e3nn_simple_tp(default_dtype)(nodes[source], e3nn_sh(v, 3))
    for index in (source, source.int()):
        out = bn.fused_sh_tp_simple(v, nodes, index)
        assert out.shape == (30, 16)
        torch.testing.assert_close(out, expected, **TOL[default_dtype])


def test_functions_are_differentiable_like_e3nn(default_dtype):
    v = _vectors(6, default_dtype, seed=4).requires_grad_(True)
    x = torch.randn(6, 2, 16, dtype=default_dtype, requires_grad=True)
    w = torch.randn(34, 2, 3, dtype=default_dtype, requires_grad=True)
    cotangent = torch.randn(6, 3, 16, dtype=default_dtype)
    out = bn.tensor_product(x, bn.spherical_harmonics(v, 3), w)
    grads = torch.autograd.grad(out, (v, x, w), cotangent)
    e3nn_out = e3nn_weighted_tp(2, 3, default_dtype)(channel_major_to_e3nn(x), e3nn_sh(v, 3), w.reshape(-1))
    expected = torch.autograd.grad(e3nn_out, (v, x, w), channel_major_to_e3nn(cotangent))
    for g, e in zip(grads, expected):
        torch.testing.assert_close(g, e, **TOL[default_dtype])


def _raises(match, fn, *args):
    with pytest.raises(ValueError, match=match):
        fn(*args)


def test_bad_inputs_raise_value_errors():
    v, x16 = torch.randn(4, 3), torch.randn(4, 16)
    for l_max in (-1, 9, 2.0, True):
        _raises("L_max must be an int", bn.spherical_harmonics, v, l_max)
    _raises(r"edge_vectors must have shape \[n, 3\]", bn.spherical_harmonics, torch.randn(4, 4), 3)
    _raises("edge_vectors must be a float32 or float64", bn.spherical_harmonics, torch.ones(4, 3, dtype=torch.int64), 3)
    _raises(r"\(L_max\+1\)\^2 columns", bn.spherical_harmonics_backward, v, torch.randn(4, 15))
    _raises("same first dimension", bn.spherical_harmonics_backward, v, torch.randn(5, 16))
    _raises(r"input2 must have shape \[n, 16\]", bn.tensor_product_simple, x16, torch.randn(4, 15))
    _raises("same first dimension", bn.tensor_product_simple, x16, torch.randn(3, 16))
    _raises("one dtype", bn.tensor_product_simple, x16, x16.double())
    x = torch.randn(4, 2, 16)
    _raises(r"input1 must have shape \[n, c_in, 16\]", bn.tensor_product, x16, x16, torch.randn(34, 2, 2))
    _raises(r"weights must have shape \[34, c_in=2", bn.tensor_product, x, x16, torch.randn(33, 2, 2))
    _raises(r"weights must have shape \[34, c_in=2", bn.tensor_product, x, x16, torch.randn(34, 3, 2))
    _raises(r"weights must have shape \[34, c_in=2", bn.tensor_product, x, x16, torch.randn(34, 2, 0))
    _raises("source_idx must be an int32/int64", bn.fused_sh_tp_simple, v, x16, torch.zeros(4))
    _raises("source_idx must be an int32/int64", bn.fused_sh_tp_simple, v, x16, torch.zeros(3, dtype=torch.long))
    _raises(r"source_idx holds indices in \[0, 4\] but there are 4 nodes", bn.fused_sh_tp_simple, v, x16,
            torch.tensor([0, 1, 2, 4]))
