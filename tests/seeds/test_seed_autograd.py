"""batmobile_nn.autograd (Batmobile's torch.autograd.Function wrappers): gradients equal e3nn's."""

import pytest
import torch

from batmobile_nn import autograd
from _seed_references import TOL, channel_major_to_e3nn, e3nn_sh, e3nn_weighted_tp


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)


def test_spherical_harmonics_backward_matches_e3nn(default_dtype):
    v = (torch.randn(10, 3, dtype=default_dtype) * 2).requires_grad_(True)
    cotangent = torch.randn(10, 16, dtype=default_dtype)
    out = autograd.SphericalHarmonics.apply(v, 3)
    torch.testing.assert_close(out, e3nn_sh(v, 3), **TOL[default_dtype])
    out.backward(cotangent)
    (expected,) = torch.autograd.grad(e3nn_sh(v, 3), v, cotangent)
    torch.testing.assert_close(v.grad, expected, **TOL[default_dtype])


def _tp_inputs(dtype, requires_grad=(True, True, True)):
    x = torch.randn(6, 3, 16, dtype=dtype).requires_grad_(requires_grad[0])
    y = torch.randn(6, 16, dtype=dtype).requires_grad_(requires_grad[1])
    w = torch.randn(34, 3, 2, dtype=dtype).requires_grad_(requires_grad[2])
    return x, y, w


@pytest.mark.parametrize("requires_grad", [(True, True, True), (False, False, True), (True, False, False)])
def test_tensor_product_backward_matches_e3nn(default_dtype, requires_grad):
    x, y, w = _tp_inputs(default_dtype, requires_grad)
    cotangent = torch.randn(6, 2, 16, dtype=default_dtype)
    out = autograd.TensorProduct.apply(x, y, w)
    assert out.shape == (6, 2, 16)
    out.backward(cotangent)
    e3nn_out = e3nn_weighted_tp(3, 2, default_dtype)(channel_major_to_e3nn(x), y, w.reshape(-1))
    wanted = [t for t in (x, y, w) if t.requires_grad]
    expected = torch.autograd.grad(e3nn_out, wanted, channel_major_to_e3nn(cotangent))
    for t, e in zip(wanted, expected):
        assert t.grad.shape == t.shape
        torch.testing.assert_close(t.grad, e, **TOL[default_dtype])
    assert all(t.grad is None for t in (x, y, w) if not t.requires_grad)


def test_double_backward_forces_match_e3nn(default_dtype):
    """Train on forces: d/d(weights, features) of <R, -dE/dv> with E = sum(TP(x, Y(v), w) * c)."""
    v = (torch.randn(6, 3, dtype=default_dtype) * 2).requires_grad_(True)
    x, _, w = _tp_inputs(default_dtype)
    c = torch.randn(6, 2, 16, dtype=default_dtype)
    R = torch.randn(6, 3, dtype=default_dtype)

    def force_loss_grads(energy):
        (forces,) = torch.autograd.grad(-energy, v, create_graph=True)
        return torch.autograd.grad((forces * R).sum(), (v, x, w))

    ours = force_loss_grads((autograd.TensorProduct.apply(x, autograd.SphericalHarmonics.apply(v, 3), w) * c).sum())
    tp = e3nn_weighted_tp(3, 2, default_dtype)
    e3nn_energy = (tp(channel_major_to_e3nn(x), e3nn_sh(v, 3), w.reshape(-1)) * channel_major_to_e3nn(c)).sum()
    for g, e in zip(ours, force_loss_grads(e3nn_energy)):
        torch.testing.assert_close(g, e, **TOL[default_dtype])


def test_batmobile_package_names():
    assert autograd.SphericalHarmonicsFunction is autograd.SphericalHarmonics
    assert autograd.TensorProductFunction is autograd.TensorProduct
