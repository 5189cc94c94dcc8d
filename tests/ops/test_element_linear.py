"""``element_linear`` / ``element_outer`` (the per-element linear of MACE's skip connection) against an einsum
oracle with a per-node weight: values, first and second derivatives in float32 and float64, gradcheck and
gradgradcheck, opcheck, no nodes, an element absent from the batch, and bad inputs."""

import pytest
import torch

from batmobile_nn import ops, reference
from ops._compare import assert_close, compare_with_e3nn, randn

SHAPES = [(7, 4, 6, 3, 1), (9, 5, 3, 4, 3), (6, 3, 3, 2, 7)]  # (n, mul_in, mul_out, n_elements, d)


def oracle_linear(x, element, weight, alpha):
    return alpha * torch.einsum("num,nuw->nwm", x, weight[element])  # [n, mul_out, d]


def oracle_outer(x, y, element, n_elements, alpha):
    one_hot = torch.nn.functional.one_hot(element.long(), n_elements).to(x.dtype)  # [n, E]
    return alpha * torch.einsum("ne,num,nwm->euw", one_hot, x, y)


def _inputs(shape, seed):
    """``(x, element, weight, y)`` in float64 on the CPU; ``element`` leaves the last element out."""
    n, mul_in, mul_out, n_elements, d = shape
    x, weight, y = randn([(n, mul_in, d), (n_elements, mul_in, mul_out), (n, mul_out, d)], torch.float64, seed)
    element = torch.randint(0, n_elements - 1, (n,), generator=torch.Generator().manual_seed(seed))  # last absent
    return x, element, weight, y


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_linear_matches_oracle(shape, dtype):
    x, element, weight, _ = _inputs(shape, 0)
    compare_with_e3nn(lambda x, w: ops.element_linear(x, element, w, 0.7),
                      lambda x, w: oracle_linear(x, element, w, 0.7),
                      lambda x, w: oracle_linear(x, element, w, 0.7), [x, weight], dtype, "element_linear")


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_outer_matches_oracle(shape, dtype):
    x, element, weight, y = _inputs(shape, 1)
    E = weight.shape[0]
    compare_with_e3nn(lambda x, y: ops.element_outer(x, y, element, E, 0.3),
                      lambda x, y: oracle_outer(x, y, element, E, 0.3),
                      lambda x, y: oracle_outer(x, y, element, E, 0.3), [x, y], dtype, "element_outer")


def test_gradcheck_and_gradgradcheck():
    assert_gradchecks(*_inputs((5, 3, 2, 3, 3), 2))


def assert_gradchecks(x, element, weight, y):
    """gradcheck and gradgradcheck of both ops (float64 inputs; the GPU tests run it too)."""
    x, weight, y = (t.detach().requires_grad_() for t in (x, weight, y))
    linear = lambda x, w: ops.element_linear(x, element, w, 1.3)  # noqa: E731
    outer = lambda x, y: ops.element_outer(x, y, element, 3, 0.9)  # noqa: E731
    assert torch.autograd.gradcheck(linear, (x, weight))
    assert torch.autograd.gradgradcheck(linear, (x, weight))
    assert torch.autograd.gradcheck(outer, (x, y))
    assert torch.autograd.gradgradcheck(outer, (x, y))


def test_opcheck(dtype):
    x, element, weight, y = _inputs((6, 3, 4, 3, 3), 3)
    x, weight, y = (t.to(dtype).requires_grad_() for t in (x, weight, y))
    utils = ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")
    torch.library.opcheck(ops.element_linear.op, (x, element, weight, 0.5), test_utils=utils)
    torch.library.opcheck(ops.element_outer.op, (x, y, element, 3, 0.5), test_utils=utils)


def test_reference_matches_the_oracle_with_one_and_many_elements():
    for element_count in (1, 4):  # one element present takes the reference's no-gather branch
        x, element, weight, y = _inputs((8, 3, 5, 5, 3), 4)
        element = element % element_count
        assert_close(reference.element_linear(x, element, weight, 2.0), oracle_linear(x, element, weight, 2.0),
                     torch.float64, "linear")
        assert_close(reference.element_outer(x, y, element, 5, 2.0), oracle_outer(x, y, element, 5, 2.0),
                     torch.float64, "outer")


def test_no_nodes_and_int32_elements():
    x, element, weight, y = _inputs((0, 3, 5, 4, 3), 5)
    assert ops.element_linear(x, element, weight, 1.0).shape == (0, 5, 3)
    assert torch.equal(ops.element_outer(x, y, element, 4, 1.0), torch.zeros(4, 3, 5, dtype=torch.float64))
    x, element, weight, y = _inputs((6, 3, 5, 4, 3), 6)
    assert torch.equal(ops.element_linear(x, element.int(), weight, 1.0), ops.element_linear(x, element, weight, 1.0))


@pytest.mark.parametrize("change, match", [
    (dict(element=torch.tensor([0, 1, 4, 0, 1, 2])), r"element holds indices in \[0, 4\] but there are 4 elements"),
    (dict(element=torch.tensor([0, -1, 0, 0, 1, 2])), r"element holds indices in \[-1, 2\]"),
    (dict(element=torch.zeros(5, dtype=torch.long)), r"element must have shape \[n_nodes=6\]"),
    (dict(element=torch.zeros(6)), "element must be int32 or int64"),
    (dict(weight=torch.zeros(4, 2, 5, dtype=torch.float64)), r"weight must have shape \[n_elements, mul_in=3"),
    (dict(weight=torch.zeros(4, 3, 5)), "all inputs need one dtype"),
    (dict(x=torch.zeros(6, 9, dtype=torch.float64)), "x must have 3 dimensions"),
])
def test_bad_inputs(change, match):
    x, element, weight, _ = _inputs((6, 3, 5, 4, 3), 7)
    args = dict(x=x, element=element, weight=weight, **{})
    args.update(change)
    with pytest.raises(ValueError, match=match):
        ops.element_linear(args["x"], args["element"], args["weight"], 1.0)


def test_outer_bad_inputs():
    x, element, weight, y = _inputs((6, 3, 5, 4, 3), 8)
    with pytest.raises(ValueError, match=r"y must have shape \[n_nodes=6, mul_out, d=3\]"):
        ops.element_outer(x, y[:, :, :2], element, 4, 1.0)
    with pytest.raises(ValueError, match=r"element holds indices in \[0, 2\] but there are 2 elements"):
        ops.element_outer(x, y, torch.tensor([0, 1, 2, 0, 1, 1]), 2, 1.0)
