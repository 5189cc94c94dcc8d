"""The shared problem sets (``tests/problems.py``): the local copy of MACE's instruction builder equals
MACE's, and the random problems have the features they promise."""

import problems
import pytest
from e3nn import o3
from problems import (
    IRREPS_SH,
    MACE_NODE_IRREPS,
    MACE_PROBLEMS,
    RANDOM_PROBLEMS,
    local_tp_out_irreps_with_instructions,
    mace_target_irreps,
    random_problem,
    scaled,
)


@pytest.mark.parametrize("name", list(MACE_NODE_IRREPS) + ["scalars-only-target", "hidden-0o"])
def test_local_builder_equals_mace(name):
    mace_irreps_tools = pytest.importorskip("mace.modules.irreps_tools")
    if name == "scalars-only-target":
        irreps_node, target = o3.Irreps("16x0e+16x1o+16x2e"), o3.Irreps("16x0e")
    elif name == "hidden-0o":
        irreps_node, target = o3.Irreps("8x0e+8x0o+8x1o+8x1e"), mace_target_irreps(8, o3.Irreps("0e+0o+1o+1e+2e+2o"))
    else:
        irreps, num_features = MACE_NODE_IRREPS[name]
        irreps_node, target = o3.Irreps(irreps), mace_target_irreps(num_features)
    theirs = mace_irreps_tools.tp_out_irreps_with_instructions(irreps_node, IRREPS_SH, target)
    ours = local_tp_out_irreps_with_instructions(irreps_node, IRREPS_SH, target)
    assert ours[0] == theirs[0] and list(ours[1]) == list(theirs[1])


def test_mace_problems_are_macemp_shapes():
    small, medium, large, first = MACE_PROBLEMS
    assert str(mace_target_irreps(128)) == "128x0e+128x1o+128x2e+128x3o"
    assert (small.plan().weight_numel, medium.plan().weight_numel, large.plan().weight_numel) == (640, 1280, 2176)
    assert len(large.instructions) == 17 and len(first.instructions) == 4
    for problem in MACE_PROBLEMS:
        assert problem.irreps_in2 == o3.Irreps("1x0e+1x1o+1x2e+1x3o")
        assert all(ins[3:] == ("uvu", True) for ins in problem.instructions)
        assert problem.irreps_out == problem.irreps_out.sort()[0]  # MACE sorts the output irreps


def test_builder_without_mace(monkeypatch):
    """The e3nn 0.6 environment has no mace: the problems come from the local builder, unchanged."""
    monkeypatch.setitem(__import__("sys").modules, "mace.modules.irreps_tools", None)
    for problem in MACE_PROBLEMS:
        rebuilt = problems.mace_problem(problem.name, str(problem.irreps_in1), problem.irreps_out[0].mul)
        assert rebuilt == problem


@pytest.mark.parametrize("problem", RANDOM_PROBLEMS, ids=str)
def test_random_problems_have_their_features(problem):
    instructions = problem.instructions
    mode = problem.name.split("-")[1]
    assert {ins[3] for ins in instructions} == ({"uvu", "uvw"} if mode == "mixed" else {mode})
    in2_muls = {problem.irreps_in2[ins[1]].mul for ins in instructions}
    assert 1 in in2_muls and max(in2_muls) > 1
    assert max(sum(ins[2] == k for ins in instructions) for k in range(len(problem.irreps_out))) > 1
    if mode != "uvw":
        assert any(not ins[4] for ins in instructions)
    problem.plan()  # e3nn accepts it


def test_random_problems_are_reproducible_and_distinct():
    assert random_problem(0, "uvu") == random_problem.__wrapped__(0, "uvu")
    assert random_problem(0, "uvu").instructions != random_problem(1, "uvu").instructions
    with pytest.raises(ValueError, match="mode must be"):
        random_problem(0, "uuu")


def test_scaled():
    problem = scaled(MACE_PROBLEMS[2], 2)
    assert problem.irreps_in1 == o3.Irreps("2x0e+2x1o+2x2e") and problem.instructions == MACE_PROBLEMS[2].instructions
    assert problem.plan().weight_numel == 2 * len(problem.instructions)
    mixed = random_problem(0, "mixed")  # with every multiplicity 1 each weighted path has one weight
    assert scaled(mixed, 1).plan().weight_numel == sum(1 for ins in mixed.instructions if ins[4])
