"""``torch.ops.batmobile.conv`` against MACE's computation (e3nn tensor product + ``index_add``):
values, first and second derivatives, index dtypes, isolated nodes, empty graphs, the deterministic
mode and ``sender_perm``."""

import pytest
import torch
from problems import GAPS_PROBLEM, MACE_PROBLEMS, RANDOM_PROBLEMS, scaled

from batmobile_nn.ops import conv

from ._compare import compare_with_e3nn, derivatives, randn
from ._graphs import e3nn_conv, random_graph, sort_by_receiver

N_NODES, N_EDGES, ISOLATED = 5, 12, 3


def _raw(problem, n_nodes, n_edges, shared_weights=False, seed=0):
    weight_numel = problem.plan().weight_numel
    weight_shape = (weight_numel,) if shared_weights else (n_edges, weight_numel)
    return randn([(n_nodes, problem.irreps_in1.dim), (n_edges, problem.irreps_in2.dim), weight_shape],
                 torch.float64, seed)


def _ours(problem, sender, receiver, sender_perm=None, deterministic=False):
    plan = problem.plan()

    def run(node_feats, edge_attrs, weight):
        return conv(node_feats, edge_attrs, weight, sender, receiver, sender_perm, plan.plan_list, plan.cg_list,
                    deterministic)
    return run


def _compare(problem, dtype, sender, receiver, n_nodes, shared_weights=False, what=""):
    raw = _raw(problem, n_nodes, sender.shape[0], shared_weights)
    e3nn = e3nn_conv(problem.e3nn(dtype, shared_weights), sender, receiver, n_nodes)
    e3nn64 = e3nn_conv(problem.e3nn(torch.float64, shared_weights), sender, receiver, n_nodes)
    return compare_with_e3nn(_ours(problem, sender, receiver), e3nn, e3nn64, raw, dtype, f"{problem} {what}")


@pytest.mark.parametrize("problem", MACE_PROBLEMS + [RANDOM_PROBLEMS[5], GAPS_PROBLEM], ids=str)
def test_matches_mace_computation(problem, default_dtype):
    sender, receiver = random_graph(N_NODES, N_EDGES, seed=1, isolated=ISOLATED)
    result = _compare(problem, default_dtype, sender, receiver, N_NODES)
    # the isolated node receives nothing and its features get no gradient
    assert not result["value"][ISOLATED].any()
    assert not result["grad0"][ISOLATED].any() and not result["grad2_0"][ISOLATED].any()


@pytest.mark.parametrize("problem", RANDOM_PROBLEMS[1:4:2], ids=str)
def test_shared_weights(problem, default_dtype):
    sender, receiver = random_graph(N_NODES, N_EDGES, seed=2)
    _compare(problem, default_dtype, sender, receiver, N_NODES, shared_weights=True, what="shared weights")


def test_int32_indices(default_dtype):
    problem = scaled(MACE_PROBLEMS[2], 4)
    sender, receiver = random_graph(N_NODES, N_EDGES, seed=3, dtype=torch.int32)
    _compare(problem, default_dtype, sender, receiver, N_NODES, what="int32")


def test_int32_and_int64_agree_exactly(dtype):
    problem = scaled(MACE_PROBLEMS[1], 4)
    raw = [x.to(dtype) for x in _raw(problem, N_NODES, N_EDGES)]
    results = [derivatives(_ours(problem, *random_graph(N_NODES, N_EDGES, seed=3, dtype=index_dtype)), raw)
               for index_dtype in (torch.int32, torch.int64)]
    for key in results[0]:
        assert torch.equal(results[0][key], results[1][key]), key


@pytest.mark.parametrize("shared_weights", [False, True])
def test_empty_graph(shared_weights, default_dtype):
    problem = scaled(MACE_PROBLEMS[1], 4)
    sender, receiver = random_graph(N_NODES, 0, seed=0)
    result = _compare(problem, default_dtype, sender, receiver, N_NODES, shared_weights, "empty graph")
    assert result["value"].shape == (N_NODES, problem.irreps_out.dim)
    for key, value in result.items():
        assert not value.any(), key


def test_deterministic_equals_atomic_mode(dtype):
    problem = scaled(MACE_PROBLEMS[2], 4)
    sender, receiver, _ = sort_by_receiver(*random_graph(N_NODES, 3 * N_EDGES, seed=4))
    raw = [x.to(dtype) for x in _raw(problem, N_NODES, 3 * N_EDGES)]
    atomic = derivatives(_ours(problem, sender, receiver), raw)
    deterministic = derivatives(_ours(problem, sender, receiver, deterministic=True), raw)
    for key in atomic:
        torch.testing.assert_close(deterministic[key], atomic[key], rtol=0, atol=0, msg=key)


@pytest.mark.parametrize("deterministic", [False, True])
def test_sender_perm_given_or_not(deterministic, dtype):
    problem = scaled(MACE_PROBLEMS[1], 4)
    sender, receiver, _ = sort_by_receiver(*random_graph(N_NODES, 2 * N_EDGES, seed=5))
    sender_perm = torch.argsort(sender, stable=True)
    raw = [x.to(dtype) for x in _raw(problem, N_NODES, 2 * N_EDGES)]
    without = derivatives(_ours(problem, sender, receiver, None, deterministic), raw)
    given = derivatives(_ours(problem, sender, receiver, sender_perm, deterministic), raw)
    for key in without:
        torch.testing.assert_close(given[key], without[key], rtol=0, atol=0, msg=key)


def test_edge_order_does_not_matter(dtype):
    """Permuting the edges (with their attributes and weights) changes nothing but rounding."""
    problem = scaled(MACE_PROBLEMS[1], 4)
    sender, receiver = random_graph(N_NODES, 2 * N_EDGES, seed=6)
    node_feats, edge_attrs, weight = [x.to(dtype) for x in _raw(problem, N_NODES, 2 * N_EDGES)]
    sorted_sender, sorted_receiver, order = sort_by_receiver(sender, receiver)
    out = _ours(problem, sender, receiver)(node_feats, edge_attrs, weight)
    out_sorted = _ours(problem, sorted_sender, sorted_receiver, deterministic=True)(
        node_feats, edge_attrs[order], weight[order])
    tolerance = {torch.float32: 1e-5, torch.float64: 1e-12}[dtype]
    torch.testing.assert_close(out_sorted, out, rtol=tolerance, atol=tolerance * float(out.abs().max()))


def _second_derivatives(fn, inputs, grad_out_needs_grad, create_graph, seed=8):
    """Gradients of a projection of the backward w.r.t. the inputs (and grad_out) with the double backward
    run as one op (create_graph=False) or composed of differentiable calls (create_graph=True). ``inputs``
    that require gradients are used as they are (the leaves of a further derivative), others are copied."""
    inputs = [x if x.requires_grad else x.detach().clone().requires_grad_(True) for x in inputs]
    out = fn(*inputs)
    grad_out, *projections = randn([out.shape] + [x.shape for x in inputs], out.dtype, seed)
    grad_out.requires_grad_(grad_out_needs_grad)
    grads = torch.autograd.grad(out, inputs, grad_out, create_graph=True)
    projection = sum((g * p).sum() for g, p in zip(grads, projections))
    wrt = inputs + ([grad_out] if grad_out_needs_grad else [])
    return torch.autograd.grad(projection, wrt, create_graph=create_graph)


@pytest.mark.parametrize("shared_weights", [False, True])
def test_double_backward_op_equals_the_composed_double_backward(shared_weights, dtype, monkeypatch):
    """The double backward runs as the one op conv_double_backward unless a graph of it is built."""
    import batmobile_nn.reference as reference

    calls = []
    op = reference.conv_double_backward
    monkeypatch.setattr(reference, "conv_double_backward", lambda *args: calls.append(1) or op(*args))
    problem = scaled(MACE_PROBLEMS[1], 3) if not shared_weights else RANDOM_PROBLEMS[1]
    sender, receiver = random_graph(N_NODES, N_EDGES, seed=7, isolated=ISOLATED)
    raw = [x.to(dtype) for x in _raw(problem, N_NODES, N_EDGES, shared_weights)]
    fused = _second_derivatives(_ours(problem, sender, receiver), raw, True, create_graph=False)
    assert len(calls) == 1
    composed = _second_derivatives(_ours(problem, sender, receiver), raw, True, create_graph=True)
    assert len(calls) == 1
    for a, b in zip(fused, composed):
        torch.testing.assert_close(a, b.detach(), rtol=0, atol=0)


@pytest.mark.parametrize("problem", [scaled(MACE_PROBLEMS[1], 3), GAPS_PROBLEM], ids=str)
def test_composed_double_backward_adds_the_second_weight_gradient_into_the_first(problem):
    """With ``backward_into`` (the uvu kernels' route above ``MAX_FUSED_DBL_OUT``) the composed double backward
    asks one backward for the weights' gradient and adds the other term into that buffer: the same gradients,
    without a second ``[n_edges, weight_numel]`` buffer."""
    from batmobile_nn import reference
    from batmobile_nn.ops import _trilinear

    plan = problem.plan()
    sender, receiver = random_graph(N_NODES, N_EDGES, seed=11, isolated=ISOLATED)
    x, y, w = _raw(problem, N_NODES, N_EDGES)
    grad_out, ga, gb, gc = randn([(N_NODES, problem.irreps_out.dim), x.shape, y.shape, w.shape], torch.float64, 4)
    weight_asked, added_into = [], []

    def forward(a, b, c, p):
        return reference.conv(a, b, c, sender, receiver, p, plan.cg_list)

    def backward(g, a, b, c, p, needs):
        weight_asked.append(needs[2])
        return reference.conv_backward(g, a, b, c, sender, receiver, p, plan.cg_list, needs)

    def backward_into(dest, g, a, b, c, needs):
        added_into.append(dest)
        d_a, d_b, d_c = reference.conv_backward(g, a, b, c, sender, receiver, plan.plan_list, plan.cg_list, needs)
        dest.add_(d_c)
        return d_a if needs[0] else None, d_b if needs[1] else None

    args = (plan.plan_list, grad_out, x, y, w, [ga, gb, gc], [True] * 4)
    plain = _trilinear.planned_double_backward(forward, backward, *args)
    assert weight_asked.count(True) == 2
    weight_asked.clear()
    added = _trilinear.planned_double_backward(forward, backward, *args, backward_into=backward_into)
    assert weight_asked.count(True) == 1 and len(added_into) == 1 and added_into[0] is added[3]
    for name, a, b in zip(("grad_out", "node_feats", "edge_attrs", "weight"), plain, added):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=name)


def test_third_derivatives_match_e3nn():
    """A double backward that builds a graph stays differentiable: third derivatives as e3nn's."""
    problem = scaled(MACE_PROBLEMS[1], 3)
    sender, receiver = random_graph(N_NODES, N_EDGES, seed=9)
    raw = _raw(problem, N_NODES, N_EDGES)
    results = []
    for fn in (_ours(problem, sender, receiver),
               e3nn_conv(problem.e3nn(torch.float64), sender, receiver, N_NODES)):
        inputs = [x.detach().clone().requires_grad_(True) for x in raw]
        second = _second_derivatives(fn, inputs, False, create_graph=True)
        third = torch.autograd.grad(sum(g.square().sum() for g in second), inputs)
        results.append(third)
    for ours, theirs in zip(*results):
        assert theirs.abs().max() > 0
        torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-10 * float(theirs.abs().max()))


def test_double_backward_op_checks_its_inputs():
    from batmobile_nn.ops.conv import conv_double_backward

    plan = scaled(MACE_PROBLEMS[1], 2).plan()
    sender, receiver = random_graph(N_NODES, N_EDGES, seed=0)
    x, y, w = _raw(scaled(MACE_PROBLEMS[1], 2), N_NODES, N_EDGES)
    grad_out = torch.randn(N_NODES, plan.irreps_out.dim, dtype=torch.float64)
    empty = x.new_empty(0)
    args = (grad_out, x, y, w, sender, receiver, None, plan.plan_list, plan.cg_list, False)
    with pytest.raises(ValueError, match="grad_grad_edge must be empty or of shape"):
        conv_double_backward(empty, y[:, :3], empty, *args, [True] * 4)
    with pytest.raises(ValueError, match="4 booleans"):
        conv_double_backward(x, empty, empty, *args, [True] * 3)
    with pytest.raises(ValueError, match="dtype"):
        conv_double_backward(x.float(), empty, empty, *args, [True] * 4)
    grads = conv_double_backward(empty, empty, empty, *args, [True, False, True, True])
    assert [g.shape for g in grads] == [grad_out.shape, (0,), y.shape, w.shape] and not any(g.any() for g in grads)


@pytest.mark.parametrize("wrt", [(0,), (1,), (2,), (0, 2)], ids=str)
def test_double_backward_with_some_cotangents(wrt, dtype):
    """Only some inputs differentiated twice: the op computes the gradients a cotangent reaches, the rest is zero."""
    problem = scaled(MACE_PROBLEMS[1], 3)
    sender, receiver = random_graph(N_NODES, N_EDGES, seed=12)
    raw = [x.to(dtype) for x in _raw(problem, N_NODES, N_EDGES)]
    results = []
    for create_graph in (False, True):
        inputs = [x.detach().clone().requires_grad_(i in wrt) for i, x in enumerate(raw)]
        out = _ours(problem, sender, receiver)(*inputs)
        grad_out, *projections = randn([out.shape] + [x.shape for x in inputs], dtype, 13)
        leaves = [inputs[i] for i in wrt]
        grads = torch.autograd.grad(out, leaves, grad_out, create_graph=True)
        projection = sum((g * projections[i]).sum() for g, i in zip(grads, wrt))
        second = torch.autograd.grad(projection, leaves, create_graph=create_graph, allow_unused=True)
        results.append([torch.zeros_like(x) if g is None else g.detach() for g, x in zip(second, leaves)])
    for fused, composed in zip(*results):
        torch.testing.assert_close(fused, composed, rtol=0, atol=0)
