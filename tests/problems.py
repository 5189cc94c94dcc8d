"""Tensor-product problems for the tests: MACE-MP's convolutions and seeded random irreps.

``MACE_PROBLEMS`` are the ``conv_tp`` of MACE-MP small, medium and large (node irreps ``64x0e+64x1o``,
``128x0e+128x1o``, ``128x0e+128x1o+128x2e``) and of a first layer (``128x0e`` node input), with spherical
harmonics to l = 3 and MACE's own instruction builder (``tp_out_irreps_with_instructions``) and target
irreps (``(sh_irreps * num_features).sort()[0].simplify()``, mace/modules/models.py). Without mace (the
e3nn 0.6 environment) a local copy of the builder is used; ``tests/ops/test_problems.py`` checks that it
equals MACE's. ``random_problem(seed, mode)`` draws uvu, uvw or mixed problems with in2 multiplicities
above one, paths without weights and several paths into one output slot; ``scaled`` shrinks any
problem for slow checks (gradcheck).

>>> p = scaled(MACE_PROBLEMS[1], max_mul=2)
>>> p.irreps_in1, p.plan().weight_numel
(2x0e+2x1o, 20)
"""

import random  # noqa: I001  (batmobile_nn must come before e3nn: see below)
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import List, Tuple

import torch

import batmobile_nn  # noqa: F401  (sets TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD before e3nn 0.4.4 loads)
from batmobile_nn.ops import TPPlan, make_plan
from e3nn import o3

IRREPS_SH = o3.Irreps.spherical_harmonics(3)


@dataclass(frozen=True)
class Problem:
    """A tensor product given as e3nn's constructor arguments (instructions as 5-tuples)."""

    name: str
    irreps_in1: o3.Irreps
    irreps_in2: o3.Irreps
    irreps_out: o3.Irreps
    instructions: Tuple[tuple, ...]

    def plan(self) -> TPPlan:
        return make_plan(self.irreps_in1, self.irreps_in2, self.irreps_out, list(self.instructions))

    def e3nn(self, dtype: torch.dtype, shared_weights: bool = False) -> o3.TensorProduct:
        """e3nn's ``o3.TensorProduct`` built under ``dtype`` as default dtype (its constants' dtype), cached."""
        return _e3nn_tensor_product(self, dtype, shared_weights)

    def __str__(self) -> str:
        return self.name


@contextmanager
def default_dtype(dtype: torch.dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


@lru_cache(maxsize=None)
def _e3nn_tensor_product(problem: Problem, dtype: torch.dtype, shared_weights: bool) -> o3.TensorProduct:
    with default_dtype(dtype):
        return o3.TensorProduct(problem.irreps_in1, problem.irreps_in2, problem.irreps_out,
                                list(problem.instructions), shared_weights=shared_weights, internal_weights=False)


def local_tp_out_irreps_with_instructions(irreps1: o3.Irreps, irreps2: o3.Irreps,
                                          target_irreps: o3.Irreps) -> Tuple[o3.Irreps, List[tuple]]:
    """MACE's ``tp_out_irreps_with_instructions`` (mace/modules/irreps_tools.py), for when mace is absent."""
    irreps_out_list, instructions = [], []
    for i, (mul, ir_in) in enumerate(irreps1):
        for j, (_, ir_edge) in enumerate(irreps2):
            for ir_out in ir_in * ir_edge:
                if ir_out in target_irreps:
                    instructions.append((i, j, len(irreps_out_list), "uvu", True))
                    irreps_out_list.append((mul, ir_out))
    irreps_out, permutation, _ = o3.Irreps(irreps_out_list).sort()
    instructions = [(i1, i2, permutation[i_out], mode, train) for i1, i2, i_out, mode, train in instructions]
    return irreps_out, sorted(instructions, key=lambda ins: ins[2])


def tp_out_irreps_with_instructions(irreps1, irreps2, target_irreps):
    """MACE's builder when mace is installed, else the local copy."""
    try:
        from mace.modules.irreps_tools import tp_out_irreps_with_instructions as builder
    except ImportError:
        builder = local_tp_out_irreps_with_instructions
    return builder(o3.Irreps(irreps1), o3.Irreps(irreps2), o3.Irreps(target_irreps))


def mace_target_irreps(num_features: int, irreps_sh: o3.Irreps = IRREPS_SH) -> o3.Irreps:
    """``interaction_irreps`` of mace/modules/models.py (hidden irreps without ``0o``)."""
    return (irreps_sh * num_features).sort()[0].simplify()


def mace_problem(name: str, irreps_node: str, num_features: int, builder=tp_out_irreps_with_instructions) -> Problem:
    irreps_node = o3.Irreps(irreps_node)
    irreps_mid, instructions = builder(irreps_node, IRREPS_SH, mace_target_irreps(num_features))
    return Problem(name, irreps_node, IRREPS_SH, o3.Irreps(irreps_mid), tuple(tuple(i) for i in instructions))


MACE_NODE_IRREPS = {  # name: (node irreps entering conv_tp, num_features)
    "mace-mp-small": ("64x0e+64x1o", 64),
    "mace-mp-medium": ("128x0e+128x1o", 128),
    "mace-mp-large": ("128x0e+128x1o+128x2e", 128),
    "mace-mp-first-layer": ("128x0e", 128),
}
MACE_PROBLEMS = [mace_problem(name, *args) for name, args in MACE_NODE_IRREPS.items()]


def _random_irreps(rng: random.Random, count: int, muls: Tuple[int, ...], l_max: int) -> o3.Irreps:
    return o3.Irreps([(rng.choice(muls), (rng.randint(0, l_max), rng.choice((1, -1)))) for _ in range(count)])


def _draw(rng: random.Random, mode: str) -> Problem:
    irreps_in1 = _random_irreps(rng, rng.randint(2, 3), (1, 2, 3, 4), 2)
    irreps_in2 = _random_irreps(rng, rng.randint(2, 3), (1, 2, 3), 2)
    slots: List[Tuple[int, o3.Irrep]] = []
    instructions = []
    for i1, (mul1, ir1) in enumerate(irreps_in1):
        for i2, (mul2, ir2) in enumerate(irreps_in2):
            for ir_out in ir1 * ir2:
                if rng.random() < 0.5:
                    continue
                path_mode = mode if mode != "mixed" else rng.choice(("uvu", "uvw"))
                mul_out = mul1 if path_mode == "uvu" else rng.randint(1, 3)
                shared = [k for k, slot in enumerate(slots) if slot == (mul_out, ir_out)]
                if shared and rng.random() < 0.6:
                    i_out = rng.choice(shared)
                else:
                    i_out = len(slots)
                    slots.append((mul_out, ir_out))
                has_weight = path_mode == "uvw" or rng.random() < 0.7
                instructions.append((i1, i2, i_out, path_mode, has_weight))
    return Problem("", irreps_in1, irreps_in2, o3.Irreps(slots), tuple(instructions))


def _has_features(problem: Problem, mode: str) -> bool:
    ins = problem.instructions
    if len(ins) < 3:
        return False
    in2_muls = {problem.irreps_in2[i[1]].mul for i in ins}
    slot_counts = [sum(1 for i in ins if i[2] == k) for k in range(len(problem.irreps_out))]
    modes = {i[3] for i in ins}
    needs_no_weight = mode in ("uvu", "mixed")
    return (max(in2_muls) > 1 and 1 in in2_muls and max(slot_counts) > 1
            and (not needs_no_weight or any(not i[4] for i in ins))
            and (mode != "mixed" or modes == {"uvu", "uvw"}))


@lru_cache(maxsize=None)
def random_problem(seed: int, mode: str = "uvu") -> Problem:
    """A random problem (``mode`` ``"uvu"``, ``"uvw"`` or ``"mixed"``), the same for the same seed.

    It always has paths with in2 multiplicity 1 and above 1, an output slot fed by several paths, and
    (uvu, mixed) paths without weights.
    """
    if mode not in ("uvu", "uvw", "mixed"):
        raise ValueError(f"mode must be 'uvu', 'uvw' or 'mixed', got {mode!r}")
    rng = random.Random(f"{mode}-{seed}")
    while True:
        problem = _draw(rng, mode)
        if _has_features(problem, mode):
            return Problem(f"random-{mode}-{seed}", problem.irreps_in1, problem.irreps_in2, problem.irreps_out,
                           problem.instructions)


RANDOM_PROBLEMS = [random_problem(seed, mode) for mode in ("uvu", "uvw", "mixed") for seed in (0, 1)]

# Hand-written corner cases: an in1 irrep no path reads (1x1e), an output slot no path writes (2x2e),
# a uvu path without weights and in2 multiplicity 2, and two paths into one slot.
GAPS_PROBLEM = Problem("gaps", o3.Irreps("2x0e+3x1o+2x2e+1x1e"), o3.Irreps("2x0e+1x1o"),
                       o3.Irreps("2x1o+3x1o+4x0e+2x2e"),
                       ((0, 1, 0, "uvu", True), (2, 1, 0, "uvu", True), (1, 0, 1, "uvu", False),
                        (1, 1, 2, "uvw", True)))


def scaled(problem: Problem, max_mul: int = 2) -> Problem:
    """The same problem with every multiplicity capped at ``max_mul`` (instructions unchanged)."""
    def cap(irreps):
        return o3.Irreps([(min(mul, max_mul), ir) for mul, ir in irreps])
    return Problem(f"{problem.name}-x{max_mul}", cap(problem.irreps_in1), cap(problem.irreps_in2),
                   cap(problem.irreps_out), problem.instructions)
