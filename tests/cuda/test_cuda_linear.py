"""CUDA ``linear`` / ``linear_outer`` (cuBLAS through ``reference/linear.py``, registered as the CUDA kernels) against
the einsum oracle: values, first and second derivatives in float32 and float64, a MACE-MP-medium-sized
``o3.Linear`` against e3nn's on the GPU, gradcheck / gradgradcheck, and the op dispatched as a CUDA kernel (no reference-path notice)."""

import pytest
import torch

import batmobile_nn
from batmobile_nn import ops
from ops.test_linear import _inputs as cpu_inputs
from ops.test_linear import assert_gradchecks, oracle_linear, oracle_outer

from cuda_cases import DEVICE, compare

pytestmark = pytest.mark.cuda

SHAPES = [(40, 4, 6, 1), (300, 33, 47, 3), (130, 64, 16, 5), (70, 7, 40, 7), (0, 8, 8, 3)]


def _inputs(shape, seed):
    return [t.to(DEVICE) for t in cpu_inputs(shape, seed)]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_linear_matches_oracle(shape, dtype):
    x, weight, _ = _inputs(shape, 0)
    compare(lambda x, w: ops.linear(x, w, 0.7), lambda x, w: oracle_linear(x, w, 0.7), [x, weight], dtype, "linear")


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_outer_matches_oracle(shape, dtype):
    x, _, y = _inputs(shape, 1)
    compare(lambda x, y: ops.linear_outer(x, y, 0.3), lambda x, y: oracle_outer(x, y, 0.3), [x, y], dtype,
            "linear_outer")


def test_mace_medium_linear_matches_e3nn(dtype):
    """MACE-MP-medium's linear after the convolution (128 channels of l = 0..3, 2,048 wide), 3,000 nodes."""
    from e3nn import o3

    irreps = "128x0e+128x1o+128x2e+128x3o"
    torch.manual_seed(0)
    stock = o3.Linear(irreps, irreps).to(DEVICE, dtype)
    ours = batmobile_nn.o3.Linear.from_e3nn(stock)
    x = torch.randn(3000, stock.irreps_in.dim, device=DEVICE, dtype=dtype, requires_grad=True)
    expected, got = stock(x), ours(x)
    grad_out = torch.randn_like(expected)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(got, expected, **tol)
    for a, b in zip(torch.autograd.grad(got, [x, stock.weight], grad_out),
                    torch.autograd.grad(expected, [x, stock.weight], grad_out)):
        torch.testing.assert_close(a, b, **tol)


def test_gradcheck_and_gradgradcheck():
    assert_gradchecks(*_inputs((9, 5, 4, 3), 4))


def test_runs_as_the_cuda_kernel():
    x, weight, _ = _inputs((10, 4, 4, 3), 5)
    ops.linear(x, weight, 1.0)  # loads the extension (its registration lists the linear)
    kernels = batmobile_nn._backend.KERNELS.get("cuda", {})
    assert "linear" in kernels and "linear_outer" in kernels, "the CUDA extension did not load"
    assert batmobile_nn._backend.implementation("linear", DEVICE) is kernels["linear"]
