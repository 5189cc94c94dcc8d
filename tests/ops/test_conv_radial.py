"""``torch.ops.batmobile.conv_radial`` (the convolution with the radial MLP's last layer taken in) against the
convolution of the layer's output: values, first and second derivatives of every input, both modes, opcheck,
what it keeps for the backward, and bad inputs."""

import pytest
import torch
from problems import GAPS_PROBLEM, MACE_PROBLEMS, scaled

from batmobile_nn.ops import conv, conv_radial

from ._compare import randn
from ._graphs import random_graph, sort_by_receiver

N_NODES, N_EDGES, HIDDEN, ALPHA = 5, 12, 6, 0.37
PROBLEM = scaled(MACE_PROBLEMS[2], 3)


def _inputs(problem, dtype, seed=0):
    numel = problem.plan().weight_numel
    return [t.requires_grad_() for t in randn([(N_NODES, problem.irreps_in1.dim), (N_EDGES, problem.irreps_in2.dim),
                                                (N_EDGES, HIDDEN), (HIDDEN, numel)], dtype, seed)]


def _both(problem, sender, receiver, deterministic=False, sender_perm=None):
    plan = problem.plan()
    args = (sender, receiver, sender_perm, plan.plan_list, plan.cg_list, deterministic)

    def ours(node_feats, edge_attrs, hidden, radial_weight):
        return conv_radial(node_feats, edge_attrs, hidden, radial_weight, ALPHA, *args)

    def separate(node_feats, edge_attrs, hidden, radial_weight):  # the radial layer, then the convolution
        return conv(node_feats, edge_attrs, ALPHA * hidden @ radial_weight, *args)
    return ours, separate


def _derivatives(fn, inputs, seed=7):
    """Value, gradient of every input, and the gradient of a projection of the first gradients (second
    derivatives, as a force loss makes)."""
    out = fn(*inputs)
    generator = torch.Generator().manual_seed(seed)
    cotangent = torch.randn(out.shape, generator=generator, dtype=out.dtype)
    grads = torch.autograd.grad(out, inputs, cotangent, create_graph=True)
    projections = [torch.randn(g.shape, generator=generator, dtype=g.dtype) for g in grads]
    second = torch.autograd.grad(sum((g * p).sum() for g, p in zip(grads, projections)), inputs)
    return [out.detach()] + [g.detach() for g in grads] + list(second)


@pytest.mark.parametrize("problem", [PROBLEM, GAPS_PROBLEM], ids=str)
@pytest.mark.parametrize("deterministic", [False, True], ids=["atomic", "deterministic"])
def test_matches_the_separate_layers(problem, deterministic, dtype):
    sender, receiver = random_graph(N_NODES, N_EDGES, seed=1, isolated=2)
    sender_perm = None
    if deterministic:
        sender, receiver, _ = sort_by_receiver(sender, receiver)
        sender_perm = torch.argsort(sender, stable=True)
    ours, separate = _both(problem, sender, receiver, deterministic, sender_perm)
    inputs = _inputs(problem, dtype)
    tolerance = dict(rtol=1e-11, atol=1e-11) if dtype == torch.float64 else dict(rtol=2e-5, atol=2e-5)
    for name, a, b in zip(["value", "grad node_feats", "grad edge_attrs", "grad hidden", "grad radial_weight",
                           "second node_feats", "second edge_attrs", "second hidden", "second radial_weight"],
                          _derivatives(ours, inputs), _derivatives(separate, inputs)):
        torch.testing.assert_close(a, b, **tolerance, msg=lambda m: f"{problem} {name}: {m}")


def test_gradcheck_and_gradgradcheck():
    sender, receiver = random_graph(N_NODES, N_EDGES, seed=3)
    ours, _ = _both(PROBLEM, sender, receiver)
    inputs = _inputs(PROBLEM, torch.float64, seed=4)
    assert torch.autograd.gradcheck(ours, inputs)
    assert torch.autograd.gradgradcheck(ours, inputs)


def test_keeps_the_hidden_features_not_the_weights():
    """What autograd keeps for the backward: ``radial_hidden`` [n_edges, hidden], never the [n_edges, weight_numel]
    weights, which the separate layers keep."""
    sender, receiver = random_graph(N_NODES, N_EDGES, seed=5)
    ours, separate = _both(PROBLEM, sender, receiver)
    weights_shape = (N_EDGES, PROBLEM.plan().weight_numel)

    def saved_shapes(fn):
        shapes = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: shapes.append(tuple(t.shape)) or t, lambda t: t):
            fn(*_inputs(PROBLEM, torch.float64)).sum()
        return shapes
    assert weights_shape in saved_shapes(separate)  # the check can fail
    shapes = saved_shapes(ours)
    assert (N_EDGES, HIDDEN) in shapes and weights_shape not in shapes


def test_opcheck(dtype):
    sender, receiver = random_graph(N_NODES, N_EDGES, seed=6, dtype=torch.int32)
    plan = PROBLEM.plan()
    inputs = _inputs(PROBLEM, dtype, seed=8)
    utils = ("test_schema", "test_autograd_registration", "test_faketensor") + (
        ("test_aot_dispatch_dynamic",) if dtype == torch.float64 else ())
    torch.library.opcheck(torch.ops.batmobile.conv_radial,
                          (*inputs, ALPHA, sender, receiver, None, plan.plan_list, plan.cg_list, False),
                          test_utils=utils)


@pytest.mark.parametrize("change, match", [
    (dict(hidden=(N_EDGES + 1, HIDDEN)), "radial_hidden must have shape \\[n_edges=12, hidden\\]"),
    (dict(radial_weight=(HIDDEN + 1, None)), "one hidden size"),
    (dict(radial_weight=(HIDDEN, 3)), "radial_weight must have last dimension"),
    (dict(hidden_dtype=torch.float32), "radial_hidden is torch.float32 but node_feats is torch.float64"),
])
def test_bad_inputs(change, match):
    sender, receiver = random_graph(N_NODES, N_EDGES, seed=9)
    plan = PROBLEM.plan()
    node_feats, edge_attrs, hidden, radial_weight = (t.detach() for t in _inputs(PROBLEM, torch.float64))
    if "hidden" in change:
        hidden = torch.randn(*change["hidden"], dtype=torch.float64)
    if "radial_weight" in change:
        rows, cols = change["radial_weight"]
        radial_weight = torch.randn(rows, cols or plan.weight_numel, dtype=torch.float64)
    if "hidden_dtype" in change:
        hidden = hidden.to(change["hidden_dtype"])
    with pytest.raises(ValueError, match=match):
        conv_radial(node_feats, edge_attrs, hidden, radial_weight, ALPHA, sender, receiver, None, plan.plan_list,
                    plan.cg_list, False)


def test_index_out_of_range():
    sender, receiver = random_graph(N_NODES, N_EDGES, seed=10)
    plan = PROBLEM.plan()
    inputs = [t.detach() for t in _inputs(PROBLEM, torch.float64)]
    with pytest.raises(ValueError, match="batmobile.conv_radial: receiver holds indices"):
        conv_radial(*inputs, ALPHA, sender, receiver + N_NODES, None, plan.plan_list, plan.cg_list, False)
    with pytest.raises(ValueError, match="batmobile.conv_radial: deterministic=True needs edges sorted by receiver"):
        conv_radial(*inputs, ALPHA, sender, receiver.flip(0), None, plan.plan_list, plan.cg_list, True)
