"""``torch.autograd.gradcheck`` / ``gradgradcheck`` in float64 on tiny problems: the analytic first and
second derivatives of every op against finite differences, and third derivatives of the tensor product
and the convolution through their composed double backward."""

import pytest
import torch
from problems import GAPS_PROBLEM, MACE_PROBLEMS, random_problem, scaled

from batmobile_nn.ops import conv, spherical_harmonics, tensor_product

from ._compare import randn
from ._graphs import random_graph, sort_by_receiver

F64 = torch.float64


def _leaves(tensors):
    return [t.detach().clone().requires_grad_(True) for t in tensors]


def _check(fn, inputs, third_order=False):
    assert torch.autograd.gradcheck(fn, inputs, fast_mode=True)
    assert torch.autograd.gradgradcheck(fn, inputs, fast_mode=True)
    if third_order:  # second-order check of the first derivative = third derivatives of fn
        def first_derivative(*xs):
            out = fn(*xs)
            return torch.autograd.grad(out, xs, torch.ones_like(out), create_graph=True)
        assert torch.autograd.gradgradcheck(first_derivative, inputs, fast_mode=True)


@pytest.mark.parametrize("ls, normalize, normalization", [([0, 1, 2, 3], True, "component"),
                                                         ([0, 1, 2, 3], False, "integral"), ([1, 3], True, "norm"),
                                                         ([5], True, "integral")], ids=str)
def test_spherical_harmonics(ls, normalize, normalization):
    (vectors,) = _leaves(randn([(4, 3)], F64, 0))
    _check(lambda x: spherical_harmonics(x, ls, normalize, normalization), (vectors,))


TP_PROBLEMS = [scaled(MACE_PROBLEMS[2], 1), scaled(random_problem(0, "uvu"), 2), scaled(random_problem(0, "uvw"), 1),
               scaled(random_problem(1, "mixed"), 1), GAPS_PROBLEM]


@pytest.mark.parametrize("shared_weights", [False, True])
@pytest.mark.parametrize("problem", TP_PROBLEMS, ids=str)
def test_tensor_product(problem, shared_weights):
    plan = problem.plan()
    weight_shape = (plan.weight_numel,) if shared_weights else (3, plan.weight_numel)
    inputs = _leaves(randn([(3, problem.irreps_in1.dim), (3, problem.irreps_in2.dim), weight_shape], F64, 1))
    _check(lambda a, b, c: tensor_product(a, b, c, plan.plan_list, plan.cg_list), inputs,
           third_order=problem is GAPS_PROBLEM)


@pytest.mark.parametrize("variant", ["int64", "int32-shared-weights", "deterministic-sender-perm"])
@pytest.mark.parametrize("problem", [scaled(MACE_PROBLEMS[1], 1), GAPS_PROBLEM], ids=str)
def test_conv(problem, variant):
    plan, n_nodes, n_edges = problem.plan(), 4, 6
    sender, receiver = random_graph(n_nodes, n_edges, seed=2, isolated=1,
                                    dtype=torch.int32 if "int32" in variant else torch.int64)
    sender_perm, deterministic = None, variant.startswith("deterministic")
    if deterministic:
        sender, receiver, _ = sort_by_receiver(sender, receiver)
        sender_perm = torch.argsort(sender, stable=True)
    weight_shape = (plan.weight_numel,) if "shared" in variant else (n_edges, plan.weight_numel)
    shapes = [(n_nodes, problem.irreps_in1.dim), (n_edges, problem.irreps_in2.dim), weight_shape]
    inputs = _leaves(randn(shapes, F64, 3))
    _check(lambda a, b, c: conv(a, b, c, sender, receiver, sender_perm, plan.plan_list, plan.cg_list, deterministic),
           inputs, third_order=problem is GAPS_PROBLEM and variant == "int64")


def test_spherical_harmonics_into_conv():
    """MACE's chain, edge vectors -> harmonics -> convolution: second derivatives (training on forces)."""
    problem = scaled(MACE_PROBLEMS[0], 1)
    plan = problem.plan()
    sender, receiver = random_graph(3, 5, seed=4)
    inputs = _leaves(randn([(5, 3), (3, problem.irreps_in1.dim), (5, plan.weight_numel)], F64, 5))

    def model(vectors, node_feats, weight):
        sh = spherical_harmonics(vectors, [0, 1, 2, 3], True, "component")
        return conv(node_feats, sh, weight, sender, receiver, None, plan.plan_list, plan.cg_list, False)

    _check(model, inputs)
