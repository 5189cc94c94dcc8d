"""The per-problem uvw kernels (``_uvw``: uvw paths with shared weights, the Batmobile seed's tensor product) on the
GPU against the reference: the seed at 32 and 64 channels over several tiles, a 64 -> 32 channel problem with an
in1 block no path reads, values, first and second derivatives, gradcheck, reproducible weight gradients, and the
generic kernels they replace (still used by other problems) on the same problem."""

import pytest
import torch
from e3nn import o3

from batmobile_nn import _uvw, reference
from batmobile_nn.ops import tensor_product

from problems import Problem

from cuda_cases import DEVICE, compare, randn
from test_cuda_tensor_product import seed_uvw_problem

pytestmark = pytest.mark.cuda

WIDE = Problem("wide-64-to-32", o3.Irreps("64x0e+64x1o+64x3o"), o3.Irreps("0e+1o"), o3.Irreps("32x0e+32x1o+32x1e"),
               ((0, 1, 1, "uvw", True), (1, 0, 1, "uvw", True), (1, 1, 0, "uvw", True), (1, 1, 2, "uvw", True),
                (0, 0, 0, "uvw", True)))


def _compare(problem: Problem, dtype, batch: int):
    plan = problem.plan()
    raw = randn([(batch, problem.irreps_in1.dim), (batch, problem.irreps_in2.dim), (plan.weight_numel,)],
                torch.float64, 5)
    return compare(lambda a, b, w: tensor_product(a, b, w, plan.plan_list, plan.cg_list),
                   lambda a, b, w: reference.tensor_product(a, b, w, plan.plan_list, plan.cg_list), raw, dtype, str(problem))


@pytest.mark.parametrize("problem", [seed_uvw_problem(32), seed_uvw_problem(64), WIDE], ids=str)
def test_uvw_kernels_match_reference(problem, dtype):
    plan = problem.plan()
    assert _uvw.kernels_for(plan.plan_list, plan.cg_list, dtype, torch.device(DEVICE), False) is not None
    _compare(problem, dtype, batch=333)  # 333: many tiles, the last cut short


def test_generic_kernels_on_the_seed(dtype, monkeypatch):
    """The generic kernels still serve uvw products the per-problem kernels decline; checked on the seed."""
    monkeypatch.setattr(_uvw, "enabled", False)
    monkeypatch.setattr(_uvw, "_cache", {})
    _compare(seed_uvw_problem(32), dtype, batch=70)


def test_gradcheck_float64():
    plan = seed_uvw_problem(32).plan()
    generator = torch.Generator(device=DEVICE).manual_seed(0)
    inputs = [torch.randn(*shape, device=DEVICE, dtype=torch.float64, generator=generator, requires_grad=True)
              for shape in ((3, plan.irreps_in1.dim), (3, plan.irreps_in2.dim), (plan.weight_numel,))]

    def fn(a, b, w):
        return tensor_product(a, b, w, plan.plan_list, plan.cg_list)
    assert torch.autograd.gradcheck(fn, inputs, fast_mode=True)
    assert torch.autograd.gradgradcheck(fn, inputs, fast_mode=True)


def test_weight_gradient_reproducible():
    """The weight gradient adds its slices in a fixed order (no atomics): bitwise equal run to run."""
    plan = seed_uvw_problem(32).plan()
    a, b, g = (torch.randn(4000, d, device=DEVICE) for d in (plan.irreps_in1.dim, plan.irreps_in2.dim,
                                                             plan.irreps_out.dim))
    w = torch.randn(plan.weight_numel, device=DEVICE, requires_grad=True)
    runs = [torch.autograd.grad(tensor_product(a, b, w, plan.plan_list, plan.cg_list), w, g)[0] for _ in range(2)]
    assert torch.equal(runs[0], runs[1])


@pytest.mark.parametrize("samples, min_blocks, columns", [(1, 1, 1), (3, 1, 1), (4, 1, 1), (2, 2, 1), (1, 1, 2),
                                                     (1, 2, 2)])
def test_tile_variants(samples, min_blocks, columns, monkeypatch):
    """Other tile sizes (samples per thread group), register caps and output channels per thread than the
    defaults, on the seed (float32)."""
    monkeypatch.setitem(_uvw.codegen.SAMPLES_PER_GROUP, "float", samples)
    monkeypatch.setitem(_uvw.codegen.COLUMNS_PER_THREAD, "float", columns)
    monkeypatch.setitem(_uvw.codegen.MIN_BLOCKS, "float", dict.fromkeys(("fwd", "bwd", "wgrad"), min_blocks))
    monkeypatch.setattr(_uvw, "_cache", {})
    _compare(seed_uvw_problem(32), torch.float32, batch=333)
