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


@pytest.mark.parametrize("deterministic", [False, True], ids=["atomic", "deterministic"])
def test_composed_double_backward_holds_one_weight_gradient(deterministic, monkeypatch):
    """The composed double backward (MACE-MP-large in float64) adds its second weight-gradient term into the first's
    buffer (``_uvu.backward_into``): its peak is one ``[n_edges, weight_numel]`` buffer below the composition without
    it, and the results are the same."""
    from batmobile_nn import _cuda
    from batmobile_nn.ops import _trilinear

    problem = MACE_PROBLEMS[2]
    plan = problem.plan()
    n_nodes, n_edges = 500, 20_000  # weight gradient: 20,000 x 3,072 float64 = 492 MB
    generator = torch.Generator(device=DEVICE).manual_seed(2)
    receiver = torch.randint(0, n_nodes, (n_edges,), device=DEVICE, generator=generator).sort().values
    sender = torch.randint(0, n_nodes, (n_edges,), device=DEVICE, generator=generator)
    shapes = [(n_nodes, problem.irreps_in1.dim), (n_edges, problem.irreps_in2.dim), (n_edges, plan.weight_numel),
              (n_nodes, problem.irreps_out.dim)]
    x, y, w, grad_out = (torch.randn(*s, device=DEVICE, dtype=torch.float64, generator=generator) for s in shapes)
    gx, gy, gw = (torch.randn_like(t) for t in (x, y, w))
    kernels = _uvu.kernels_for(plan.plan_list, plan.cg_list, torch.float64, DEVICE, True)
    assert kernels is not None and not kernels.fuses_double_backward

    def run():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        grads = _cuda.conv_double_backward(gx, gy, gw, grad_out, x, y, w, sender, receiver, None, plan.plan_list,
                                           plan.cg_list, deterministic, [True] * 4)
        torch.cuda.synchronize()
        return grads, torch.cuda.max_memory_allocated() - base

    run()  # compiles the kernels
    added, peak_added = run()
    original = _trilinear.planned_double_backward
    monkeypatch.setattr(_trilinear, "planned_double_backward",  # the same composition without backward_into
                        lambda forward, backward, plan, grad_out, a, b, c, cotangents, needs, backward_into=None:
                        original(forward, backward, plan, grad_out, a, b, c, cotangents, needs))
    run()
    separate, peak_separate = run()
    buffer = n_edges * plan.weight_numel * 8
    assert peak_separate - peak_added >= 0.9 * buffer, (peak_separate, peak_added, buffer)
    for name, a, b in zip(("grad_out", "node_feats", "edge_attrs", "weight"), added, separate):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12 * b.abs().max().item(), msg=name)
