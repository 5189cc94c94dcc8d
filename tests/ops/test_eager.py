"""The ops' eager fast path (``batmobile_nn/ops/_eager.py``): eager calls take an autograd.Function with the
op's chain; fake tensors, meta tensors, fx, torch.jit.trace and TorchScript take the registered op; keyword
arguments bind; an op without a derivative says so."""

from typing import List

import pytest
import torch
from problems import MACE_PROBLEMS, scaled
from torch._subclasses.fake_tensor import FakeTensorMode

from batmobile_nn.ops import _eager, conv, conv_double_backward, element_linear

from ._compare import randn
from ._graphs import random_graph


def _conv_inputs():
    plan = scaled(MACE_PROBLEMS[1], 2).plan()
    sender, receiver = random_graph(4, 9, seed=1)
    x, y, w = randn([(4, plan.irreps_in1.dim), (9, plan.irreps_in2.dim), (9, plan.weight_numel)], torch.float64, 2)
    return plan, x.requires_grad_(), y, w, sender, receiver


def test_eager_calls_take_the_function_and_match_the_op():
    plan, x, y, w, sender, receiver = _conv_inputs()
    args = (x, y, w, sender, receiver, None, plan.plan_list, plan.cg_list, False)
    fast, op = conv(*args), conv.op(*args)
    assert "_conv_function" in type(fast.grad_fn).__name__ and "_conv_function" not in type(op.grad_fn).__name__
    torch.testing.assert_close(fast, op, rtol=0, atol=0)
    grads = [torch.autograd.grad(out.square().sum(), x)[0] for out in (fast, op)]
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=0)


def test_calls_autograd_would_not_record_run_bare():
    """No input requiring grad, or grad mode off: the implementation alone (no Function), same values; an
    input requiring grad in a list counts; a forward-mode AD level takes the Function, which refuses dual
    tensors (it has no jvp) rather than dropping their tangents."""
    plan, x, y, w, sender, receiver = _conv_inputs()
    args = [x.detach(), y, w, sender, receiver, None, plan.plan_list, plan.cg_list, False]
    bare = conv(*args)
    with torch.no_grad():
        bare_no_grad = conv(x, *args[1:])
    recorded = conv(x, *args[1:])
    assert bare.grad_fn is None and bare_no_grad.grad_fn is None and recorded.grad_fn is not None
    torch.testing.assert_close(bare, recorded.detach(), rtol=0, atol=0)
    torch.testing.assert_close(bare_no_grad, bare, rtol=0, atol=0)
    assert _eager.route([[x.detach(), x]]) == _eager.FUNCTION and _eager.route([[x.detach()], 3]) == _eager.BARE
    import torch.autograd.forward_ad as forward_ad
    with forward_ad.dual_level():
        dual = forward_ad.make_dual(x.detach(), torch.ones_like(x))
        with pytest.raises(NotImplementedError, match="jvp"):
            conv(dual, *args[1:])


def test_keyword_arguments_bind():
    plan, x, y, w, sender, receiver = _conv_inputs()
    out = conv(x, y, w, sender, receiver, sender_perm=None, plan=plan.plan_list, cg=plan.cg_list, deterministic=False)
    torch.testing.assert_close(out, conv(x, y, w, sender, receiver, None, plan.plan_list, plan.cg_list, False))


def test_tracing_takes_the_registered_op():
    plan, x, y, w, sender, receiver = _conv_inputs()
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        fake = [mode.from_tensor(t) for t in (x, y, w, sender, receiver)]
        out = conv(*fake[:3], *fake[3:], None, plan.plan_list, plan.cg_list, False)
    assert out.shape == (4, plan.irreps_out.dim) and type(out).__name__ == "FakeTensor"


def test_per_element_linear_chain():
    x, weight = randn([(5, 3, 2), (4, 3, 6)], torch.float64, 3)
    element = torch.tensor([0, 3, 3, 1, 0])
    x.requires_grad_()
    weight.requires_grad_()
    outs = [fn(x, element, weight, 0.5) for fn in (element_linear, element_linear.op)]
    firsts = [torch.autograd.grad(out.square().sum(), [x, weight], create_graph=True) for out in outs]
    seconds = [torch.autograd.grad(sum(g.square().sum() for g in first), [x, weight]) for first in firsts]
    for a, b in zip(firsts[0] + seconds[0], firsts[1] + seconds[1]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_an_op_without_a_derivative_says_so():
    plan, x, y, w, sender, receiver = _conv_inputs()
    grad_out = torch.randn(4, plan.irreps_out.dim, dtype=torch.float64, requires_grad=True)
    empty = x.new_empty(0)
    grads = conv_double_backward(x.detach(), empty, empty, grad_out, x, y, w, sender, receiver, None, plan.plan_list,
                                 plan.cg_list, False, [True, True, False, True])
    with pytest.raises(RuntimeError, match="conv_double_backward has no derivative"):
        torch.autograd.grad(grads[0].sum(), grad_out)


class _ConvModule(torch.nn.Module):
    def __init__(self, plan):
        super().__init__()
        self.plan, self.cg = plan.plan_list, plan.cg_list

    def forward(self, x, y, w, sender, receiver):
        return conv(x, y, w, sender, receiver, None, self.plan, self.cg, False)


def test_torchscript_trace_records_the_op_and_saves(tmp_path):
    plan, x, y, w, sender, receiver = _conv_inputs()
    traced = torch.jit.trace(_ConvModule(plan), (x.detach(), y, w, sender, receiver))
    assert "batmobile::conv" in str(traced.graph)
    torch.jit.save(traced, str(tmp_path / "conv.pt"))
    loaded = torch.jit.load(str(tmp_path / "conv.pt"))
    torch.testing.assert_close(loaded(x.detach(), y, w, sender, receiver), _ConvModule(plan)(x.detach(), y, w, sender,
                                                                                          receiver))


def _scripted_conv(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, sender: torch.Tensor, receiver: torch.Tensor,
                   plan: List[int], cg: List[float]) -> torch.Tensor:
    return conv(x, y, w, sender, receiver, None, plan, cg, False)


def test_torchscript_script_compiles_the_function_as_the_op():
    plan, x, y, w, sender, receiver = _conv_inputs()
    scripted = torch.jit.script(_scripted_conv)
    assert "batmobile::conv" in str(scripted.graph)
    torch.testing.assert_close(scripted(x, y, w, sender, receiver, plan.plan_list, plan.cg_list),
                               _scripted_conv(x, y, w, sender, receiver, plan.plan_list, plan.cg_list))


def test_meta_tensors_and_fx_take_the_op():
    plan, x, y, w, sender, receiver = _conv_inputs()
    meta = [t.detach().to("meta") for t in (x, y, w, sender, receiver)]
    assert conv(*meta, None, plan.plan_list, plan.cg_list, False).shape == (4, plan.irreps_out.dim)
    graph = torch.fx.symbolic_trace(_ConvModule(plan)).graph
    assert any("batmobile" in str(node.target) for node in graph.nodes if node.op == "call_function")


def test_backward_skips_gradients_the_pass_does_not_use(monkeypatch):
    """``autograd.grad(out, x)`` (forces) does not use the weight's gradient: the eager backward does not compute
    it (autograd's own formulas skip it too); ``backward()`` and a second-order pass still get every gradient."""
    import batmobile_nn.reference as reference

    calls = []
    outer = reference.element_outer
    monkeypatch.setattr(reference, "element_outer", lambda *a: calls.append(1) or outer(*a))
    x, weight = randn([(5, 3, 2), (4, 3, 6)], torch.float64, 4)
    element = torch.tensor([0, 3, 3, 1, 0])
    x.requires_grad_()
    weight.requires_grad_()
    # as the modules pass it: a view of the parameter (for a requested leaf the engine cannot answer: kept)
    out = element_linear(x, element, weight.view_as(weight), 0.5)
    (grad_x,) = torch.autograd.grad(out.square().sum(), x, create_graph=True)
    assert calls == []  # the weight gradient was not computed
    (expected,) = torch.autograd.grad(element_linear.op(x, element, weight, 0.5).square().sum(), x, create_graph=True)
    torch.testing.assert_close(grad_x, expected, rtol=0, atol=0)
    # the weight's gradient of a loss on the first derivative flows through the backward's graph
    (got,) = torch.autograd.grad(grad_x.square().sum(), weight)
    (want,) = torch.autograd.grad(expected.square().sum(), weight)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    calls.clear()
    element_linear(x, element, weight, 0.5).square().sum().backward()
    assert calls and weight.grad is not None


def test_compiled_autograd_through_chained_ops():
    """Under compiled autograd the backward is traced: a backward whose input comes from another of our ops'
    backward keeps ``needs_input_grad`` (dynamo cannot trace the engine query) and the gradients are exact."""
    from torch._dynamo import compiled_autograd

    torch._dynamo.reset()
    x, w, v = randn([(5, 3, 2), (4, 3, 3), (4, 3, 6)], torch.float64, 5)
    element = torch.tensor([0, 3, 3, 1, 0])
    leaves = [t.requires_grad_() for t in (x, w, v)]
    twins = [t.detach().clone().requires_grad_() for t in leaves]
    element_linear.op(element_linear.op(twins[0], element, twins[1], 0.5), element, twins[2], 0.3).square().sum().backward()
    with compiled_autograd._enable(torch.compile(backend="eager")):
        element_linear(element_linear(x, element, w, 0.5), element, v, 0.3).square().sum().backward()
    for leaf, twin in zip(leaves, twins):
        torch.testing.assert_close(leaf.grad, twin.grad, rtol=0, atol=0)
    torch._dynamo.reset()


def test_vmap_takes_the_registered_op():
    x, weight = randn([(4, 5, 3, 3), (3, 2)], torch.float64, 6)
    element = torch.tensor([0, 1, 1, 0, 1])
    out = torch.func.vmap(lambda xi: element_linear(xi, element, weight.expand(2, 3, 2), 0.5))(x)
    torch.testing.assert_close(out, torch.stack([element_linear(xi, element, weight.expand(2, 3, 2), 0.5) for xi in x]),
                               rtol=0, atol=0)
