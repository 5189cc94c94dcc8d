"""``MACECalculator``: mace-torch's ASE calculator, with its models patched by ``batmobile_nn.patch``.

Loading, dtype and device handling, heads, committees and the results (energy, free energy, node
energies, forces, stress, ...) are mace's own (``mace.calculators.MACECalculator``); this class only
patches each model once mace has prepared it, so the numbers are stock MACE's up to floating-point
rounding.
"""

from typing import Optional

import torch
from mace.calculators import MACECalculator as StockMACECalculator

from ..patches.mace import is_patched, patch

BACKENDS = ("batmobile", "e3nn")


class MACECalculator(StockMACECalculator):
    """Drop-in for ``mace.calculators.MACECalculator`` running on batmobile_nn's ops.

    Args:
        *args, **kwargs: ``mace.calculators.MACECalculator``'s (``model_paths`` or ``models``,
            ``device``, ``default_dtype``, ``head``, ``model_type``, ...). Models passed with ``models``
            are patched in place (mace's calculator also moves and converts them in place).
        backend: ``"batmobile"`` (default) patches the models; ``"e3nn"`` leaves them stock (the same
            as mace's calculator, for comparisons). ``enable_cueq``/``enable_oeq`` need ``"e3nn"``.

    Properties: ``energy``, ``free_energy``, ``energies``, ``node_energy``, ``forces``, ``stress``
    (and the others mace's calculator offers for the model type).

    >>> from ase.build import bulk
    >>> atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    >>> atoms.calc = MACECalculator(model_paths="small.model", device="cpu", default_dtype="float64")  # doctest: +SKIP
    >>> atoms.get_potential_energy(), atoms.get_forces().shape  # doctest: +SKIP
    (-14.2..., (4, 3))
    """

    def __init__(self, *args, backend: str = "batmobile", **kwargs):
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if backend == "batmobile" and (kwargs.get("enable_cueq") or kwargs.get("enable_oeq")):
            raise ValueError("enable_cueq / enable_oeq convert the model for another library: use backend='e3nn'")
        super().__init__(*args, **kwargs)
        self.backend = backend
        if backend == "batmobile":
            for model in self.models:
                # a torch.compile'd model (compile_mode=...) is traced on its first call: patch what it wraps
                patch(_wrapped_module(model))

    @property
    def patched(self) -> bool:
        """Whether the calculator's models run on batmobile_nn's ops."""
        return all(is_patched(_wrapped_module(model)) for model in self.models)


def _wrapped_module(model: torch.nn.Module) -> torch.nn.Module:
    module: Optional[torch.nn.Module] = getattr(model, "_orig_mod", None)
    return module if isinstance(module, torch.nn.Module) else model
