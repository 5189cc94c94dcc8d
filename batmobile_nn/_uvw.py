"""The per-problem uvw kernels (``_uvw_codegen``): NVRTC compilation, a cache per (plan, dtype, device), the calls.

``_cuda.py`` tries these first for the tensor product; ``kernels_for`` returns None when the plan is not a uvw
product with shared weights that they take (``_uvw_codegen.uvw_spec``), when NVRTC is unavailable, or when
``BATMOBILE_NN_UVW=0``, and the generic kernels run instead. The kernels are compiled on first use (each
kind once per problem and dtype) and their cubins cached on disk (``_jit.py``).
"""

import math
import os
import warnings
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor

from . import _backend, _jit, _uvw_bwd_codegen, _uvw_codegen as codegen
from .ops import _plan

_cache: Dict[tuple, Optional["UvwKernels"]] = {}
_MISSING = object()
enabled = os.environ.get("BATMOBILE_NN_UVW", "1") != "0"
BLOCKS_PER_SM = 4  # weight gradient: (path, slice) blocks per multiprocessor to aim for


class UvwKernels:
    """One problem's kernels in one dtype. ``compile(source, name, device) -> handle`` and ``launch(handle,
    grid, threads, tensors, scalars)`` are NVRTC's and the extension's (tests pass a CPU emulation)."""

    def __init__(self, spec: codegen.UvwSpec, ctype: str, device: torch.device,
                 compile: Callable = _jit.kernel, launch: Callable = _jit.launch):
        self.spec, self.ctype, self.device = spec, ctype, device
        self._compile, self.launch = compile, launch
        self._handles: Dict[tuple, int] = {}
        self._transposed: Optional[Tensor] = None
        self.multiprocessors: Optional[int] = None  # the device's, read once

    def handle(self, kind: str, need1: bool = True, need2: bool = True) -> int:
        key = (kind, need1, need2) if kind == "bwd" else (kind,)
        if key not in self._handles:
            if kind == "fwd":
                source = codegen.forward_source(self.spec, self.ctype)
            elif kind == "bwd":
                source = _uvw_bwd_codegen.backward_source(self.spec, self.ctype, need1, need2)
            else:
                source = _uvw_bwd_codegen.wgrad_source(self.spec, self.ctype)
            self._handles[key] = self._compile(source, f"bm_uvw_{kind}", self.device)
        return self._handles[key]

    def transposed_index(self) -> Tensor:
        """``[weight_numel]`` int64: ``weight[index]`` holds each path's ``[c_in, c_out]`` weights transposed."""
        if self._transposed is None:
            c_in, c_out = self.spec.c_in, self.spec.c_out
            index = torch.arange(self.spec.dims[3])
            for path in self.spec.paths:
                block = index[path.weight_offset:path.weight_offset + c_in * c_out]
                block.copy_(block.view(c_in, c_out).t().reshape(-1))
            self._transposed = index.to(self.device)
        return self._transposed


def kernels_for(plan: List[int], cg: List[float], dtype: torch.dtype, device: torch.device,
                per_edge_weights: bool) -> Optional[UvwKernels]:
    if not enabled or dtype not in (torch.float32, torch.float64) or per_edge_weights:
        return None
    if plan[0] == 0 or plan[_plan.HEADER] != _plan.MODES["uvw"]:  # cheap: a first path that is not uvw, no key hashed
        return None
    if device.index is None:
        device = torch.device(device.type, torch.cuda.current_device())
    key = (_plan.token(plan, cg), dtype, device)
    found = _cache.get(key, _MISSING)  # one lookup: this runs on every launch
    if found is not _MISSING:
        return found
    spec, _reason = codegen.uvw_spec(plan, cg, per_edge_weights)
    ctype = "float" if dtype == torch.float32 else "double"
    kernels = None
    if spec is not None and codegen.fits(spec, ctype):
        kernels = UvwKernels(spec, ctype, device)
        try:
            kernels.handle("fwd")
        except (ImportError, OSError, RuntimeError) as exc:  # no NVRTC, or it refused the source
            warnings.warn(f"batmobile_nn: the per-problem uvw kernels could not be compiled ({exc}); "
                          "using the generic CUDA kernels.", _backend.ReferencePathWarning, stacklevel=3)
            kernels = None
    _cache[key] = kernels
    return kernels


def forward(k: UvwKernels, in1: Tensor, in2: Tensor, weight: Tensor) -> Tensor:
    """``[n, dim_out]``: every output written by the kernel."""
    n = in1.shape[0]
    out = in1.new_empty(n, k.spec.dims[2])  # [n, dim_out]
    if n:
        tile = codegen.tile_edges(k.spec, k.ctype, "fwd")
        k.launch(k.handle("fwd"), _jit.grid_for(n, tile), codegen.THREADS,
                 [in1.contiguous(), in2.contiguous(), weight.contiguous(), out], [n])
    return out


def _slices(k: UvwKernels, n_tiles: int) -> int:
    """Sample slices of the weight gradient: enough (path, slice) blocks to fill the GPU."""
    if k.multiprocessors is None:
        k.multiprocessors = (torch.cuda.get_device_properties(k.device).multi_processor_count
                             if k.device.type == "cuda" else 4)
    return max(1, min(n_tiles, math.ceil(BLOCKS_PER_SM * k.multiprocessors / len(k.spec.paths))))


def backward(k: UvwKernels, grad_out: Tensor, in1: Tensor, in2: Tensor, weight: Tensor,
             needs: List[bool]) -> Tuple[Tensor, Tensor, Tensor]:
    """``(grad_in1 [n, dim1], grad_in2 [n, dim2], grad_weight [weight_numel])``, empty where not needed."""
    need1, need2, need_w = needs
    dim1, dim2, _, weight_numel = k.spec.dims
    n = in1.shape[0]
    grad_out, in1, in2 = grad_out.contiguous(), in1.contiguous(), in2.contiguous()
    g1 = ((in1.new_empty if k.spec.in1_covered else in1.new_zeros)(n, dim1)  # [n, dim1]
          if need1 else in1.new_empty(0))
    g2 = in1.new_empty(n, dim2) if need2 else in1.new_empty(0)  # [n, dim2]
    if n and (need1 or need2):
        tile = codegen.tile_edges(k.spec, k.ctype, "bwd")
        weight_t = weight.contiguous()[k.transposed_index()]  # [weight_numel], per path W^T [c_out, c_in]
        k.launch(k.handle("bwd", need1, need2), _jit.grid_for(n, tile), codegen.THREADS,
                 [grad_out, in1, in2, weight_t, g1 if need1 else None, g2 if need2 else None], [n])
    gw = in1.new_empty(0)
    if need_w:
        if n == 0:
            gw = in1.new_zeros(weight_numel)
        else:
            n_tiles = -(-n // codegen.tile_edges(k.spec, k.ctype, "wgrad"))
            slices = _slices(k, n_tiles)
            partial = in1.new_empty(slices, weight_numel)  # [slices, weight_numel], every entry written
            k.launch(k.handle("wgrad"), len(k.spec.paths) * slices, codegen.THREADS,
                     [grad_out, in1, in2, partial], [n, slices])
            gw = partial.sum(0)  # [weight_numel]: the slices added in a fixed order
    return g1, g2, gw
