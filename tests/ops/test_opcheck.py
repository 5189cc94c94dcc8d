"""``torch.library.opcheck`` on every op (schema, autograd registration, fake tensors, AOT dispatch with
dynamic shapes): forward, backward and double-backward ops, on small inputs that require gradients."""

import pytest
import torch
from problems import GAPS_PROBLEM, MACE_PROBLEMS, scaled

from ._compare import randn
from ._graphs import random_graph, sort_by_receiver

ops = torch.ops.batmobile
FAST_UTILS = ("test_schema", "test_autograd_registration", "test_faketensor")


def _opcheck(op, args, dtype, full: bool = True):
    """Every opcheck test in float64; in float32 (and for ``full=False``) all but the slow AOT-dispatch one."""
    utils = FAST_UTILS if dtype != torch.float64 or not full else FAST_UTILS + ("test_aot_dispatch_dynamic",)
    torch.library.opcheck(op, args, test_utils=utils)


def _leaves(tensors, requires_grad=True):
    return [t.detach().clone().requires_grad_(requires_grad) for t in tensors]


@pytest.mark.parametrize("ls, normalize, normalization", [([0, 1, 2, 3], True, "component"), ([1, 3], False, "norm")],
                         ids=str)
def test_spherical_harmonics_ops(ls, normalize, normalization, dtype):
    n_out = sum(2 * l + 1 for l in ls)
    vectors, grad_sh, grad_grad_vectors = _leaves(randn([(5, 3), (5, n_out), (5, 3)], dtype, 0))
    args = (ls, normalize, normalization)
    _opcheck(ops.spherical_harmonics, (vectors, *args), dtype)
    _opcheck(ops.spherical_harmonics_backward, (grad_sh, vectors, *args), dtype)
    # the double backward has no derivative of its own (third derivatives of the harmonics): no gradients
    vectors, grad_sh, grad_grad_vectors = _leaves((vectors, grad_sh, grad_grad_vectors), requires_grad=False)
    _opcheck(ops.spherical_harmonics_double_backward, (grad_grad_vectors, grad_sh, vectors, *args), dtype)


def test_spherical_harmonics_third_derivative_is_a_clear_error():
    vectors = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    sh = ops.spherical_harmonics(vectors, [1, 2], True, "component")
    (grad,) = torch.autograd.grad(sh.square().sum(), vectors, create_graph=True)
    (grad2,) = torch.autograd.grad(grad.square().sum(), vectors, create_graph=True)
    with pytest.raises(RuntimeError, match="spherical_harmonics_double_backward"):
        torch.autograd.grad(grad2.sum(), vectors)


@pytest.mark.parametrize("problem, shared_weights", [(GAPS_PROBLEM, False), (scaled(MACE_PROBLEMS[2], 1), True)],
                         ids=str)
def test_tensor_product_ops(problem, shared_weights, dtype):
    plan = problem.plan()
    weight_shape = (plan.weight_numel,) if shared_weights else (4, plan.weight_numel)
    in1, in2, weight, grad_out = _leaves(randn([(4, problem.irreps_in1.dim), (4, problem.irreps_in2.dim), weight_shape,
                                                (4, problem.irreps_out.dim)], dtype, 1))
    full = not shared_weights  # the AOT check once per op is enough
    _opcheck(ops.tensor_product, (in1, in2, weight, plan.plan_list, plan.cg_list), dtype, full)
    for needs in ([True, True, True], [False, True, False]):
        _opcheck(ops.tensor_product_backward, (grad_out, in1, in2, weight, plan.plan_list, plan.cg_list, needs), dtype,
                 full=full and all(needs))


@pytest.mark.parametrize("variant", ["int32-shared-weights", "int64-deterministic-sender-perm"])
def test_conv_ops(variant, dtype):
    problem, n_nodes, n_edges = GAPS_PROBLEM, 4, 7
    plan = problem.plan()
    sender, receiver = random_graph(n_nodes, n_edges, seed=2, dtype=torch.int32 if "int32" in variant else torch.int64)
    sender_perm, deterministic = None, "deterministic" in variant
    if deterministic:
        sender, receiver, _ = sort_by_receiver(sender, receiver)
        sender_perm = torch.argsort(sender, stable=True)
    weight_shape = (plan.weight_numel,) if "shared" in variant else (n_edges, plan.weight_numel)
    node_feats, edge_attrs, weight, grad_out = _leaves(
        randn([(n_nodes, problem.irreps_in1.dim), (n_edges, problem.irreps_in2.dim), weight_shape,
               (n_nodes, problem.irreps_out.dim)], dtype, 3))
    graph = (sender, receiver, sender_perm)
    _opcheck(ops.conv, (node_feats, edge_attrs, weight, *graph, plan.plan_list, plan.cg_list, deterministic), dtype)
    for needs in ([True, True, True], [True, False, True]):
        _opcheck(ops.conv_backward, (grad_out, node_feats, edge_attrs, weight, *graph, plan.plan_list, plan.cg_list,
                                     deterministic, needs), dtype, full=all(needs))
    # the fused double backward has no derivative of its own (a graph-building backward composes instead)
    tensors = _leaves((node_feats, edge_attrs, weight, grad_out), requires_grad=False)
    cotangents = (tensors[0] * 0.5, tensors[1].new_empty(0), tensors[2] * 2.0)
    _opcheck(ops.conv_double_backward, (*cotangents, tensors[3], *tensors[:3], *graph, plan.plan_list, plan.cg_list,
                                        deterministic, [True, True, False, True]), dtype)
