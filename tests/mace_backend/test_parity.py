"""Patched against stock MACE: energies, forces and stress, over architectures and block classes.

Each case builds one tiny model and runs it on a batch of a periodic structure (rattled Cu/Al fcc) and
a molecule (rattled ethanol) made by mace's data pipeline: stock float64, patched float64 (1e-10
relative), then the patched model converted to float32 against the stock float32 model (1e-5).
Relative error = max |patched - stock| / max |stock| per quantity. On the CPU (the reference path);
``-m cuda`` repeats four cases on the GPU.
"""

import pytest
import torch

pytest.importorskip("mace")

import batmobile_nn  # noqa: E402
from batmobile_nn.patches import is_patched  # noqa: E402
from mace_cases import (assert_outputs_close, build_model, bulk_structure, evaluate, make_batch,  # noqa: E402
                        molecule_structure)

TOL = {torch.float64: 1e-10, torch.float32: 1e-5}

ARCHITECTURES = {
    # hidden irreps up to l = 2, max_ell 1-3, correlation 1-3, 2 and 3 interactions, (non-)residual first block
    "scalar-ell1-corr1-nonresidual": dict(hidden_irreps="8x0e", max_ell=1, correlation=1,
                                          first="RealAgnosticInteractionBlock"),
    "l1-ell2-corr2-scaleshift": dict(hidden_irreps="8x0e+8x1o", max_ell=2, correlation=2, scale_shift=True),
    "l2-ell2-corr3": dict(hidden_irreps="4x0e+4x1o+4x2e", max_ell=2, correlation=3),
    "l2-ell3-corr1-3int-nonresidual": dict(hidden_irreps="4x0e+4x1o+4x2e", max_ell=3, correlation=1,
                                           num_interactions=3, first="RealAgnosticInteractionBlock"),
    "multihead-scaleshift": dict(hidden_irreps="4x0e+4x1o", scale_shift=True, heads=["pbe", "mp"]),
    # the other interaction block classes of mace-torch 0.3.16
    "density": dict(hidden_irreps="4x0e+4x1o", interaction="RealAgnosticDensityInteractionBlock"),
    "density-residual": dict(hidden_irreps="4x0e+4x1o", interaction="RealAgnosticDensityResidualInteractionBlock"),
    "attention-residual": dict(hidden_irreps="4x0e+4x1o", interaction="RealAgnosticAttResidualInteractionBlock"),
    "residual-nonlinear": dict(hidden_irreps="4x0e+4x1o", interaction="RealAgnosticResidualNonLinearInteractionBlock"),
}


def _batch(dtype, heads=None, device="cpu"):
    return make_batch([bulk_structure(), molecule_structure()], dtype=dtype, heads=heads,
                      head=heads[-1] if heads else None).to(device)


def _conv_types(model):
    return {type(block.conv_tp).__name__ for block in model.interactions}


def _check_parity(arch, device):
    model = build_model(**arch).to(device)
    heads = arch.get("heads")
    batch64, batch32 = _batch(torch.float64, heads, device), _batch(torch.float32, heads, device)
    stock64 = evaluate(model, batch64)
    assert stock64["forces"].abs().max() > 1e-3  # a model whose forces vanish would compare nothing

    batmobile_nn.patch(model)
    assert is_patched(model) and _conv_types(model) == {"EquivariantConv"}
    assert_outputs_close(evaluate(model, batch64), stock64, TOL[torch.float64])

    model.float()  # converting a patched model, then unpatching it, gives the stock float32 model
    patched32 = evaluate(model, batch32)
    batmobile_nn.unpatch(model)
    assert _conv_types(model) == {"TensorProduct"}
    assert_outputs_close(patched32, evaluate(model, batch32), TOL[torch.float32])


@pytest.mark.parametrize("arch", ARCHITECTURES.values(), ids=ARCHITECTURES.keys())
def test_patched_equals_stock(arch):
    _check_parity(arch, "cpu")


CUDA_CASES = ["l2-ell2-corr3", "l2-ell3-corr1-3int-nonresidual", "multihead-scaleshift", "attention-residual"]


@pytest.mark.cuda
@pytest.mark.parametrize("arch", [ARCHITECTURES[name] for name in CUDA_CASES], ids=CUDA_CASES)
def test_patched_equals_stock_cuda(arch):
    """The same checks on the GPU (the CUDA kernels where they are built)."""
    _check_parity(arch, "cuda")


def test_model_built_in_float32_run_in_float64():
    """e3nn keeps float32-rounded Wigner 3j buffers in a model built in float32 and converted to float64;
    the patched model uses those very coefficients, so it agrees to rounding (exact coefficients would
    differ by ~3e-11 here: the tolerance is tight on purpose)."""
    model = build_model(hidden_irreps="4x0e+4x1o", max_ell=2, correlation=3, dtype=torch.float32).double()
    batch = _batch(torch.float64)
    stock = evaluate(model, batch)
    assert_outputs_close(evaluate(batmobile_nn.patch(model), batch), stock, 1e-13)


def test_forces_are_minus_the_energy_gradient():
    """Forces of the patched model against central finite differences of its energy (float64)."""
    model = batmobile_nn.patch(build_model(hidden_irreps="4x0e+4x1o+4x2e", max_ell=2, correlation=2))
    batch = _batch(torch.float64)
    forces = evaluate(model, batch)["forces"]  # [n_atoms, 3]
    step = 1e-5
    for atom, axis in [(0, 0), (5, 2), (9, 1), (14, 0)]:  # bulk and molecule atoms
        energies = []
        for sign in (1.0, -1.0):
            moved = batch.clone()
            moved["positions"] = moved["positions"].clone()
            moved["positions"][atom, axis] += sign * step
            energies.append(evaluate(model, moved)["energy"].sum().item())
        finite_difference = -(energies[0] - energies[1]) / (2 * step)
        assert finite_difference == pytest.approx(forces[atom, axis].item(), abs=1e-7 * forces.abs().max().item())
