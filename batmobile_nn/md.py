"""Molecular dynamics with a MACE model through ASE: the engine of ``batmobile-nn md``.

Defaults are the embedded demo model (a small MACE trained on EMT-labelled Cu/Ag/Au/Al structures,
``batmobile_nn/data/README.md``) and an embedded 125-atom Cu–Au fcc(111) slab, so that ``batmobile-nn md``
runs anywhere with no argument.
"""

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

DATA_DIR = Path(__file__).resolve().parent / "data"
DEFAULT_MODEL = DATA_DIR / "mace_emt_metals.model"
DEFAULT_STRUCTURE = DATA_DIR / "cuau_slab.xyz"
FS_PER_NS = 1.0e6
SECONDS_PER_DAY = 86400.0


@dataclass
class MDResult:
    """What a run did: ``steps`` in ``seconds`` (force calls included, first warm-up call excluded)."""

    steps: int
    seconds: float
    n_atoms: int
    timestep_fs: float
    trajectory: Path
    log: Path

    @property
    def steps_per_second(self) -> float:
        return self.steps / self.seconds

    @property
    def ns_per_day(self) -> float:
        return self.steps_per_second * self.timestep_fs / FS_PER_NS * SECONDS_PER_DAY


def make_dynamics(atoms, ensemble: str, timestep_fs: float, temperature_K: float, friction_per_fs: float,
                  rng):
    """ASE dynamics: ``Langevin`` (NVT) or ``VelocityVerlet`` (NVE), for ``ensemble`` ``"nvt"`` / ``"nve"``.

    >>> from ase.build import bulk
    >>> type(make_dynamics(bulk("Cu"), "nve", 2.0, 300.0, 0.01, None)).__name__
    'VelocityVerlet'
    """
    from ase import units
    from ase.md.langevin import Langevin
    from ase.md.verlet import VelocityVerlet

    if ensemble == "nvt":
        return Langevin(atoms, timestep_fs * units.fs, temperature_K=temperature_K,
                        friction=friction_per_fs / units.fs, fixcm=False, rng=rng)
    if ensemble == "nve":
        return VelocityVerlet(atoms, timestep_fs * units.fs)
    raise ValueError(f"ensemble must be 'nvt' or 'nve', got {ensemble!r}")


def run_md(model: Union[str, Path] = DEFAULT_MODEL, structure: Union[str, Path] = DEFAULT_STRUCTURE,
           steps: int = 200, timestep_fs: float = 2.0, temperature_K: float = 300.0, ensemble: str = "nvt",
           friction_per_fs: float = 0.01, device: Optional[str] = None, dtype: str = "float32",
           backend: str = "batmobile", output: Union[str, Path] = "md_output", log_interval: int = 10,
           seed: int = 0, threads: Optional[int] = None, progress: bool = True,
           cuda_graphs: Optional[bool] = None) -> MDResult:
    """Runs MD with ``batmobile_nn.calculators.MACECalculator``, writing ``md.traj`` and ``md.log`` in ``output``.

    Velocities start from a Maxwell–Boltzmann distribution at ``temperature_K`` (zero total momentum).

    Args:
        model: a MACE ``.model`` file.
        structure: any file ASE reads; its last frame is used.
        steps: number of MD steps.
        timestep_fs: time step in fs.
        temperature_K: initial and (NVT) thermostat temperature in K.
        ensemble: ``"nvt"`` (Langevin) or ``"nve"`` (velocity Verlet).
        friction_per_fs: Langevin friction coefficient in 1/fs.
        device: torch device; ``None``: ``"cuda"`` when available, else ``"cpu"``.
        dtype: ``"float32"`` or ``"float64"``.
        backend: ``"batmobile"`` (patched model) or ``"e3nn"`` (stock MACE).
        output: directory for the trajectory and the log (created).
        log_interval: steps between trajectory frames and log lines.
        seed: seed of the initial velocities and of the Langevin noise.
        threads: torch CPU threads during the run; ``None``: 1 on the CPU (a system of a few hundred atoms
            gains little from more, and a shared or oversubscribed CPU loses a lot), torch's setting on a GPU.
        progress: show a tqdm progress bar (on stderr).
        cuda_graphs: the calculator's ``cuda_graphs`` (each step replayed from a CUDA graph; ``None``: on
            with the batmobile backend on a GPU).

    Returns:
        an :class:`MDResult` (timing and output paths).

    >>> result = run_md(steps=10, output="md_output")  # doctest: +SKIP
    >>> result.steps_per_second > 0  # doctest: +SKIP
    True
    """
    import ase.io
    import numpy as np
    import torch
    from ase.io.trajectory import Trajectory
    from ase.md import MDLogger
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary
    from tqdm import tqdm

    from .calculators import MACECalculator

    if steps < 1 or log_interval < 1:
        raise ValueError(f"steps and log_interval must be >= 1, got {steps} and {log_interval}")
    if ensemble not in ("nvt", "nve"):
        raise ValueError(f"ensemble must be 'nvt' or 'nve', got {ensemble!r}")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if threads is None:
        threads = 1 if torch.device(device).type == "cpu" else torch.get_num_threads()
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    atoms = ase.io.read(structure, index=-1)
    print(f"batmobile-nn md: {atoms.get_chemical_formula()} ({len(atoms)} atoms) from {structure}")
    print(f"  model {model}, backend {backend}, device {device}, {dtype}, {threads} CPU thread(s)")
    print(f"  {ensemble.upper()}{' (Langevin)' if ensemble == 'nvt' else ''}, {steps} steps of {timestep_fs} fs "
          f"at {temperature_K} K; writing {output / 'md.traj'} and {output / 'md.log'} every {log_interval} steps")

    default_dtype = torch.get_default_dtype()  # mace's calculator sets torch's default dtype: restore it after
    default_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        atoms.calc = MACECalculator(model_paths=str(model), device=device, default_dtype=dtype, backend=backend,
                                    cuda_graphs=cuda_graphs)
        rng = np.random.default_rng(seed)
        MaxwellBoltzmannDistribution(atoms, temperature_K=temperature_K, rng=rng)
        Stationary(atoms)
        start = time.perf_counter()
        atoms.get_forces()  # first call: model warm-up, excluded from the speed
        print(f"  first force call (warm-up): {time.perf_counter() - start:.2f} s")

        dynamics = make_dynamics(atoms, ensemble, timestep_fs, temperature_K, friction_per_fs, rng)
        trajectory = Trajectory(str(output / "md.traj"), "w", atoms)
        dynamics.attach(trajectory.write, interval=log_interval)
        logger = MDLogger(dynamics, atoms, str(output / "md.log"), header=True, peratom=True, mode="w")
        dynamics.attach(logger, interval=log_interval)
        bar = tqdm(total=steps, unit="step", disable=not progress, desc="MD")
        dynamics.attach(lambda: bar.update(dynamics.nsteps - bar.n), interval=1)
        start = time.perf_counter()
        dynamics.run(steps)
        seconds = time.perf_counter() - start
        bar.close()
        trajectory.close()
        logger.close()
    finally:
        torch.set_default_dtype(default_dtype)
        torch.set_num_threads(default_threads)

    result = MDResult(steps=steps, seconds=seconds, n_atoms=len(atoms), timestep_fs=timestep_fs,
                      trajectory=output / "md.traj", log=output / "md.log")
    print(f"  final: T = {atoms.get_temperature():.1f} K, E_pot = {atoms.get_potential_energy() / len(atoms):.4f} "
          f"eV/atom, E_tot = {atoms.get_total_energy() / len(atoms):.4f} eV/atom")
    print(f"{steps} steps in {seconds:.1f} s: {result.steps_per_second:.2f} steps/s, "
          f"{result.ns_per_day:.4f} ns/day ({len(atoms)} atoms, {timestep_fs} fs, {device}, {dtype}, {backend})")
    return result
