"""``batmobile-nn md``: ASE molecular dynamics on the embedded model and structure (CPU, a few steps)."""

import re

import numpy as np
import pytest

pytest.importorskip("mace")

import ase.io  # noqa: E402

from batmobile_nn.cli import main  # noqa: E402
from batmobile_nn.md import DEFAULT_MODEL, DEFAULT_STRUCTURE, run_md  # noqa: E402


def test_embedded_files_exist_and_are_small():
    assert DEFAULT_MODEL.exists() and DEFAULT_STRUCTURE.exists()
    assert DEFAULT_MODEL.stat().st_size < 5 * 1024 * 1024
    assert b"batmobile_nn" not in DEFAULT_MODEL.read_bytes()  # a stock MACE model
    slab = ase.io.read(DEFAULT_STRUCTURE)
    assert 100 <= len(slab) <= 300 and set(slab.get_chemical_symbols()) == {"Cu", "Au"}


def test_md_with_no_model_or_structure_argument(tmp_path, capsys):
    assert main(["md", "--steps", "4", "--log_interval", "2", "--output", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    lines = out[out.index("batmobile-nn md:"):].strip().splitlines()  # (mace may print a notice on import)
    assert str(DEFAULT_STRUCTURE) in lines[0] and str(DEFAULT_MODEL) in lines[1]
    assert re.fullmatch(r"4 steps in [\d.]+ s: [\d.]+ steps/s, [\d.]+ ns/day \(125 atoms, 2.0 fs, \w+, float32, "
                        r"batmobile\)", lines[-1]), lines[-1]

    frames = ase.io.read(tmp_path / "md.traj", ":")
    assert len(frames) == 3  # steps 0, 2, 4
    start = ase.io.read(DEFAULT_STRUCTURE)
    assert frames[0].get_chemical_symbols() == start.get_chemical_symbols()
    assert np.abs(frames[-1].positions - start.positions).max() > 1e-4  # the atoms moved
    assert all(np.isfinite(f.get_potential_energy()) and np.isfinite(f.get_forces()).all() for f in frames)
    log = (tmp_path / "md.log").read_text().strip().splitlines()
    assert log[0].split()[0] == "Time[ps]" and len(log) == 1 + 3


def test_nve_conserves_energy(tmp_path):
    run_md(steps=20, timestep_fs=1.0, temperature_K=300.0, ensemble="nve", dtype="float64", output=tmp_path,
           log_interval=1, device="cpu", progress=False)
    frames = ase.io.read(tmp_path / "md.traj", ":")
    n_atoms = len(frames[0])
    total = np.array([f.get_total_energy() for f in frames]) / n_atoms  # [21] eV/atom
    potential = np.array([f.get_potential_energy() for f in frames]) / n_atoms
    drift = np.abs(total - total[0]).max()
    assert drift < 2e-5, drift  # eV/atom (about 1e-6 measured)
    assert np.ptp(potential) > 20 * drift  # energy flows between kinetic and potential: the check can fail


def test_backends_give_the_same_trajectory(tmp_path):
    positions = {}
    for backend in ("batmobile", "e3nn"):
        run_md(steps=4, timestep_fs=2.0, ensemble="nvt", dtype="float64", backend=backend, seed=5,
               output=tmp_path / backend, log_interval=4, device="cpu", progress=False)
        positions[backend] = ase.io.read(tmp_path / backend / "md.traj", -1).positions
    np.testing.assert_allclose(positions["batmobile"], positions["e3nn"], rtol=0, atol=1e-9)


def test_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="ensemble"):
        run_md(steps=1, ensemble="npt", output=tmp_path)
    with pytest.raises(ValueError, match="steps"):
        run_md(steps=0, output=tmp_path)


def test_cuda_graphs_flag_reaches_the_calculator(tmp_path):
    """On the CPU the flag is a clear error from the calculator (the graphs need CUDA)."""
    with pytest.raises(ValueError, match="cuda_graphs needs device='cuda'"):
        main(["md", "--steps", "1", "--device", "cpu", "--cuda-graphs", "--output", str(tmp_path)])
    main(["md", "--steps", "1", "--device", "cpu", "--no-cuda-graphs", "--output", str(tmp_path)])  # the off switch


@pytest.mark.cuda
def test_cuda_graphs_md_on_the_gpu(tmp_path):
    """The same NVE trajectory with and without CUDA graphs (float64: identical up to rounding)."""
    plain = run_md(steps=5, ensemble="nve", device="cuda", dtype="float64", output=tmp_path / "a", progress=False,
                   cuda_graphs=False)
    graphs = run_md(steps=5, ensemble="nve", device="cuda", dtype="float64", output=tmp_path / "b", progress=False)
    a, b = ase.io.read(plain.trajectory, index=-1), ase.io.read(graphs.trajectory, index=-1)
    assert np.abs(a.positions - b.positions).max() < 1e-9
