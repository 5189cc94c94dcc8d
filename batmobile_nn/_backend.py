"""Which implementation runs an op: the CUDA kernels when they are built, else the reference.

Importing batmobile_nn never compiles anything. Until a CUDA extension is available for the
device in use, every op runs its pure-PyTorch reference (``batmobile_nn.reference``), and the
first such call on a device prints one notice saying so.
"""

import warnings
from typing import Callable, Dict

import torch

from . import reference


class ReferencePathWarning(UserWarning):
    """Issued once per process when an op runs on the pure-PyTorch reference path."""


_noticed: Dict[str, bool] = {}
# CUDA kernels register themselves here (device type -> op name -> function) when loaded.
KERNELS: Dict[str, Dict[str, Callable]] = {}


def _cuda_kernels() -> Dict[str, Callable]:
    return KERNELS.get("cuda", {})


def implementation(name: str, device: torch.device) -> Callable:
    """The function that computes op ``name`` on ``device``."""
    if device.type == "cuda":
        kernel = _cuda_kernels().get(name)
        if kernel is not None:
            return kernel
    if not _noticed.get(device.type):
        _noticed[device.type] = True
        why = ("no CUDA kernels are built for this version" if device.type == "cuda"
               else "the CUDA kernels need a GPU")
        warnings.warn(f"batmobile_nn: running the pure-PyTorch reference path on {device.type} ({why}).",
                      ReferencePathWarning, stacklevel=3)
    return getattr(reference, name)
