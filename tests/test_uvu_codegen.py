"""The per-problem uvu kernel source (batmobile_nn/_uvu_codegen.py) on the CPU: which plans qualify, that the
coefficients are the plan's, and a lane-by-lane simulation of the generated warp reduce-scatter (the GPU
tests in tests/cuda/test_cuda_uvu.py run the kernels themselves)."""

import re

import pytest
import torch

from batmobile_nn import _uvu_codegen
from problems import MACE_PROBLEMS, RANDOM_PROBLEMS


def _spec(problem, per_edge=True, itemsize=4):
    plan = problem.plan()
    return _uvu_codegen.uvu_spec(plan.plan_list, plan.cg_list, per_edge, itemsize)


@pytest.mark.parametrize("problem", MACE_PROBLEMS, ids=str)
def test_mace_problems_qualify(problem):
    spec, reason = _spec(problem)
    assert spec is not None, reason
    plan = problem.plan()
    assert spec.dims == (problem.irreps_in1.dim, problem.irreps_in2.dim, problem.irreps_out.dim, plan.weight_numel)
    assert spec.mul == problem.irreps_in1[0].mul and spec.threads % 32 == 0 and spec.threads >= spec.mul
    assert spec.out_covered and spec.in1_covered
    # every non-zero coefficient of the plan appears, with its exact float64 value, in the source
    source = _uvu_codegen.forward_source(spec, "double")
    literals = set(float(x) for x in re.findall(r"T\(([-0-9.e]+)\)", source))
    nonzero = set(c for c in plan.cg_list if c != 0.0)
    assert nonzero <= literals


def test_register_budget(monkeypatch):
    """MACE-MP-large (71 outputs a thread) is within both dtypes' budget; a problem above it is declined with the
    reason (the generic kernels take it)."""
    large = [p for p in MACE_PROBLEMS if p.name == "mace-mp-large"][0]
    assert _spec(large, itemsize=4)[0] is not None and _spec(large, itemsize=8)[0] is not None
    monkeypatch.setitem(_uvu_codegen.MAX_OUT_PER_THREAD, 8, 64)
    spec, reason = _spec(large, itemsize=8)
    assert spec is None and reason == "71 output values per channel (more than 64)"
    assert _spec(large, itemsize=4)[0] is not None


def test_other_plans_do_not_qualify():
    assert _spec(MACE_PROBLEMS[1], per_edge=False)[1] == "shared weights"
    reasons = {_spec(p)[1] for p in RANDOM_PROBLEMS}
    assert any("uvu" in r for r in reasons), reasons  # uvw and mixed-multiplicity problems go elsewhere


_SWAP = re.compile(r"T (rs\d+); \{ const bool up = lane & (\d+); const T keep = up \? ([\w()]+) : ([\w()]+); "
                   r"const T give = up \? ([\w()]+) : ([\w()]+); \1 = keep \+ __shfl_xor_sync\(0xffffffffu, give, \d+\); \}")
_FULL = re.compile(r"const T (rs\d+) = (\w+) \+ __shfl_xor_sync\(0xffffffffu, \2, (\d+)\);")


def _simulate(lines, lane_values):
    """Run the generated lines on 32 lanes in lock step; lane_values[lane][name] are the inputs."""
    env = [dict(v, **{"T(0)": 0.0}) for v in lane_values]
    for line in (x.strip() for x in lines):
        if m := _SWAP.fullmatch(line):
            name, offset, hi, lo = m.group(1), int(m.group(2)), m.group(3), m.group(4)
            give = [e[lo] if lane & offset else e[hi] for lane, e in enumerate(env)]
            for lane, e in enumerate(env):
                e[name] = (e[hi] if lane & offset else e[lo]) + give[lane ^ offset]
        elif m := _FULL.fullmatch(line):
            name, src, offset = m.group(1), m.group(2), int(m.group(3))
            vals = [e[src] for e in env]
            for lane, e in enumerate(env):
                e[name] = vals[lane] + vals[lane ^ offset]
        elif line.startswith("const T reduced = "):
            src = line.split("= ")[1].rstrip(";")
            for e in env:
                e["reduced"] = e[src]
        else:
            raise AssertionError(f"unexpected line {line!r}")
    return [e["reduced"] for e in env]


@pytest.mark.parametrize("count", [1, 3, 9, 16, 25, 32])
def test_reduce_scatter_sums_each_value_over_the_warp(count):
    names = [f"gb_{j}" for j in range(count)]
    lines, shift = _uvu_codegen._reduce_scatter(names, "")
    values = torch.randint(-50, 50, (32, count)).tolist()  # integers: exact sums
    reduced = _simulate(lines, [dict(zip(names, map(float, row))) for row in values])
    sums = torch.tensor(values).sum(0).tolist()
    for lane in range(32):
        j = lane >> shift
        if lane & ((1 << shift) - 1) == 0 and j < count:
            assert reduced[lane] == sums[j], (lane, j)


def test_atomic_backward_adds_the_in1_gradient_at_the_sender():
    spec, _ = _spec(MACE_PROBLEMS[1])
    plain = _uvu_codegen.backward_source(spec, "float")
    atomic = _uvu_codegen.backward_source(spec, "float", g1_atomic=True)
    dim1_per_channel = spec.dims[0] // spec.mul
    assert "atomicAdd" not in plain and "g1_edge + e * DIM1" in plain
    assert "g1_edge + s * DIM1" in atomic and atomic.count("atomicAdd(g1 + ") == dim1_per_channel
    # the warps' harmonics-gradient sums: one per group of 32 components, added instead of written per warp
    assert spec.warps > 1 and atomic.count("atomicAdd(g2_part + e * DIM2 + j, reduced)") == (spec.dims[1] + 31) // 32
    assert "g2_part[(e * WARPS + warp)" in plain and "g2_part[(e * WARPS + warp)" not in atomic
    # everything else (the weight gradient, the reductions) is the same code
    strip = lambda src: [ln for ln in src.splitlines() if "g1" not in ln and "g2_part" not in ln]  # noqa: E731
    assert strip(plain) == strip(atomic)


def test_coverage_is_computed_once_per_spec(monkeypatch):
    """The launches read ``out_covered`` / ``in1_covered`` on every call: each is computed once per spec (it builds a
    set of every output column: about 0.3 ms of host time a call at MACE-MP-medium's shape when recomputed)."""
    plan = MACE_PROBLEMS[1].plan()
    spec, _ = _uvu_codegen.uvu_spec(plan.plan_list, plan.cg_list, True)
    calls = []
    original = _uvu_codegen._covers
    monkeypatch.setattr(_uvu_codegen, "_covers", lambda *args: calls.append(args) or original(*args))
    assert [spec.out_covered for _ in range(3)] == [True] * 3 and [spec.in1_covered for _ in range(3)] == [True] * 3
    assert len(calls) == 2


def test_launch_bounds_and_the_forwards_resident_blocks():
    """The tuning reaches the source: ``__launch_bounds__(THREADS, n)`` with a cap, ptxas' choice without; the
    forward's cap only for problems of at most MIN_BLOCKS_MAX_OUTPUTS outputs a thread (MACE-MP-large's 71
    spill under it)."""
    from batmobile_nn import _uvu, _uvu_dbl_codegen

    assert _uvu_codegen.launch_bounds(0) == "__launch_bounds__(THREADS)"
    assert _uvu_codegen.launch_bounds(5) == "__launch_bounds__(THREADS, 5)"
    medium, large = (p.plan() for p in (MACE_PROBLEMS[1], MACE_PROBLEMS[2]))
    spec_medium, _ = _uvu_codegen.uvu_spec(medium.plan_list, medium.cg_list, True)
    spec_large, _ = _uvu_codegen.uvu_spec(large.plan_list, large.cg_list, True)
    assert _uvu.forward_min_blocks(spec_medium, torch.float32) == _uvu.FORWARD_MIN_BLOCKS[torch.float32] > 0
    assert _uvu.forward_min_blocks(spec_large, torch.float32) == 0
    source = _uvu_codegen.forward_source(spec_medium, "float", 2, 5, True)
    assert "__launch_bounds__(THREADS, 5) bm_uvu_fwd" in source and "__ldcs(we + " in source
    assert "__ldcs" not in _uvu_codegen.forward_source(spec_medium, "float", 2, 5, False)
    assert "__launch_bounds__(THREADS, 3) bm_uvu_bwd" in _uvu_codegen.backward_source(spec_medium, "float", False, 3)
    dbl = _uvu_dbl_codegen.double_backward_source(spec_medium, "float", (True, True, True), True, min_blocks=4)
    assert "__launch_bounds__(THREADS, 4) bm_uvu_dbl" in dbl



@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_tuned_blocks_per_mode_reach_the_compiled_sources(monkeypatch, dtype):
    """``kernels_for`` compiles each kernel with its mode's entry of the tuning dicts (the backward's by whether the
    input-1 gradient is atomic, the double backward's likewise), capped problems only (MACE-MP-large: ptxas'
    choice)."""
    from batmobile_nn import _uvu

    compiled = {}
    monkeypatch.setattr(_uvu, "_compile", lambda source, name, device: compiled.setdefault(
        (name, len(compiled)), source) and len(compiled))
    monkeypatch.setattr(_uvu, "_cache", {})
    monkeypatch.setattr(_uvu, "BACKWARD_MIN_BLOCKS", {(dtype, False): 2, (dtype, True): 6})
    monkeypatch.setattr(_uvu, "DOUBLE_BACKWARD_MIN_BLOCKS", {(dtype, False): 7, (dtype, True): 3})
    device = torch.device("cuda", 0)  # a cache key only: _compile is stubbed
    for problem, capped in ((MACE_PROBLEMS[1], True), (MACE_PROBLEMS[2], False)):
        compiled.clear()
        plan = problem.plan()
        kernels = _uvu.kernels_for(plan.plan_list, plan.cg_list, dtype, device, True)
        kernels.backward_atomic, kernels.double_backward((True, True, True), False)
        kernels.double_backward((True, True, True), True)
        bounds = [re.search(r"__launch_bounds__\(([^)]*)\) (bm_uvu_\w+)", source).groups()
                  for source in compiled.values()]
        expected = ["THREADS, 2", "THREADS, 6", "THREADS, 7", "THREADS, 3"] if capped else ["THREADS"] * 4
        assert [b for b, name in bounds if name != "bm_uvu_fwd"] == expected
        assert [name for _, name in bounds] == ["bm_uvu_fwd", "bm_uvu_bwd", "bm_uvu_bwd", "bm_uvu_dbl", "bm_uvu_dbl"]


def test_fused_double_backward_only_within_its_register_budget(monkeypatch):
    """A problem above ``MAX_FUSED_DBL_OUT`` keeps its forward and backward kernels but not the fused double backward
    (MACE-MP-large in float64: 71 outputs a thread, whose fused kernel spills 19.5 KB); the others fuse it."""
    from batmobile_nn import _uvu

    monkeypatch.setattr(_uvu, "_compile", lambda source, name, device: 1)
    monkeypatch.setattr(_uvu, "_cache", type(_uvu._cache)())
    device = torch.device("cuda", 0)  # a cache key only: _compile is stubbed
    fused = {}
    for problem in MACE_PROBLEMS[1:3]:
        plan = problem.plan()
        for dtype in (torch.float32, torch.float64):
            kernels = _uvu.kernels_for(plan.plan_list, plan.cg_list, dtype, device, True)
            fused[(str(problem), str(dtype))] = kernels.fuses_double_backward
    assert fused == {("mace-mp-medium", "torch.float32"): True, ("mace-mp-medium", "torch.float64"): True,
                     ("mace-mp-large", "torch.float32"): True, ("mace-mp-large", "torch.float64"): False}
