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
