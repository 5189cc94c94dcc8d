"""``linear`` / ``linear_outer`` (one irrep block of e3nn's ``o3.Linear``) against an einsum oracle: values,
first and second derivatives in float32 and float64, gradcheck and gradgradcheck, opcheck, the eager fast
path against the op, no nodes, non-contiguous blocks, and bad inputs."""

import pytest
import torch

from batmobile_nn import ops
from ops._compare import compare_with_e3nn, randn

SHAPES = [(7, 4, 6, 1), (9, 5, 3, 3), (6, 3, 3, 7)]  # (n, mul_in, mul_out, d)


def oracle_linear(x, weight, alpha):
    return alpha * torch.einsum("num,uw->nwm", x, weight)  # [n, mul_out, d]


def oracle_outer(x, y, alpha):
    return alpha * torch.einsum("num,nwm->uw", x, y)  # [mul_in, mul_out]


def _inputs(shape, seed):
    n, mul_in, mul_out, d = shape
    return randn([(n, mul_in, d), (mul_in, mul_out), (n, mul_out, d)], torch.float64, seed)  # x, weight, y


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_linear_matches_oracle(shape, dtype):
    x, weight, _ = _inputs(shape, 0)
    compare_with_e3nn(lambda x, w: ops.linear(x, w, 0.7), lambda x, w: oracle_linear(x, w, 0.7),
                      lambda x, w: oracle_linear(x, w, 0.7), [x, weight], dtype, "linear")


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_outer_matches_oracle(shape, dtype):
    x, _, y = _inputs(shape, 1)
    compare_with_e3nn(lambda x, y: ops.linear_outer(x, y, 0.3), lambda x, y: oracle_outer(x, y, 0.3),
                      lambda x, y: oracle_outer(x, y, 0.3), [x, y], dtype, "linear_outer")


def assert_gradchecks(x, weight, y):
    """gradcheck and gradgradcheck of both ops (float64 inputs; the GPU tests run it too)."""
    x, weight, y = (t.detach().requires_grad_() for t in (x, weight, y))
    assert torch.autograd.gradcheck(lambda x, w: ops.linear(x, w, 1.3), (x, weight))
    assert torch.autograd.gradgradcheck(lambda x, w: ops.linear(x, w, 1.3), (x, weight))
    assert torch.autograd.gradcheck(lambda x, y: ops.linear_outer(x, y, 0.9), (x, y))
    assert torch.autograd.gradgradcheck(lambda x, y: ops.linear_outer(x, y, 0.9), (x, y))


def test_gradcheck_and_gradgradcheck():
    assert_gradchecks(*_inputs((5, 3, 2, 3), 2))


def test_opcheck_and_the_fast_path_chain(dtype):
    x, weight, y = (t.to(dtype).requires_grad_() for t in _inputs((6, 3, 4, 3), 3))
    utils = ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")
    torch.library.opcheck(ops.linear.op, (x, weight, 0.5), test_utils=utils)
    torch.library.opcheck(ops.linear_outer.op, (x, y, 0.5), test_utils=utils)
    outs = [fn(x, weight, 0.5) for fn in (ops.linear, ops.linear.op)]  # eager Function, registered op
    firsts = [torch.autograd.grad(out.square().sum(), [x, weight], create_graph=True) for out in outs]
    seconds = [torch.autograd.grad(sum(g.square().sum() for g in first), [x, weight]) for first in firsts]
    for a, b in zip(firsts[0] + seconds[0], firsts[1] + seconds[1]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_no_nodes_and_strided_blocks():
    x, weight, y = _inputs((0, 3, 5, 3), 4)
    assert ops.linear(x, weight, 1.0).shape == (0, 5, 3)
    assert torch.equal(ops.linear_outer(x, y, 1.0), torch.zeros(3, 5, dtype=torch.float64))
    # a block of a wider feature row, as o3.Linear passes it: a view, not a copy
    features = torch.randn(6, 40, dtype=torch.float64)
    block = features[:, 4:13].view(6, 3, 3)
    weight = torch.randn(3, 2, dtype=torch.float64)
    torch.testing.assert_close(ops.linear(block, weight, 1.5), oracle_linear(block, weight, 1.5))
    torch.testing.assert_close(ops.linear_outer(block, block, 0.5), oracle_outer(block, block, 0.5))


@pytest.mark.parametrize("change, match", [
    (dict(weight=torch.zeros(2, 5, dtype=torch.float64)), r"weight must have shape \[mul_in=3, mul_out\]"),
    (dict(weight=torch.zeros(3, 5)), "all inputs need one dtype"),
    (dict(weight=torch.zeros(1, 3, 5, dtype=torch.float64)), "weight must have 2 dimensions"),
    (dict(x=torch.zeros(6, 9, dtype=torch.float64)), "x must have 3 dimensions"),
    (dict(x=torch.zeros(6, 3, 3, dtype=torch.int64)), "x must be float32 or float64"),
])
def test_bad_inputs(change, match):
    x, weight, _ = _inputs((6, 3, 5, 3), 5)
    args = dict(x=x, weight=weight)
    args.update(change)
    with pytest.raises(ValueError, match=match):
        ops.linear(args["x"], args["weight"], 1.0)


def test_outer_bad_inputs():
    x, _, y = _inputs((6, 3, 5, 3), 6)
    with pytest.raises(ValueError, match=r"y must have shape \[n=6, mul_out, d=3\]"):
        ops.linear_outer(x, y[:, :, :2], 1.0)


def test_reference_is_differentiable_and_ignores_autocast():
    from batmobile_nn import reference

    x, weight, _ = (t.requires_grad_() for t in _inputs((5, 3, 4, 3), 7))
    assert torch.autograd.gradcheck(lambda x, w: reference.linear(x, w, 0.7), (x, weight))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the op computes in its inputs' dtype, as its fake says
        out = ops.linear(x.float(), weight.float(), 0.7)
        outer = ops.linear_outer(x.float(), x.float(), 0.7)
    assert out.dtype == outer.dtype == torch.float32
    torch.testing.assert_close(out, oracle_linear(x, weight, 0.7).float().detach())
