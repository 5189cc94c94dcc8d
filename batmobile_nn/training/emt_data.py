"""Structures of Cu, Ag, Au and Al labelled by ASE's EMT calculator: the demo model's training data.

EMT (effective medium theory, ``ase.calculators.emt``) is a cheap analytic potential for these fcc metals,
so a whole data set (bulk, random alloys, vacancies, (111)/(100) surfaces, at several temperatures and
strains) is generated on a CPU in about a minute. Labels are stored under mace's default keys
(``REF_energy``, ``REF_forces``, ``REF_stress``), the isolated atoms under ``config_type=IsolatedAtom``.
"""

from typing import Dict, List, Sequence

import numpy as np
from ase import Atoms, units
from ase.build import bulk, fcc100, fcc111
from ase.calculators.emt import EMT
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

ELEMENTS = ("Cu", "Ag", "Au", "Al")
# fcc lattice constants (Å) at the minimum of the EMT energy
LATTICE_CONSTANTS = {"Cu": 3.59, "Ag": 4.07, "Au": 4.05, "Al": 4.00}
TEMPERATURES_K = (300.0, 800.0, 1300.0)


def label(atoms: Atoms) -> Atoms:
    """Returns a copy of ``atoms`` carrying EMT energy, forces (and stress when periodic) in ``info``/``arrays``."""
    labelled = atoms.copy()
    labelled.calc = EMT()
    energy = labelled.get_potential_energy()
    forces = labelled.get_forces()  # [n_atoms, 3]
    stress = labelled.get_stress(voigt=False) if labelled.pbc.all() else None  # [3, 3]
    labelled.calc = None
    labelled.info.pop("adsorbate_info", None)  # set by ase.build's slabs; not writable to extxyz
    labelled.info["REF_energy"] = float(energy)
    labelled.arrays["REF_forces"] = np.array(forces)
    if stress is not None:
        labelled.info["REF_stress"] = np.array(stress)
    return labelled


def isolated_atoms(elements: Sequence[str] = ELEMENTS) -> List[Atoms]:
    """One labelled isolated atom per element (mace reads their energies as the E0s)."""
    configs = []
    for symbol in elements:
        atom = label(Atoms(symbol, cell=[20.0, 20.0, 20.0], pbc=False))
        atom.info["config_type"] = "IsolatedAtom"
        configs.append(atom)
    return configs


def isolated_atom_energies(elements: Sequence[str] = ELEMENTS) -> Dict[int, float]:
    """``{atomic number: EMT energy of the isolated atom}``, e.g. for mace's ``--E0s``.

    >>> isolated_atom_energies(["Cu"])
    {29: 3.51}
    """
    return {int(atom.numbers[0]): atom.info["REF_energy"] for atom in isolated_atoms(elements)}


def random_species(atoms: Atoms, elements: Sequence[str], rng: np.random.Generator) -> Atoms:
    """Assigns random species from ``elements`` (random composition) and a Vegard's-law lattice scaling."""
    fractions = rng.dirichlet(np.ones(len(elements)))
    symbols = rng.choice(list(elements), size=len(atoms), p=fractions)
    base = LATTICE_CONSTANTS[atoms.get_chemical_symbols()[0]]
    vegard = np.mean([LATTICE_CONSTANTS[s] for s in symbols])
    atoms = atoms.copy()
    atoms.set_chemical_symbols(symbols)
    scale = np.diag([vegard / base if p else 1.0 for p in atoms.pbc])
    atoms.set_cell(atoms.cell @ scale, scale_atoms=True)
    return atoms


def random_strain(atoms: Atoms, rng: np.random.Generator, max_strain: float = 0.04) -> Atoms:
    """Applies an isotropic strain in [-max_strain, +max_strain] plus a small random shear to periodic axes."""
    strain = np.eye(3) * (1.0 + rng.uniform(-max_strain, max_strain))
    shear = rng.normal(scale=max_strain / 4, size=(3, 3))
    strain += (shear + shear.T) / 2
    periodic = np.outer(atoms.pbc, atoms.pbc)
    strain = np.where(periodic, strain, np.eye(3))
    atoms = atoms.copy()
    atoms.set_cell(atoms.cell @ strain, scale_atoms=True)
    return atoms


def md_snapshots(atoms: Atoms, temperature_K: float, n_snapshots: int, rng: np.random.Generator,
                 interval: int = 5, timestep_fs: float = 4.0) -> List[Atoms]:
    """EMT Langevin MD from ``atoms``: ``n_snapshots`` labelled frames, ``interval`` steps apart, after a warm-up."""
    atoms = atoms.copy()
    atoms.calc = EMT()
    MaxwellBoltzmannDistribution(atoms, temperature_K=2 * temperature_K, rng=rng)
    dynamics = Langevin(atoms, timestep_fs * units.fs, temperature_K=temperature_K, friction=0.02,
                        fixcm=False, rng=rng)
    dynamics.run(2 * interval)
    snapshots = []
    for _ in range(n_snapshots):
        dynamics.run(interval)
        snapshots.append(label(atoms))
    return snapshots


def base_structures(rng: np.random.Generator, small: bool = False) -> List[Atoms]:
    """Starting cells: pure and alloyed fcc bulk (with and without a vacancy) and (111)/(100) slabs."""
    repeat = 1 if small else 2
    structures = []
    for symbol in ELEMENTS:
        cell = bulk(symbol, "fcc", a=LATTICE_CONSTANTS[symbol], cubic=True).repeat(repeat)
        structures.append(cell)
        alloy = random_species(cell, rng.choice(ELEMENTS, size=rng.integers(2, 5), replace=False), rng)
        structures.append(alloy)
        if not small:
            vacancy = cell.copy()
            del vacancy[int(rng.integers(len(vacancy)))]
            structures.append(vacancy)
            for build in (fcc111, fcc100):
                slab = build(symbol, size=(2, 2, 4), a=LATTICE_CONSTANTS[symbol], vacuum=6.0)
                slab.pbc = True  # periodic along z too, with 12 Å of vacuum between images
                structures.append(slab)
            cuau_slab = fcc111("Cu", size=(3, 3, 4), a=LATTICE_CONSTANTS["Cu"], vacuum=6.0)
            cuau_slab.pbc = True
            structures.append(random_species(cuau_slab, ("Cu", "Au"), rng))
    return structures


def make_emt_dataset(n_configs: int, seed: int = 0, small: bool = False,
                     snapshots_per_run: int = 6) -> List[Atoms]:
    """Samples ``n_configs`` labelled configurations: MD snapshots of strained base structures at the
    temperatures of ``TEMPERATURES_K``, plus a quarter of randomly rattled (0.02–0.15 Å) strained cells.

    Args:
        n_configs: number of configurations returned.
        seed: seed of the numpy generator driving structures, strains and MD.
        small: 4-atom cubic cells only (for tests: fast to label and to train on).
        snapshots_per_run: MD frames taken from each short EMT trajectory.

    Returns:
        labelled ``ase.Atoms`` (``REF_energy``, ``REF_forces``, ``REF_stress``; ``config_type`` in info).

    >>> configs = make_emt_dataset(4, seed=1, small=True)
    >>> len(configs), "REF_forces" in configs[0].arrays
    (4, True)
    """
    rng = np.random.default_rng(seed)
    configs: List[Atoms] = []
    while len(configs) < n_configs:
        structures = base_structures(rng, small=small)
        start = structures[int(rng.integers(len(structures)))]
        strained = random_strain(start, rng)
        if rng.random() < 0.25:
            rattled = strained.copy()
            rattled.positions += rng.normal(scale=rng.uniform(0.02, 0.15), size=rattled.positions.shape)
            new = [label(rattled)]
            new[0].info["config_type"] = "rattled"
        else:
            temperature = float(rng.choice(TEMPERATURES_K))
            new = md_snapshots(strained, temperature, snapshots_per_run, rng)
            for frame in new:
                frame.info["config_type"] = f"md_{int(temperature)}K"
        configs.extend(new)
    return configs[:n_configs]


def cuau_slab(size=(5, 5, 5), gold_fraction: float = 0.25, seed: int = 0) -> Atoms:
    """A Cu–Au random-alloy fcc(111) slab (the md command's embedded structure), 10 Å vacuum each side.

    >>> slab = cuau_slab()
    >>> len(slab), sorted(set(slab.get_chemical_symbols())), slab.pbc.tolist()
    (125, ['Au', 'Cu'], [True, True, False])
    """
    rng = np.random.default_rng(seed)
    lattice = (1 - gold_fraction) * LATTICE_CONSTANTS["Cu"] + gold_fraction * LATTICE_CONSTANTS["Au"]
    slab = fcc111("Cu", size=size, a=lattice, vacuum=10.0, periodic=False)
    symbols = np.where(rng.random(len(slab)) < gold_fraction, "Au", "Cu")
    slab.set_chemical_symbols(symbols)
    slab.pbc = (True, True, False)
    slab.info.pop("adsorbate_info", None)
    return slab


def write_emt_datasets(directory, n_train: int = 500, n_valid: int = 50, n_test: int = 100,
                       n_finetune: int = 60, seed: int = 0) -> Dict[str, str]:
    """Writes ``train.xyz`` (isolated atoms first), ``valid.xyz``, ``test.xyz`` (from-scratch training) and
    ``finetune_train.xyz`` / ``finetune_valid.xyz`` (Cu–Au (111) slabs, see :func:`make_finetune_dataset`).

    Returns:
        ``{name: path}`` of the files written.

    >>> write_emt_datasets("results/emt_data")["train"]  # doctest: +SKIP
    'results/emt_data/train.xyz'
    """
    import ase.io
    from pathlib import Path

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    configs = make_emt_dataset(n_train + n_valid + n_test, seed=seed)
    finetune = make_finetune_dataset(n_finetune, seed=seed + 1)
    n_finetune_valid = max(1, n_finetune // 5)
    parts = {
        "train": isolated_atoms() + configs[:n_train],
        "valid": configs[n_train:n_train + n_valid],
        "test": configs[n_train + n_valid:],
        "finetune_train": finetune[n_finetune_valid:],
        "finetune_valid": finetune[:n_finetune_valid],
    }
    paths = {}
    for name, part in parts.items():
        paths[name] = str(directory / f"{name}.xyz")
        ase.io.write(paths[name], part, format="extxyz")
    return paths


def make_finetune_dataset(n_configs: int, seed: int = 1, snapshots_per_run: int = 6) -> List[Atoms]:
    """Cu–Au random-alloy (111) slabs with a Cu or Au adatom, EMT MD at 300–1300 K: a fine-tuning domain
    (adatoms are absent from :func:`make_emt_dataset`)."""
    rng = np.random.default_rng(seed)
    configs: List[Atoms] = []
    while len(configs) < n_configs:
        slab = random_species(fcc111("Cu", size=(3, 3, 4), a=LATTICE_CONSTANTS["Cu"], vacuum=6.0), ("Cu", "Au"), rng)
        on_top = slab.positions[int(rng.integers(len(slab) - 9, len(slab)))]  # the last 9 atoms: top layer
        slab += Atoms(str(rng.choice(["Cu", "Au"])), positions=[on_top + [0.0, 0.0, 2.3]])
        slab.pbc = True
        temperature = float(rng.choice(TEMPERATURES_K))
        for frame in md_snapshots(slab, temperature, snapshots_per_run, rng):
            frame.info["config_type"] = f"adatom_md_{int(temperature)}K"
            configs.append(frame)
    return configs[:n_configs]
