"""``batmobile_nn.calculators.MACECalculator`` against mace's own calculator on the same saved model."""

import numpy as np
import pytest
import torch

pytest.importorskip("mace")

from mace.calculators import MACECalculator as StockMACECalculator  # noqa: E402

from batmobile_nn.calculators import MACECalculator  # noqa: E402
from batmobile_nn.patches import is_patched  # noqa: E402
from mace_cases import build_model, bulk_structure, molecule_structure  # noqa: E402

PROPERTIES = ("energy", "free_energy", "energies", "forces", "stress")


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("calculator") / "small.model"
    torch.save(build_model(hidden_irreps="4x0e+4x1o", max_ell=2, correlation=2, scale_shift=True), path)
    return str(path)


def _results(calculator, atoms) -> dict:
    atoms = atoms.copy()
    atoms.calc = calculator
    results = {"energy": atoms.get_potential_energy(), "free_energy": atoms.get_potential_energy(force_consistent=True),
               "energies": atoms.get_potential_energies(), "forces": atoms.get_forces()}
    if atoms.pbc.all():
        results["stress"] = atoms.get_stress()
    return results


def _assert_close(got: dict, expected: dict, tol: float):
    assert set(got) == set(expected)
    for key, value in expected.items():
        scale = np.abs(value).max()
        assert scale > 0, key
        error = np.abs(np.asarray(got[key]) - value).max() / scale
        assert error <= tol, f"{key}: relative error {error:.3g} > {tol:g}"


@pytest.mark.parametrize("structure", [bulk_structure, molecule_structure], ids=["bulk", "molecule"])
def test_equals_mace_calculator_float64(model_path, structure):
    stock = StockMACECalculator(model_paths=model_path, device="cpu", default_dtype="float64")
    ours = MACECalculator(model_paths=model_path, device="cpu", default_dtype="float64")
    assert ours.patched and ours.backend == "batmobile"
    assert not is_patched(stock.models[0])
    _assert_close(_results(ours, structure()), _results(stock, structure()), 1e-10)


def test_models_argument_float32_and_committee(model_path):
    atoms = bulk_structure()
    stock = StockMACECalculator(model_paths=model_path, device="cpu", default_dtype="float32")
    models = [torch.load(model_path, weights_only=False), torch.load(model_path, weights_only=False)]
    ours = MACECalculator(models=models, device="cpu", default_dtype="float32")
    assert ours.patched and all(is_patched(model) for model in models)  # patched in place, as documented
    assert next(models[0].parameters()).dtype == torch.float32
    _assert_close(_results(ours, atoms), _results(stock, atoms), 1e-5)


def test_e3nn_backend_is_mace_calculator(model_path):
    atoms = molecule_structure()
    ours = MACECalculator(model_paths=model_path, device="cpu", default_dtype="float64", backend="e3nn")
    assert not ours.patched
    stock = StockMACECalculator(model_paths=model_path, device="cpu", default_dtype="float64")
    _assert_close(_results(ours, atoms), _results(stock, atoms), 1e-12)


def test_invalid_arguments(model_path):
    with pytest.raises(ValueError, match="backend"):
        MACECalculator(model_paths=model_path, backend="cuequivariance")
    with pytest.raises(ValueError, match="enable_cueq"):
        MACECalculator(model_paths=model_path, enable_cueq=True)
