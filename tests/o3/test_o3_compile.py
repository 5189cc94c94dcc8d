"""The o3 modules under ``torch.jit.script`` and ``torch.compile(fullgraph=True)`` equal eager."""

import pytest
import torch
from o3_cases import MODE_CASES, PROBLEMS, check_modes, random_inputs

from batmobile_nn.o3 import SphericalHarmonics, TensorProduct


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("mode, dtype", MODE_CASES)
def test_spherical_harmonics(mode, default_dtype):
    sh = SphericalHarmonics("0e+1o+2e+3o", normalize=True, normalization="component")
    vectors = torch.randn(7, 3, requires_grad=True)
    check_modes(sh, mode, [vectors], [vectors], [torch.randn(11, 3, requires_grad=True)])


@pytest.mark.parametrize("mode, dtype", MODE_CASES)
def test_tensor_product_per_sample_weights(mode, default_dtype):
    problem = PROBLEMS["mixed"]
    tp = TensorProduct(*problem, shared_weights=False)
    inputs = random_inputs(problem[0], problem[1], tp.weight_numel, (5,), shared=False, requires_grad=True)
    other = random_inputs(problem[0], problem[1], tp.weight_numel, (9,), shared=False, requires_grad=True)
    check_modes(tp, mode, list(inputs), [inputs[2], inputs[1]], list(other))


@pytest.mark.parametrize("mode, dtype", MODE_CASES)
def test_tensor_product_internal_weights(mode, default_dtype):
    """The double derivative w.r.t. the module's own parameter (a lifted graph input when compiled)."""
    problem = PROBLEMS["mace-mp-small-x3"]
    tp = TensorProduct(*problem)
    x, y, _ = random_inputs(problem[0], problem[1], tp.weight_numel, (4,), shared=True, requires_grad=True)
    other = random_inputs(problem[0], problem[1], tp.weight_numel, (6,), shared=True, requires_grad=True)[:2]
    check_modes(tp, mode, [x, y], [tp.weight, x], list(other))


def test_tensor_product_inductor():
    """One case through the default backend (inductor, C++ code generation on the CPU): values and first
    derivatives (the double backward through compiled graphs is tested with the aot_eager backend above)."""
    problem = PROBLEMS["mace-mp-small-x3"]
    tp = TensorProduct(*problem, shared_weights=False)
    inputs = random_inputs(problem[0], problem[1], tp.weight_numel, (5,), shared=False, requires_grad=True)
    other = random_inputs(problem[0], problem[1], tp.weight_numel, (8,), shared=False, requires_grad=True)
    check_modes(tp, "compile-inductor", list(inputs), [], list(other), double_backward=False)
