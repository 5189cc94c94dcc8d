"""``torch.ops.batmobile.tensor_product`` against e3nn's ``o3.TensorProduct``: values, first and second
derivatives, float32 and float64, MACE-MP problems and random uvu / uvw / mixed problems."""

import pytest
import torch
from problems import GAPS_PROBLEM, MACE_PROBLEMS, RANDOM_PROBLEMS

from batmobile_nn.ops import tensor_product

from ._compare import compare_with_e3nn, randn

BATCH = 6


def _run(problem, dtype, shared_weights: bool, batch: int = BATCH, seed: int = 0):
    plan = problem.plan()
    weight_shape = (plan.weight_numel,) if shared_weights else (batch, plan.weight_numel)
    raw = randn([(batch, problem.irreps_in1.dim), (batch, problem.irreps_in2.dim), weight_shape],
                torch.float64, seed)

    def ours(in1, in2, weight):
        return tensor_product(in1, in2, weight, plan.plan_list, plan.cg_list)

    return compare_with_e3nn(ours, problem.e3nn(dtype, shared_weights), problem.e3nn(torch.float64, shared_weights),
                             raw, dtype, f"{problem} shared={shared_weights}")


@pytest.mark.parametrize("problem", MACE_PROBLEMS + RANDOM_PROBLEMS + [GAPS_PROBLEM], ids=str)
def test_matches_e3nn_per_sample_weights(problem, default_dtype):
    _run(problem, default_dtype, shared_weights=False)


@pytest.mark.parametrize("problem", RANDOM_PROBLEMS[1::2] + [GAPS_PROBLEM], ids=str)
def test_matches_e3nn_shared_weights(problem, default_dtype):
    _run(problem, default_dtype, shared_weights=True)


def test_empty_batch(dtype):
    for shared_weights in (False, True):
        result = _run(GAPS_PROBLEM, dtype, shared_weights, batch=0)
        assert result["value"].shape == (0, GAPS_PROBLEM.irreps_out.dim)
    # no samples: the shared weights get an all-zero gradient of the right shape
    assert result["grad2"].shape == (GAPS_PROBLEM.plan().weight_numel,)
    assert not result["grad2"].any()


def test_unused_output_slot_is_zero(dtype):
    """GAPS_PROBLEM's last output slot (2x2e) has no path: zero values and no gradient leaks."""
    result = _run(GAPS_PROBLEM, dtype, shared_weights=False)
    gap = slice(GAPS_PROBLEM.irreps_out[:3].dim, GAPS_PROBLEM.irreps_out.dim)
    assert not result["value"][:, gap].any()
    unused_in1 = slice(GAPS_PROBLEM.irreps_in1[:3].dim, GAPS_PROBLEM.irreps_in1.dim)
    assert not result["grad0"][:, unused_in1].any() and not result["grad2_0"][:, unused_in1].any()
