"""The per-problem uvu kernels (batmobile_nn/_uvu.py, compiled with NVRTC): MACE's problems run on them,
and the generic kernels they replace still match the reference when the uvu path is switched off.
(test_cuda_conv.py and test_cuda_tensor_product.py test the uvu path itself: it is the default.)"""

import pytest
import torch

import batmobile_nn
from batmobile_nn import _uvu, _uvu_codegen
from problems import MACE_PROBLEMS

import test_cuda_conv
import test_cuda_tensor_product
from cuda_cases import DEVICE

pytestmark = pytest.mark.cuda


@pytest.mark.parametrize("problem", MACE_PROBLEMS, ids=str)
def test_mace_problems_run_on_uvu_kernels(problem, dtype):
    batmobile_nn._backend.implementation("conv", DEVICE)  # builds / loads the extension
    plan = problem.plan()
    expected, reason = _uvu_codegen.uvu_spec(plan.plan_list, plan.cg_list, True, torch.finfo(dtype).bits // 8)
    kernels = _uvu.kernels_for(plan.plan_list, plan.cg_list, dtype, DEVICE, True)
    assert expected is not None, reason  # every MACE-MP problem is within the register budget, float64 included
    assert kernels is not None and kernels.forward and kernels.backward, "NVRTC compilation failed"


@pytest.fixture
def generic_kernels(monkeypatch):
    monkeypatch.setattr(_uvu, "enabled", False)


@pytest.mark.parametrize("deterministic", [False, True], ids=["atomic", "deterministic"])
@pytest.mark.parametrize("problem", MACE_PROBLEMS, ids=str)
def test_generic_conv_kernels(problem, deterministic, dtype, generic_kernels):
    test_cuda_conv._compare(problem, dtype, deterministic)


@pytest.mark.parametrize("problem", MACE_PROBLEMS, ids=str)
def test_generic_tensor_product_kernels(problem, dtype, generic_kernels):
    test_cuda_tensor_product._compare(problem, dtype, shared_weights=False)


def test_uvu_and_generic_agree(dtype, monkeypatch):
    problem = MACE_PROBLEMS[1]
    fast = test_cuda_conv._compare(problem, dtype, False, seed=3)
    monkeypatch.setattr(_uvu, "enabled", False)
    generic = test_cuda_conv._compare(problem, dtype, False, seed=3)
    tol = 1e-5 if dtype == torch.float32 else 1e-11
    for key in fast:
        scale = generic[key].abs().max().clamp_min(1e-30)
        assert ((fast[key] - generic[key]).abs().max() / scale) < tol, key


@pytest.mark.parametrize("deterministic", [False, True], ids=["atomic", "deterministic"])
def test_large_float64_on_uvu_kernels_with_a_composed_double_backward(deterministic, monkeypatch):
    """MACE-MP-large in float64 on its uvu forward and backward (71 outputs a thread) with the double backward
    composed of them (above ``MAX_FUSED_DBL_OUT``): values, first and second derivatives against the reference."""
    monkeypatch.setattr(_uvu, "_cache", type(_uvu._cache)())
    problem = MACE_PROBLEMS[2]
    plan = problem.plan()
    kernels = _uvu.kernels_for(plan.plan_list, plan.cg_list, torch.float64, DEVICE, True)
    assert kernels is not None and not kernels.fuses_double_backward
    test_cuda_conv._compare(problem, torch.float64, deterministic)
