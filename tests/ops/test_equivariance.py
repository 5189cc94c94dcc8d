"""Equivariance under rotations and parity: rotating the inputs (e3nn's ``D_from_matrix``) rotates the
outputs, for the spherical harmonics, the tensor product and the convolution, and the gradient of an
invariant (MACE's forces) rotates like the edge vectors."""

import math

import pytest
import torch
from e3nn import o3
from problems import GAPS_PROBLEM, IRREPS_SH, MACE_PROBLEMS, RANDOM_PROBLEMS, default_dtype

from batmobile_nn.ops import conv, spherical_harmonics, tensor_product

from ._compare import assert_close, randn
from ._graphs import random_graph

LS = [0, 1, 2, 3]


def _orthogonal(seed: int, parity: bool) -> torch.Tensor:
    """A random rotation (times -1 for an improper one), float64 ``[3, 3]``."""
    generator = torch.Generator().manual_seed(seed)
    alpha, gamma = 2 * math.pi * torch.rand(2, generator=generator, dtype=torch.float64)
    beta = torch.arccos(1 - 2 * torch.rand((), generator=generator, dtype=torch.float64))
    R = o3.angles_to_matrix(alpha, beta, gamma)
    return -R if parity else R


def test_blockwise_rotation_is_e3nns():
    R, irreps = _orthogonal(1, True), o3.Irreps("2x0e+1x1o+2x2e+1x3o")
    x = randn([(4, irreps.dim)], torch.float64, 0)[0]
    with default_dtype(torch.float64):
        torch.testing.assert_close(_rotate(x, irreps, R), x @ irreps.D_from_matrix(R).T, rtol=1e-12, atol=1e-12)


def _rotate(x: torch.Tensor, irreps: o3.Irreps, R: torch.Tensor) -> torch.Tensor:
    """``x @ irreps.D_from_matrix(R).T``, one irrep block at a time (the full matrix is slow to build)."""
    blocks, start = [], 0
    for mul, ir in irreps:
        block = x[:, start:start + mul * ir.dim].reshape(-1, mul, ir.dim)  # [n, mul, 2l+1]
        blocks.append((block @ ir.D_from_matrix(R).to(x.dtype).T).reshape(x.shape[0], mul * ir.dim))
        start += mul * ir.dim
    return torch.cat(blocks, dim=1)


def _assert_rotated(out_rotated, out, irreps_out, R, dtype, what):
    expected = _rotate(out.double(), irreps_out, R)
    assert_close(out_rotated, expected, dtype, what)


PARITY = pytest.mark.parametrize("parity", [False, True], ids=["rotation", "inversion"])


@PARITY
@pytest.mark.parametrize("normalize", [True, False])
def test_spherical_harmonics(parity, normalize, default_dtype):
    dtype = default_dtype  # e3nn 0.6 builds its Wigner matrices in the default dtype
    R = _orthogonal(0, parity)
    vectors = randn([(20, 3)], dtype, 1)[0]
    sh = spherical_harmonics(vectors, LS, normalize, "component")
    sh_rotated = spherical_harmonics(vectors @ R.to(dtype).T, LS, normalize, "component")
    _assert_rotated(sh_rotated, sh, IRREPS_SH, R, dtype, "spherical harmonics")


@PARITY
@pytest.mark.parametrize("problem", MACE_PROBLEMS[1:3] + [RANDOM_PROBLEMS[5], GAPS_PROBLEM], ids=str)
def test_tensor_product(problem, parity, default_dtype):
    dtype = default_dtype  # e3nn 0.6 builds its Wigner matrices in the default dtype
    R, plan = _orthogonal(2, parity), problem.plan()
    in1, in2, weight = randn([(8, problem.irreps_in1.dim), (8, problem.irreps_in2.dim), (8, plan.weight_numel)],
                             dtype, 3)
    out = tensor_product(in1, in2, weight, plan.plan_list, plan.cg_list)
    out_rotated = tensor_product(_rotate(in1, problem.irreps_in1, R), _rotate(in2, problem.irreps_in2, R), weight,
                                 plan.plan_list, plan.cg_list)
    _assert_rotated(out_rotated, out, problem.irreps_out, R, dtype, str(problem))


@PARITY
@pytest.mark.parametrize("problem", [MACE_PROBLEMS[0], MACE_PROBLEMS[3], RANDOM_PROBLEMS[4]], ids=str)
def test_conv(problem, parity, default_dtype):
    dtype = default_dtype  # e3nn 0.6 builds its Wigner matrices in the default dtype
    R, plan = _orthogonal(4, parity), problem.plan()
    sender, receiver = random_graph(6, 15, seed=5)
    node_feats, edge_attrs, weight = randn([(6, problem.irreps_in1.dim), (15, problem.irreps_in2.dim),
                                            (15, plan.weight_numel)], dtype, 6)

    def run(x, y):
        return conv(x, y, weight, sender, receiver, None, plan.plan_list, plan.cg_list, False)

    out_rotated = run(_rotate(node_feats, problem.irreps_in1, R), _rotate(edge_attrs, problem.irreps_in2, R))
    _assert_rotated(out_rotated, run(node_feats, edge_attrs), problem.irreps_out, R, dtype, str(problem))


@PARITY
def test_forces_of_an_invariant_energy(parity, default_dtype):
    dtype = default_dtype  # e3nn 0.6 builds its Wigner matrices in the default dtype
    """MACE's pattern: edge vectors -> harmonics -> convolution -> invariant energy; its gradient with
    respect to the vectors (through both backward ops) rotates with the vectors."""
    problem = MACE_PROBLEMS[0]
    R, plan = _orthogonal(7, parity), problem.plan()
    sender, receiver = random_graph(6, 15, seed=8)
    vectors, node_feats, weight = randn([(15, 3), (6, problem.irreps_in1.dim), (15, plan.weight_numel)], dtype, 9)

    def forces(vectors, node_feats):
        vectors = vectors.detach().requires_grad_(True)
        sh = spherical_harmonics(vectors, LS, True, "component")
        out = conv(node_feats, sh, weight, sender, receiver, None, plan.plan_list, plan.cg_list, False)
        energy = out.square().sum()  # invariant: every D is orthogonal
        return torch.autograd.grad(energy, vectors)[0]  # [n_edges, 3]

    expected = forces(vectors, node_feats).double() @ R.T
    rotated = forces(vectors @ R.to(dtype).T, _rotate(node_feats, problem.irreps_in1, R))
    assert_close(rotated, expected, dtype, "forces")
