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


def test_static_shapes_padding_gives_the_same_results(model_path):
    """The padded path that cuda_graphs replays (mace's fake padding graph), here on the CPU without graphs:
    the same numbers as unpadded, also after the edge budget is outgrown."""
    ours = MACECalculator(model_paths=model_path, device="cpu", default_dtype="float64")
    padded = MACECalculator(model_paths=model_path, device="cpu", default_dtype="float64")
    padded.static_shapes = True
    atoms = bulk_structure()
    _assert_close(_results(padded, atoms), _results(ours, atoms), 1e-10)
    budget_atoms, budget = padded._budget
    assert budget > 0 and budget_atoms == len(atoms)
    # only calculate() pads: mace's Hessian and descriptors are of the real atoms
    assert not padded._padding_initialized and padded.pad_num_atoms == 0
    np.testing.assert_allclose(padded.get_descriptors(atoms), ours.get_descriptors(atoms), rtol=0, atol=1e-10)
    hessian = padded.get_hessian(atoms)
    assert hessian.shape == (3 * len(atoms), len(atoms), 3)
    np.testing.assert_allclose(hessian, ours.get_hessian(atoms), rtol=0, atol=1e-8)
    squeezed = atoms.copy()
    squeezed.set_cell(atoms.cell * 0.85, scale_atoms=True)  # more neighbours: past the edge budget
    _assert_close(_results(padded, squeezed), _results(ours, squeezed), 1e-10)
    assert padded._budget[1] > budget


def test_cuda_graphs_arguments(model_path):
    with pytest.raises(ValueError, match="cuda_graphs needs device='cuda'"):
        MACECalculator(model_paths=model_path, device="cpu", cuda_graphs=True)
    with pytest.raises(ValueError, match="compile_mode"):
        MACECalculator(model_paths=model_path, device="cpu", cuda_graphs=True, compile_mode="default")
    assert not MACECalculator(model_paths=model_path, device="cpu").cuda_graphs  # on by default on a GPU only


def test_cuda_graph_step_wraps_the_model(model_path):
    from batmobile_nn.calculators._graphs import CudaGraphStep
    from batmobile_nn.calculators.mace import _wrapped_module

    model = torch.load(model_path, weights_only=False)
    step = CudaGraphStep(model)
    assert _wrapped_module(step) is model and step.r_max == model.r_max  # attributes pass through
    assert [p.data_ptr() for p in step.parameters()] == [p.data_ptr() for p in model.parameters()]
    data = {"positions": torch.zeros(3, 3), "ptr": torch.tensor([0, 3]), "head": None}
    same = CudaGraphStep.signature(data, {"compute_stress": True})
    assert same == CudaGraphStep.signature(dict(data), {"compute_stress": True})
    assert same != CudaGraphStep.signature({**data, "positions": torch.zeros(4, 3)}, {"compute_stress": True})
    assert same != CudaGraphStep.signature(data, {"compute_stress": False})


def test_calls_of_another_kind_run_the_model_without_its_graph_wrapper(model_path, monkeypatch):
    """Hessian, descriptors and dielectric derivatives call the model with other arguments than a step: they
    see the model itself, not its CUDA-graph wrapper (which would capture a graph for each), and the wrapper
    is back after."""
    from mace.calculators import MACECalculator as StockMACECalculator

    from batmobile_nn.calculators._graphs import CudaGraphStep

    calculator = MACECalculator(model_paths=model_path, device="cpu")
    wrapped = [CudaGraphStep(model) for model in calculator.models]
    calculator.models = wrapped
    seen = []
    for name in ("get_hessian", "get_descriptors", "get_dielectric_derivatives"):
        monkeypatch.setattr(StockMACECalculator, name, lambda self, *a, **k: seen.append(type(self.models[0])))
        getattr(calculator, name)()
        assert calculator.models is wrapped
    assert seen == [type(wrapped[0]._orig_mod)] * 3 and seen[0] is not CudaGraphStep


def test_a_failed_capture_falls_back_to_running_the_model(monkeypatch):
    """A model that cannot be captured (a part on the reference path reads data to the host) still runs:
    one warning, then no more capture attempts. (The capture itself needs a GPU; it is replaced here.)"""
    from batmobile_nn.calculators._graphs import CudaGraphStep

    class Double(torch.nn.Module):
        def forward(self, data, scale=1.0):
            return {"y": data["x"] * 2 * scale}

    attempts = []

    def failing_capture(self, data, kwargs):
        attempts.append(1)
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(CudaGraphStep, "_capture", failing_capture)
    step = CudaGraphStep(Double())
    with pytest.warns(RuntimeWarning, match="cannot be captured in a CUDA graph"):
        out = step({"x": torch.ones(2)}, scale=3.0)
    assert torch.equal(out["y"], torch.full((2,), 6.0)) and step.eager
    assert torch.equal(step({"x": torch.ones(3)})["y"], torch.full((3,), 2.0)) and len(attempts) == 1


@pytest.mark.cuda
def test_cuda_graphs_equal_eager_on_the_gpu(model_path):
    """MD-like: the same structure moved, a replayed graph per call; numbers as without graphs."""
    eager = MACECalculator(model_paths=model_path, device="cuda", default_dtype="float64", cuda_graphs=False)
    graphed = MACECalculator(model_paths=model_path, device="cuda", default_dtype="float64")  # on by default
    assert graphed.cuda_graphs and not eager.cuda_graphs
    assert not MACECalculator(model_paths=model_path, device="cuda", backend="e3nn").cuda_graphs
    atoms = bulk_structure()
    for step in range(3):
        atoms.positions += 0.01 * np.random.default_rng(step).standard_normal(atoms.positions.shape)
        _assert_close(_results(graphed, atoms), _results(eager, atoms), 1e-10)
    assert graphed.models[0].captures == 1  # one capture, replayed (the budget was not outgrown)
