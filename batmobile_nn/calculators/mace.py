"""``MACECalculator``: mace-torch's ASE calculator, with its models patched by ``batmobile_nn.patch``.

Loading, dtype and device handling, heads, committees and the results (energy, free energy, node
energies, forces, stress, ...) are mace's own (``mace.calculators.MACECalculator``); this class only
patches each model once mace has prepared it, so the numbers are stock MACE's up to floating-point
rounding.
"""

from contextlib import contextmanager
from typing import Optional

import torch
from ase.calculators.calculator import all_changes
from mace.calculators import MACECalculator as StockMACECalculator

from .. import _backend
from ..patches.mace import is_patched, patch
from ._graphs import CudaGraphStep

BACKENDS = ("batmobile", "e3nn")


class MACECalculator(StockMACECalculator):
    """Drop-in for ``mace.calculators.MACECalculator`` running on batmobile_nn's ops.

    Args:
        *args, **kwargs: ``mace.calculators.MACECalculator``'s (``model_paths`` or ``models``,
            ``device``, ``default_dtype``, ``head``, ``model_type``, ...). Models passed with ``models``
            are patched in place (mace's calculator also moves and converts them in place).
        backend: ``"batmobile"`` (default) patches the models; ``"e3nn"`` leaves them stock (the same
            as mace's calculator, for comparisons). ``enable_cueq``/``enable_oeq`` need ``"e3nn"``.
        cuda_graphs: replay each model call from a CUDA graph on padded, fixed shapes (mace's padding:
            atoms and edges up to a budget that grows by 25% when outgrown, which captures anew); for MD
            of small systems, which launches bound. ``None`` (default): on with ``backend="batmobile"`` on
            a CUDA device (unless ``compile_mode`` or ``enable_oeq`` is given), off otherwise; ``False``
            turns it off; ``True`` asks for it (and needs ``device="cuda"``).

    Properties: ``energy``, ``free_energy``, ``energies``, ``node_energy``, ``forces``, ``stress``
    (and the others mace's calculator offers for the model type).

    >>> from ase.build import bulk
    >>> atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    >>> atoms.calc = MACECalculator(model_paths="small.model", device="cpu", default_dtype="float64")  # doctest: +SKIP
    >>> atoms.get_potential_energy(), atoms.get_forces().shape  # doctest: +SKIP
    (-14.2..., (4, 3))
    """

    def __init__(self, *args, backend: str = "batmobile", cuda_graphs: Optional[bool] = None, **kwargs):
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if backend == "batmobile" and (kwargs.get("enable_cueq") or kwargs.get("enable_oeq")):
            raise ValueError("enable_cueq / enable_oeq convert the model for another library: use backend='e3nn'")
        if cuda_graphs and (kwargs.get("compile_mode") or kwargs.get("enable_oeq")):
            raise ValueError("cuda_graphs replays the eager model: it does not combine with compile_mode / enable_oeq")
        super().__init__(*args, **kwargs)
        if cuda_graphs is None:  # on where the kernels run: the reference path reads data to the host
            cuda_graphs = (backend == "batmobile" and torch.device(self.device).type == "cuda"
                           and not (kwargs.get("compile_mode") or kwargs.get("enable_oeq"))
                           and bool(_backend._cuda_kernels(torch.device(self.device))))
        self.backend = backend
        if backend == "batmobile":
            for model in self.models:
                # a torch.compile'd model (compile_mode=...) is traced on its first call: patch what it wraps
                patch(_wrapped_module(model))
        self.cuda_graphs = bool(cuda_graphs)
        if self.cuda_graphs:
            if torch.device(self.device).type != "cuda":
                raise ValueError(f"cuda_graphs needs device='cuda', got {self.device!r}")
            self.models = [CudaGraphStep(model) for model in self.models]
        self.static_shapes = self.cuda_graphs  # pad the batches of calculate() to the budget (mace's padding)
        self._budget = None  # (atoms, edges) of the padding, kept between calculate() calls

    def calculate(self, atoms=None, properties=None, system_changes=all_changes):
        if not self.static_shapes:
            super().calculate(atoms, properties, system_changes)
            return
        # mace pads every batch once its padding is set; only calculate() is replayed, so only it pads (the
        # Hessian and descriptors of mace's other methods would otherwise include the fake padding atoms)
        if self._budget is None:  # from the first structure: its atoms, and its edges + 25% (mace's rule)
            real = super()._atoms_to_batch(atoms)
            self._auto_estimate_padding(len(atoms), int(real["edge_index"].shape[1]))
        else:
            self.pad_num_atoms, self.pad_num_edges = self._budget
            self._padding_initialized = True
        try:
            super().calculate(atoms, properties, system_changes)
        finally:
            self._budget = (self.pad_num_atoms, self.pad_num_edges)  # grown by mace when outgrown
            self.pad_num_atoms = self.pad_num_edges = 0
            self._padding_initialized = False

    def get_hessian(self, atoms=None):
        with self._eager_models():
            return super().get_hessian(atoms)

    def get_descriptors(self, atoms=None, invariants_only=True, num_layers=-1):
        with self._eager_models():
            return super().get_descriptors(atoms, invariants_only, num_layers)

    def get_dielectric_derivatives(self, atoms=None):  # dipole models: a call of another kind, run eagerly
        with self._eager_models():
            return super().get_dielectric_derivatives(atoms)

    @contextmanager
    def _eager_models(self):
        """The models without their CUDA-graph wrapper (a call of another kind would capture a graph anew)."""
        graphed = self.models
        self.models = [_wrapped_module(model) if isinstance(model, CudaGraphStep) else model for model in graphed]
        try:
            yield
        finally:
            self.models = graphed

    @property
    def patched(self) -> bool:
        """Whether the calculator's models run on batmobile_nn's ops."""
        return all(is_patched(_wrapped_module(model)) for model in self.models)


def _wrapped_module(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a ``torch.compile`` wrapper or a ``CudaGraphStep`` (both keep it as ``_orig_mod``)."""
    module: Optional[torch.nn.Module] = getattr(model, "_orig_mod", None)
    return module if isinstance(module, torch.nn.Module) else model
