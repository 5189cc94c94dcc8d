"""CUDA fused convolution against the reference: MACE-MP and random problems, atomic and deterministic
modes, int32 and int64 indices, an isolated node, values, first and second derivatives, bitwise
reproducibility, gradcheck, and graphs with a million edges and with more than 2^31 output elements."""

import pytest
import torch

import batmobile_nn
from batmobile_nn import reference
from batmobile_nn.ops import conv
from ops._compare import RTOL
from problems import GAPS_PROBLEM, MACE_PROBLEMS, RANDOM_PROBLEMS, scaled

from cuda_cases import DEVICE, compare, randn, random_graph

pytestmark = pytest.mark.cuda

N_NODES, N_EDGES = 40, 500


def _inputs(problem, n_nodes, n_edges, dtype, seed, shared_weights=False):
    plan = problem.plan()
    weight_shape = (plan.weight_numel,) if shared_weights else (n_edges, plan.weight_numel)
    return plan, randn([(n_nodes, problem.irreps_in1.dim), (n_edges, problem.irreps_in2.dim), weight_shape], dtype,
                       seed)


def _compare(problem, dtype, deterministic, index_dtype=torch.int64, shared_weights=False, sender_perm=False,
             seed=0):
    sender, receiver = random_graph(N_NODES, N_EDGES, seed, isolated=3, index_dtype=index_dtype,
                                    sort_by_receiver=deterministic)
    perm = torch.argsort(sender, stable=True) if sender_perm else None
    plan, raw = _inputs(problem, N_NODES, N_EDGES, torch.float64, seed, shared_weights)

    def ours(node_feats, edge_attrs, weight):
        return conv(node_feats, edge_attrs, weight, sender, receiver, perm, plan.plan_list, plan.cg_list, deterministic)

    def ref(node_feats, edge_attrs, weight):
        return reference.conv(node_feats, edge_attrs, weight, sender, receiver, plan.plan_list, plan.cg_list)

    result = compare(ours, ref, raw, dtype, f"{problem} deterministic={deterministic}")
    assert not result["value"][3].any() and not result["grad0"][3].any(), "the isolated node 3 got a value"
    return result


@pytest.mark.parametrize("deterministic", [False, True], ids=["atomic", "deterministic"])
@pytest.mark.parametrize("problem", MACE_PROBLEMS + RANDOM_PROBLEMS + [GAPS_PROBLEM], ids=str)
def test_matches_reference(problem, deterministic, dtype):
    _compare(problem, dtype, deterministic)


def test_int32_indices_and_sender_perm(dtype):
    a = _compare(MACE_PROBLEMS[1], dtype, False, index_dtype=torch.int32, sender_perm=True)
    b = _compare(MACE_PROBLEMS[1], dtype, False, index_dtype=torch.int64)
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("problem", [MACE_PROBLEMS[0], RANDOM_PROBLEMS[5]], ids=str)
def test_shared_weights(problem, dtype):
    _compare(problem, dtype, True, shared_weights=True)


def test_runs_cuda_kernels():
    batmobile_nn._backend.implementation("conv", DEVICE)
    assert "conv_backward" in batmobile_nn._backend.KERNELS["cuda"], "the CUDA extension did not load"


@pytest.mark.parametrize("deterministic", [False, True], ids=["atomic", "deterministic"])
def test_bitwise_reproducible(deterministic, dtype):
    """Two runs of forward, backward and double backward give identical bits (no atomics anywhere)."""
    first = _compare(MACE_PROBLEMS[1], dtype, deterministic, seed=7)
    second = _compare(MACE_PROBLEMS[1], dtype, deterministic, seed=7)
    for key in first:
        assert torch.equal(first[key], second[key]), key


def test_sender_perm_is_checked():
    sender, receiver = random_graph(N_NODES, N_EDGES, 0)
    plan, (x, y, w) = _inputs(MACE_PROBLEMS[0], N_NODES, N_EDGES, torch.float32, 0)
    x.requires_grad_(True)
    out = conv(x, y, w, sender, receiver, torch.arange(N_EDGES, device=DEVICE), plan.plan_list, plan.cg_list, False)
    with pytest.raises(ValueError, match="sender_perm"):
        out.sum().backward()


def test_no_edges(dtype):
    plan, (x, y, w) = _inputs(MACE_PROBLEMS[0], 5, 0, dtype, 0)
    x.requires_grad_(True)
    empty = torch.zeros(0, dtype=torch.int64, device=DEVICE)
    out = conv(x, y, w, empty, empty, None, plan.plan_list, plan.cg_list, True)
    assert out.shape == (5, plan.irreps_out.dim) and not out.any()
    (grad,) = torch.autograd.grad(out.sum(), x)
    assert not grad.any()


@pytest.mark.parametrize("deterministic", [False, True], ids=["atomic", "deterministic"])
def test_gradcheck_float64(deterministic):
    problem = scaled(MACE_PROBLEMS[2])
    sender, receiver = random_graph(5, 12, 1, isolated=None, sort_by_receiver=deterministic)
    plan, inputs = _inputs(problem, 5, 12, torch.float64, 2)
    inputs = [x.requires_grad_(True) for x in inputs]

    def fn(node_feats, edge_attrs, weight):
        return conv(node_feats, edge_attrs, weight, sender, receiver, None, plan.plan_list, plan.cg_list, deterministic)

    assert torch.autograd.gradcheck(fn, inputs, fast_mode=True)
    assert torch.autograd.gradgradcheck(fn, inputs, fast_mode=True)


def _first_derivatives(fn, inputs, grad_out):
    inputs = [x.detach().requires_grad_(True) for x in inputs]
    out = fn(*inputs)
    grads = torch.autograd.grad(out, inputs, grad_out)
    return [out.detach()] + [g.detach() for g in grads]


def _assert_close_float32(ours, reference, what):
    """RTOL[float32] x max |reference|, computed in row chunks (a float64 copy of 2e9 entries would not fit)."""
    assert ours.shape == reference.shape and ours.dtype == torch.float32, what
    err = max((float((a - b).abs().max()) for a, b in zip(ours.split(1 << 16), reference.split(1 << 16))), default=0.0)
    size = float(reference.abs().max()) if reference.numel() else 0.0
    assert err <= RTOL[torch.float32] * size, f"{what}: max error {err:.3g} > {RTOL[torch.float32]:g} x {size:.3g}"


def _compare_large(problem, n_nodes, sender, receiver, deterministic):
    """float32 value and gradients against the float32 reference (the float64 one would not fit)."""
    plan = problem.plan()
    generator = torch.Generator(device=DEVICE).manual_seed(11)
    shapes = [(n_nodes, problem.irreps_in1.dim), (sender.numel(), problem.irreps_in2.dim),
              (sender.numel(), plan.weight_numel), (n_nodes, problem.irreps_out.dim)]
    *inputs, grad_out = [torch.randn(*shape, generator=generator, device=DEVICE) for shape in shapes]

    def ours(*xs):
        return conv(*xs, sender, receiver, None, plan.plan_list, plan.cg_list, deterministic)

    def ref(*xs):
        return reference.conv(*xs, sender, receiver, plan.plan_list, plan.cg_list)

    mine = _first_derivatives(ours, inputs, grad_out)
    theirs = _first_derivatives(ref, inputs, grad_out)
    for name, a, b in zip(("value", "grad_node_feats", "grad_edge_attrs", "grad_weight"), mine, theirs):
        _assert_close_float32(a, b, name)
    return mine


def test_million_edges():
    sender, receiver = random_graph(30_000, 1_100_000, 3, sort_by_receiver=True)
    _compare_large(MACE_PROBLEMS[0], 30_000, sender, receiver, deterministic=True)


def test_output_over_2_31_elements():
    """mace-mp-small has 2560 outputs per node: 850k nodes are 2.18e9 > 2^31 output elements. The edges
    point at the last nodes, whose rows lie beyond 2^31 (int64 offsets)."""
    problem, n_nodes = MACE_PROBLEMS[0], 850_000
    assert n_nodes * problem.irreps_out.dim > 2**31
    generator = torch.Generator().manual_seed(4)
    sender = torch.randint(0, n_nodes, (100_000,), generator=generator)
    receiver = torch.randint(n_nodes - 5_000, n_nodes, (100_000,), generator=generator)
    value, *_ = _compare_large(problem, n_nodes, sender.to(DEVICE), receiver.to(DEVICE), deterministic=False)
    assert value[-5_000:].abs().sum(1).gt(0).float().mean() > 0.99
