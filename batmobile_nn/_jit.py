"""Run-time compiled kernels: NVRTC compilation, a cubin cache on disk, and the launch.

The per-problem kernels (``_uvu_codegen``, ``_sc_codegen``) are CUDA source generated from a problem's
coefficients. NVRTC compiles each source once per process and GPU architecture; the cubin is kept
under ``$BATMOBILE_NN_CACHE/jit/`` (keyed by a hash of the source, the architecture and the NVRTC
version), so a later process loads it without compiling. ``launch`` goes through the extension's
``jit_launch`` (``csrc/uvu_jit.cu``): tensor pointers first, then int64 scalars, on the current
stream (so CUDA graphs capture it).
"""

import ctypes
import hashlib
import os
import sys
import threading
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from . import _build, _extension

_handles: Dict[Tuple[str, str, int], int] = {}  # (source hash, kernel name, device index) -> kernel handle
_lock = threading.Lock()
_announced: List[bool] = []
MAX_GRID = 2**31 - 1


def _nvrtc_version() -> str:
    """NVRTC's version (part of the cache key: another compiler may emit other code)."""
    try:
        from torch.cuda._utils import _get_nvrtc_library  # private torch API

        major, minor = ctypes.c_int(), ctypes.c_int()
        _get_nvrtc_library().nvrtcVersion(ctypes.byref(major), ctypes.byref(minor))
        return f"{major.value}.{minor.value}"
    except (ImportError, OSError, AttributeError):
        return f"cuda {torch.version.cuda}"


# extra NVRTC options, for diagnosing the compiler (e.g. "--fmad=false"); part of the cache key
EXTRA_OPTIONS = os.environ.get("BATMOBILE_NN_NVRTC_OPTIONS", "").split()


def _cubin(source: str, name: str, arch: str, options: Sequence[str] = ()) -> bytes:
    """The compiled cubin of ``source`` for ``arch`` ("90") with NVRTC ``options`` (besides ``EXTRA_OPTIONS``), from
    the disk cache when it is there."""
    from torch.cuda._utils import _nvrtc_compile  # private torch API: the caller guards ImportError

    options = ["-std=c++17"] + EXTRA_OPTIONS + list(options)
    key = f"{arch}\0{_nvrtc_version()}\0{name}\0{' '.join(options)}\0{source}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:32]
    path = _build.cache_root() / "jit" / f"{digest}.cubin"
    if path.is_file():
        return path.read_bytes()
    if not _announced:  # one line per process: the first compile of a problem takes seconds
        _announced.append(True)
        print(f"batmobile_nn: compiling kernels for this problem with NVRTC (first use, cached in {path.parent})",
              file=sys.stderr, flush=True)
    cubin, _ = _nvrtc_compile(source, name, arch, nvcc_options=options)
    try:  # write-then-rename: a process reading the cache never sees half a file
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_bytes(cubin)
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only cache only costs the compile next time
    return cubin


def kernel(source: str, name: str, device: torch.device, options: Sequence[str] = ()) -> int:
    """The handle of kernel ``name`` of ``source`` on ``device`` (compiled with NVRTC ``options``), compiled (or
    loaded) on the first call."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    key = (hashlib.sha256(source.encode()).hexdigest(), name, index, tuple(options))
    handle = _handles.get(key)
    if handle is None:
        with _lock:
            handle = _handles.get(key)
            if handle is None:
                _build.load(device)  # jit_load lives in the extension (a no-op once it is loaded)
                major, minor = torch.cuda.get_device_capability(index)
                image = torch.frombuffer(bytearray(_cubin(source, name, f"{major}{minor}", options)),
                                         dtype=torch.uint8)
                with torch.cuda.device(index):
                    handle = _handles[key] = int(_extension.ops.jit_load(image, name))
    return handle


def grid_for(n_threads: int, threads: int) -> int:
    """Blocks for ``n_threads`` threads (the kernels loop grid-stride, so the grid may be capped)."""
    return max(1, min(MAX_GRID, (n_threads + threads - 1) // threads))


def launch(handle: int, grid: int, threads: int, tensors: Sequence[Optional[Tensor]], scalars: List[int]) -> None:
    """``kernel<<<grid, threads>>>(*pointers of tensors (null for None), *scalars as int64)``."""
    _extension.ops.jit_launch(handle, grid, threads, list(tensors), scalars)
