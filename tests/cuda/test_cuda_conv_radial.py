"""``ops.conv_radial`` on the GPU (the weights from a matrix product or made inside the uvu kernel) against the reference path
of the separate layers in float64: MACE-MP-medium's convolution, both modes, values, first and second derivatives
(the whole model on the GPU: tests/mace_backend/test_fusion.py)."""

import pytest
import torch
from problems import MACE_PROBLEMS

from batmobile_nn import _backend, _uvu, reference
from batmobile_nn.ops import conv_radial

from cuda_cases import compare, randn, random_graph

pytestmark = pytest.mark.cuda

N_NODES, N_EDGES, HIDDEN, ALPHA = 40, 900, 64, 0.125


@pytest.mark.parametrize("in_kernel", [False, True], ids=["matmul-then-conv", "weights-in-kernel"])
@pytest.mark.parametrize("deterministic", [False, True], ids=["atomic", "deterministic"])
def test_matches_the_separate_layers(deterministic, in_kernel, dtype, monkeypatch):
    """Both forwards: the weights from a matrix product, or made inside the uvu kernel (``_uvu.RADIAL_IN_KERNEL``,
    ``_uvu_radial_codegen``; it must run when asked for)."""
    monkeypatch.setattr(_uvu, "RADIAL_IN_KERNEL", in_kernel)
    launched = []
    original = _uvu.forward_radial
    monkeypatch.setattr(_uvu, "forward_radial", lambda *args: launched.append(1) or original(*args))
    problem = MACE_PROBLEMS[1]  # MACE-MP-medium's convolution: the per-problem uvu kernels
    plan = problem.plan()
    sender, receiver = random_graph(N_NODES, N_EDGES, seed=3, sort_by_receiver=deterministic)
    raw = randn([(N_NODES, problem.irreps_in1.dim), (N_EDGES, problem.irreps_in2.dim), (N_EDGES, HIDDEN),
                 (HIDDEN, plan.weight_numel)], torch.float64, 4)
    raw[3] = raw[3] / HIDDEN ** 0.5

    def ours(node_feats, edge_attrs, hidden, radial_weight):
        return conv_radial(node_feats, edge_attrs, hidden, radial_weight, ALPHA, sender, receiver, None,
                           plan.plan_list, plan.cg_list, deterministic)

    def separate(node_feats, edge_attrs, hidden, radial_weight):
        return reference.conv(node_feats, edge_attrs, ALPHA * hidden @ radial_weight, sender, receiver,
                              plan.plan_list, plan.cg_list)
    compare(ours, separate, raw, dtype, f"conv_radial {problem}")
    assert bool(launched) == in_kernel
    assert "conv_radial" in _backend.KERNELS.get("cuda", {}), "the CUDA kernels did not load (reference path)"

