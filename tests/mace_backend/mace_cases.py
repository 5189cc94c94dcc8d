"""Small mace-torch models and inputs for the tests in tests/mace_backend (mace is imported only when used).

``build_model(**arch)`` builds a tiny ``MACE`` / ``ScaleShiftMACE`` in float64 (e3nn keeps its constants
in the default dtype, so float64 parity needs float64 construction); ``make_batch`` turns ASE structures
into a batch through mace's own data pipeline (``config_from_atoms`` -> ``AtomicData.from_config`` ->
``Batch.from_data_list``), as mace's calculator does; ``evaluate`` runs a model on it.
"""

import contextlib
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

ATOMIC_NUMBERS = (1, 6, 8, 13, 29)  # H, C, O (molecule) and Al, Cu (bulk)
R_MAX = 3.3


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def build_model(hidden_irreps: str = "8x0e+8x1o", max_ell: int = 2, correlation=2, num_interactions: int = 2,
                interaction: str = "RealAgnosticResidualInteractionBlock", first: Optional[str] = None,
                scale_shift: bool = False, heads: Optional[List[str]] = None, dtype: torch.dtype = torch.float64,
                seed: int = 0, interaction_cls=None, **extra):
    """A tiny mace-torch model (random weights from ``seed``), built with ``dtype`` as default dtype; ``extra``:
    more of mace's model arguments (``apply_cutoff``, ...)."""
    from e3nn import o3
    from mace import modules

    interaction_cls = interaction_cls or modules.interaction_classes[interaction]
    first_cls = modules.interaction_classes[first] if first else interaction_cls
    n_heads = len(heads) if heads else 1
    rng = np.random.default_rng(seed)
    config = dict(
        r_max=R_MAX, num_bessel=4, num_polynomial_cutoff=5, max_ell=max_ell, interaction_cls=interaction_cls,
        interaction_cls_first=first_cls, num_interactions=num_interactions, num_elements=len(ATOMIC_NUMBERS),
        hidden_irreps=o3.Irreps(hidden_irreps), MLP_irreps=o3.Irreps("4x0e"), gate=torch.nn.functional.silu,
        atomic_energies=rng.uniform(-0.5, 0.5, size=(n_heads, len(ATOMIC_NUMBERS)) if heads else len(ATOMIC_NUMBERS)),
        avg_num_neighbors=8.0, atomic_numbers=list(ATOMIC_NUMBERS), correlation=correlation, radial_MLP=[8, 8],
        heads=heads, **extra)
    with default_dtype(dtype):
        torch.manual_seed(seed)
        if scale_shift:
            scale = [1.3 + 0.1 * i for i in range(n_heads)] if heads else 1.3
            shift = [0.1 * i - 0.2 for i in range(n_heads)] if heads else -0.2
            model = modules.ScaleShiftMACE(atomic_inter_scale=scale, atomic_inter_shift=shift, **config)
        else:
            model = modules.MACE(**config)
    return model


def bulk_structure(seed: int = 0):
    """8 atoms of fcc Cu with 3 Al, rattled: periodic."""
    from ase.build import bulk

    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 1, 1))
    atoms.numbers[[0, 3, 6]] = 13
    atoms.rattle(0.08, seed=seed)
    return atoms


def molecule_structure(seed: int = 1):
    """Ethanol (9 atoms) in a box without periodicity, rattled."""
    from ase.build import molecule

    atoms = molecule("CH3CH2OH")
    atoms.center(vacuum=3.0)
    atoms.pbc = False
    atoms.rattle(0.05, seed=seed)
    return atoms


def make_batch(structures: Sequence, dtype: torch.dtype = torch.float64, heads: Optional[List[str]] = None,
               head: Optional[str] = None):
    """A mace batch of ``structures`` (through mace's data pipeline), floats in ``dtype``."""
    from mace import data
    from mace.tools import AtomicNumberTable, torch_geometric

    z_table = AtomicNumberTable(list(ATOMIC_NUMBERS))
    with default_dtype(dtype):
        graphs = [data.AtomicData.from_config(data.config_from_atoms(atoms, head_name=head or "Default"),
                                              z_table=z_table, cutoff=R_MAX, heads=heads)
                  for atoms in structures]
    return torch_geometric.Batch.from_data_list(graphs)


def evaluate(model, batch) -> Dict[str, torch.Tensor]:
    """Energies (per graph and per node), forces and stress of ``model`` on a copy of ``batch`` (detached)."""
    out = model(batch.clone().to_dict(), compute_force=True, compute_stress=True, training=False)
    return {key: out[key].detach() for key in ("energy", "node_energy", "forces", "stress")}


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    """max |got - expected| / max |expected| (the error relative to the quantity's scale)."""
    scale = expected.abs().max().item()
    assert scale > 0, "the reference is zero: the comparison would prove nothing"
    return (got - expected).abs().max().item() / scale


def assert_outputs_close(got: Dict[str, torch.Tensor], expected: Dict[str, torch.Tensor], tol: float):
    for key in expected:
        assert got[key].dtype == expected[key].dtype, key
        err = relative_error(got[key], expected[key])
        assert err <= tol, f"{key}: relative error {err:.3g} > {tol:g}"
