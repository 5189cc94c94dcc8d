"""Problems and comparison helpers for the e3nn-shaped module tests (``tests/o3``, ``tests/nn``).

Problems come from ``tests/problems.py`` (MACE-MP's convolutions, built with MACE's instruction builder
or its local copy without mace; seeded random irreps) plus one hand-written list of corner cases.
"""

from typing import Dict, List, Tuple

import e3nn
import pytest
import torch
from e3nn import o3
from problems import GAPS_PROBLEM, MACE_PROBLEMS, Problem, random_problem, scaled


@pytest.fixture(autouse=True, scope="module")
def e3nn_modules_unscripted():
    """Build e3nn's tensor products without TorchScript-compiling their generated code: the same
    operations, several times faster to construct (most of these tests' time otherwise). Per test
    module, so that the global e3nn setting is back to its value for the other test directories."""
    previous = e3nn.get_optimization_defaults()["jit_script_fx"]
    e3nn.set_optimization_defaults(jit_script_fx=False)
    yield
    e3nn.set_optimization_defaults(jit_script_fx=previous)


# max |actual - expected| <= TOL * max(1, max |expected|): a few hundred ulps of each dtype's accumulations
TOL = {torch.float32: 1e-5, torch.float64: 1e-12}


def assert_close(actual: torch.Tensor, expected: torch.Tensor, what: str = "") -> None:
    """Same shape and dtype, and equal up to ``TOL[dtype]`` relative to the largest expected entry."""
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    scale = max(1.0, expected.detach().abs().max().item()) if expected.numel() else 1.0
    error = (actual.detach() - expected.detach()).abs().max().item() if expected.numel() else 0.0
    assert error <= TOL[expected.dtype] * scale, f"{what}: max error {error:.3e} (scale {scale:.3e})"


def _arguments(problem: Problem) -> Tuple[o3.Irreps, o3.Irreps, o3.Irreps, List[tuple]]:
    return problem.irreps_in1, problem.irreps_in2, problem.irreps_out, list(problem.instructions)


# (irreps_in1, irreps_in2, irreps_out, instructions): e3nn's constructor arguments
PROBLEMS: Dict[str, Tuple] = {
    # MACE-MP small's conv_tp (MACE's instruction builder) with 3 channels
    "mace-mp-small-x3": _arguments(scaled(MACE_PROBLEMS[0], max_mul=3)),
    # uvw and uvu, a path without weights, an explicit path weight (6-tuple), an output no path reaches
    "mixed": ("2x0e+2x1o+1x2e", "1x0e+1x1o", "3x0e+2x1o+2x1e+2x2e+2x3o+1x0o", [
        (0, 0, 0, "uvw", True), (1, 1, 0, "uvw", True), (1, 0, 1, "uvu", False), (0, 1, 1, "uvw", True),
        (1, 1, 2, "uvw", True, 0.5), (2, 1, 4, "uvw", True), (2, 0, 3, "uvw", True), (1, 1, 3, "uvu", True)]),
    # an in1 irrep no path reads, an output no path writes, in2 multiplicity 2
    "gaps": _arguments(GAPS_PROBLEM),
    # seeded random irreps (l <= 2, both parities, in2 multiplicities above one, shared output slots)
    "random-mixed-0": _arguments(random_problem(0, "mixed")),
    "random-uvu-0": _arguments(random_problem(0, "uvu")),
}
# the real models' problems (64-128 channels): values and first derivatives only
MACE_MP = {problem.name: _arguments(problem) for problem in MACE_PROBLEMS}


def random_inputs(irreps_in1, irreps_in2, weight_numel: int, batch: Tuple[int, ...], shared: bool,
                  requires_grad: bool = False):
    """``x [*batch, dim1]``, ``y [*batch, dim2]``, ``w [*batch, weight_numel]`` (``[weight_numel]`` if shared)."""
    x = torch.randn(*batch, o3.Irreps(irreps_in1).dim, requires_grad=requires_grad)
    y = torch.randn(*batch, o3.Irreps(irreps_in2).dim, requires_grad=requires_grad)
    w = torch.randn(weight_numel) if shared else torch.randn(*batch, weight_numel)
    return x, y, w.requires_grad_(requires_grad)


# ---- eager vs TorchScript vs torch.compile ------------------------------------------------------------

MODES = ["script", "compile-eager", "compile-aot_eager"]
# (mode, dtype) cases: aot_eager traces the same graph in either dtype, so it runs in float64 only (time)
MODE_CASES = [pytest.param(mode, dtype, id=f"{mode}-{str(dtype)[-7:]}") for mode in MODES
              for dtype in (torch.float32, torch.float64) if mode != "compile-aot_eager" or dtype == torch.float64]


def transform(module: torch.nn.Module, mode: str):
    """The module scripted (``"script"``) or compiled with ``fullgraph=True`` (``"compile-<backend>"``)."""
    if mode == "script":
        return torch.jit.script(module)
    return torch.compile(module, fullgraph=True, backend=mode.split("-", 1)[1])


def _cotangents(shapes, dtype, seed: int = 0) -> List[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=generator, dtype=dtype) for shape in shapes]


def _out_and_forces(fn, cotangent: torch.Tensor):
    """``inputs -> (fn(*inputs), d<fn(*inputs), cotangent>/d inputs)`` with the graph kept, like a force field."""
    def out_and_forces(*inputs):
        out = fn(*inputs)
        return (out, *torch.autograd.grad((out * cotangent).sum(), inputs, create_graph=True))
    return out_and_forces


def _with_second(results, params: List[torch.Tensor], cotangents: List[torch.Tensor]) -> List[torch.Tensor]:
    loss = sum((g * c).sum() for g, c in zip(results[1:], cotangents))
    return [*results, *torch.autograd.grad(loss, params, allow_unused=True, materialize_grads=True)]


def _first(fn, inputs: List[torch.Tensor], cotangent_seed: int = 0) -> List[torch.Tensor]:
    out = fn(*inputs)
    cotangent, = _cotangents([out.shape], out.dtype, cotangent_seed)
    return [out, *torch.autograd.grad((out * cotangent).sum(), inputs)]


def check_modes(module: torch.nn.Module, mode: str, inputs: List[torch.Tensor], params: List[torch.Tensor],
                other_inputs: List[torch.Tensor], double_backward: bool = True) -> None:
    """``module`` under ``mode`` equals eager: values, derivatives w.r.t. ``inputs``, the derivatives of a loss
    of those w.r.t. ``params`` (forces-style double backward), and values and derivatives on ``other_inputs``
    (other leading sizes: a recompile with dynamic shapes). ``double_backward=False`` checks values and first
    derivatives only.

    aot_autograd (every backend but "eager") does not differentiate a compiled graph twice, so there the
    double backward compiles the function that returns the first derivatives, as a compiled force field does.
    """
    compiled = transform(module, mode)
    if not double_backward:
        expected, actual = _first(module, inputs), _first(compiled, inputs)
    else:
        out = module(*inputs)
        cotangent, *second_cotangents = _cotangents([out.shape] + [x.shape for x in inputs], out.dtype)
        expected = _with_second(_out_and_forces(module, cotangent)(*inputs), params, second_cotangents)
        if mode in ("script", "compile-eager"):
            actual = _with_second(_out_and_forces(compiled, cotangent)(*inputs), params, second_cotangents)
        else:
            for i, (mine, theirs) in enumerate(zip(_first(compiled, inputs), _first(module, inputs))):
                assert_close(mine, theirs, f"{mode}: compiled module, output {i}")
            with torch._dynamo.config.patch(trace_autograd_ops=True):
                backend = mode.split("-", 1)[1]
                forces = torch.compile(_out_and_forces(module, cotangent), fullgraph=True, backend=backend)
                actual = _with_second(forces(*inputs), params, second_cotangents)
    assert len(actual) == len(expected) == 1 + len(inputs) + (len(params) if double_backward else 0)
    for i, (mine, theirs) in enumerate(zip(actual, expected)):
        assert_close(mine, theirs, f"{mode}: output {i}")
    for i, (mine, theirs) in enumerate(zip(_first(compiled, other_inputs), _first(module, other_inputs))):
        assert_close(mine, theirs, f"{mode}: other sizes, output {i}")
