"""CUDA ``element_linear`` / ``element_outer`` (``batmobile_nn/_element_linear.py``) against the einsum oracle:
values, first and second derivatives in float32 and float64 (channel counts off the 32-wide tiles, d = 1..7, an
absent element, no nodes), a MACE-MP-medium-sized skip connection against the reference, bitwise
reproducible weight gradients, gradcheck / gradgradcheck, and a bad element index."""

import pytest
import torch

from batmobile_nn import ops, reference
from ops._compare import assert_close
from ops.test_element_linear import _inputs as cpu_inputs
from ops.test_element_linear import assert_gradchecks, oracle_linear, oracle_outer

from cuda_cases import DEVICE, compare

pytestmark = pytest.mark.cuda

SHAPES = [(40, 4, 6, 3, 1), (300, 33, 47, 5, 3), (130, 64, 16, 4, 5), (70, 7, 40, 2, 7), (0, 8, 8, 3, 3)]


def _inputs(shape, seed):
    return [t.to(DEVICE) for t in cpu_inputs(shape, seed)]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_linear_matches_oracle(shape, dtype):
    x, element, weight, _ = _inputs(shape, 0)
    compare(lambda x, w: ops.element_linear(x, element, w, 0.7), lambda x, w: oracle_linear(x, element, w, 0.7),
            [x, weight], dtype, "element_linear")


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_outer_matches_oracle(shape, dtype):
    x, element, weight, y = _inputs(shape, 1)
    E = weight.shape[0]
    compare(lambda x, y: ops.element_outer(x, y, element, E, 0.3), lambda x, y: oracle_outer(x, y, element, E, 0.3),
            [x, y], dtype, "element_outer")


def test_mace_medium_skip_matches_reference(dtype):
    """5,000 nodes of 3 elements out of 89, 128 -> 128 channels, the l = 1 block (d = 3)."""
    x, element, weight, y = _inputs((5000, 128, 128, 89, 3), 2)
    element = element % 3
    x, weight, y = (t.to(dtype) for t in (x, weight, y))
    assert_close(ops.element_linear(x, element, weight, 0.01), reference.element_linear(
        x.double(), element, weight.double(), 0.01), dtype, "forward")
    assert_close(ops.element_outer(x, y, element, 89, 0.01), reference.element_outer(
        x.double(), y.double(), element, 89, 0.01), dtype, "weight gradient")


def test_weight_gradient_is_bitwise_reproducible():
    x, element, weight, y = _inputs((3000, 48, 40, 6, 3), 3)
    x, y = x.float(), y.float()
    first = ops.element_outer(x, y, element, 6, 1.0)
    for _ in range(3):
        assert torch.equal(ops.element_outer(x, y, element, 6, 1.0), first)


def test_gradcheck_and_gradgradcheck():
    assert_gradchecks(*_inputs((9, 5, 4, 3, 3), 4))


def test_bad_element_index():
    x, element, weight, _ = _inputs((20, 4, 4, 3, 3), 5)
    element[7] = 3
    with pytest.raises(ValueError, match=r"element holds indices in \[0, 3\] but there are 3 elements"):
        ops.element_linear(x, element, weight, 1.0)
