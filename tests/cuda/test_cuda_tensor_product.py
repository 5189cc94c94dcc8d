"""CUDA tensor product against the reference: MACE-MP problems, random uvu / uvw / mixed problems and the
Batmobile seed's 34 uvw paths, per-sample and shared weights, values, first and second derivatives."""

import pytest
import torch
from e3nn import o3

import batmobile_nn
import batmobile_nn._uvu
from batmobile_nn import reference
from batmobile_nn.ops import make_plan, tensor_product

from problems import GAPS_PROBLEM, MACE_PROBLEMS, RANDOM_PROBLEMS, Problem, scaled

from cuda_cases import DEVICE, compare, randn

pytestmark = pytest.mark.cuda

BATCH = 200


def seed_uvw_problem(channels: int) -> Problem:
    """The Batmobile seed's tensor product: C x (0e+1e+2e+3e) (x) (0e+1e+2e+3e), the 34 uvw paths."""
    irreps = o3.Irreps([(channels, (l, 1)) for l in range(4)])
    instructions = tuple((i1, i2, i_out, "uvw", True) for i1 in range(4) for i2 in range(4) for i_out in range(4)
                         if abs(i1 - i2) <= i_out <= i1 + i2)
    return Problem(f"seed-uvw-{channels}", irreps, o3.Irreps("0e+1e+2e+3e"), irreps, instructions)


def _compare(problem: Problem, dtype, shared_weights: bool, batch: int = BATCH, seed: int = 0):
    plan = problem.plan()
    weight_shape = (plan.weight_numel,) if shared_weights else (batch, plan.weight_numel)
    raw = randn([(batch, problem.irreps_in1.dim), (batch, problem.irreps_in2.dim), weight_shape], torch.float64,
                seed)

    def ours(in1, in2, weight):
        return tensor_product(in1, in2, weight, plan.plan_list, plan.cg_list)

    def ref(in1, in2, weight):
        return reference.tensor_product(in1, in2, weight, plan.plan_list, plan.cg_list)

    return compare(ours, ref, raw, dtype, f"{problem} shared={shared_weights}")


@pytest.mark.parametrize("problem", MACE_PROBLEMS + RANDOM_PROBLEMS + [GAPS_PROBLEM], ids=str)
def test_per_sample_weights(problem, dtype):
    _compare(problem, dtype, shared_weights=False)


@pytest.mark.parametrize("problem", MACE_PROBLEMS[:2] + RANDOM_PROBLEMS + [GAPS_PROBLEM], ids=str)
def test_shared_weights(problem, dtype):
    _compare(problem, dtype, shared_weights=True)


@pytest.mark.parametrize("channels", [4, 32])
def test_seed_uvw_shared(channels, dtype):
    _compare(seed_uvw_problem(channels), dtype, shared_weights=True, batch=64)


def test_seed_uvw_per_sample(dtype):
    _compare(seed_uvw_problem(4), dtype, shared_weights=False, batch=64)


def test_runs_cuda_kernels():
    batmobile_nn._backend.implementation("tensor_product", DEVICE)
    assert "tensor_product" in batmobile_nn._backend.KERNELS["cuda"], "the CUDA extension did not load"


@pytest.mark.parametrize("shared_weights", [False, True])
def test_empty_batch(shared_weights, dtype):
    result = _compare(GAPS_PROBLEM, dtype, shared_weights, batch=0)
    assert result["value"].shape == (0, GAPS_PROBLEM.irreps_out.dim)


def _above_compiled_maximum() -> Problem:
    l_max = int(torch.ops.batmobile_cuda.cg_max_l()[0]) + 1
    return Problem("l-above-max", o3.Irreps(f"2x{l_max}e"), o3.Irreps("1x0e"), o3.Irreps(f"2x{l_max}e"),
                   ((0, 0, 0, "uvu", True),))


def test_degree_above_compiled_maximum_falls_back(monkeypatch):
    monkeypatch.setattr(batmobile_nn._uvu, "enabled", False)  # the generic kernels' compiled degrees
    with pytest.warns(batmobile_nn.ReferencePathWarning, match="have no CUDA kernel"):
        _compare(_above_compiled_maximum(), torch.float64, shared_weights=False, batch=8)


def test_degree_above_compiled_maximum_on_uvu_kernels(dtype):
    # the per-problem uvu kernels are generated for any degree: no fallback, same results
    _compare(_above_compiled_maximum(), dtype, shared_weights=False, batch=8)


@pytest.mark.parametrize("problem", [scaled(MACE_PROBLEMS[2]), scaled(RANDOM_PROBLEMS[4])], ids=str)
def test_gradcheck_float64(problem):
    plan = make_plan(problem.irreps_in1, problem.irreps_in2, problem.irreps_out, list(problem.instructions))
    inputs = randn([(3, problem.irreps_in1.dim), (3, problem.irreps_in2.dim), (3, plan.weight_numel)],
                   torch.float64, 3)
    inputs = [x.requires_grad_(True) for x in inputs]

    def fn(in1, in2, weight):
        return tensor_product(in1, in2, weight, plan.plan_list, plan.cg_list)

    assert torch.autograd.gradcheck(fn, inputs, fast_mode=True)
    assert torch.autograd.gradgradcheck(fn, inputs, fast_mode=True)
