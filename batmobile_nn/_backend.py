"""Which implementation runs an op: the CUDA kernels when they can be built, else the reference.

Importing batmobile_nn never compiles anything. The first op call on a CUDA tensor builds the
extension (``_build.py``: once per source version, torch, CUDA and GPU architecture, cached on disk)
and registers its kernels (``_cuda.py``). When it cannot be built (no nvcc, no ninja, a compile
error), one ``ReferencePathWarning`` says why and the ops run their pure-PyTorch reference
(``batmobile_nn.reference``); on the CPU they always do, with one notice.
"""

import threading
import warnings
from typing import Callable, Dict

import torch

from . import reference


class ReferencePathWarning(UserWarning):
    """Issued once per process when an op runs on the pure-PyTorch reference path."""


_noticed: Dict[str, bool] = {}
# CUDA kernels register themselves here (device type -> op name -> function) when loaded.
KERNELS: Dict[str, Dict[str, Callable]] = {}
_load_lock = threading.Lock()
_load_tried = False


def _cuda_kernels(device: torch.device) -> Dict[str, Callable]:
    """The CUDA kernels, building / loading the extension on the first call."""
    global _load_tried
    if "cuda" not in KERNELS and not _load_tried:
        with _load_lock:
            if "cuda" not in KERNELS and not _load_tried:
                _load_tried = True
                try:
                    from . import _cuda

                    _cuda.load(device)
                except Exception as exc:  # no nvcc, compile error, lock timeout, ...: one warning, then reference
                    _noticed["cuda"] = True
                    warnings.warn(f"batmobile_nn: the CUDA kernels are not available ({exc}); running the "
                                  "pure-PyTorch reference path on cuda.", ReferencePathWarning, stacklevel=4)
    return KERNELS.get("cuda", {})


def implementation(name: str, device: torch.device) -> Callable:
    """The function that computes op ``name`` on ``device``."""
    if device.type == "cuda":
        kernel = _cuda_kernels(device).get(name)
        if kernel is not None:
            return kernel
    if not _noticed.get(device.type):
        _noticed[device.type] = True
        why = ("no CUDA kernels are built for this version" if device.type == "cuda"
               else "the CUDA kernels need a GPU")
        warnings.warn(f"batmobile_nn: running the pure-PyTorch reference path on {device.type} ({why}).",
                      ReferencePathWarning, stacklevel=3)
    return getattr(reference, name)
