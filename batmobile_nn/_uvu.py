"""The per-problem uvu kernels: NVRTC compilation, a cache per (plan, dtype, device), and the calls.

``_cuda.py`` tries these first for the tensor product and the convolution; ``kernels_for`` returns None
when the plan is not a uniform-multiplicity uvu product with per-edge weights (``_uvu_codegen.uvu_spec``),
when NVRTC is unavailable, or when ``BATMOBILE_NN_UVU=0``, and the generic kernels run instead.
Compiling one problem (forward and backward, one dtype) takes about a second, once per process.
"""

import os
import warnings
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor

from . import _backend, _jit, _uvu_codegen

_cache: Dict[tuple, Optional["UvuKernels"]] = {}
enabled = os.environ.get("BATMOBILE_NN_UVU", "1") != "0"
# edges in flight per forward loop iteration: 2 in float32 (H200, MACE-MP-medium, 170k edges: 1.23 -> 0.96 ms);
# 1 in float64, whose registers are full at 1
FORWARD_UNROLL = {torch.float32: 2, torch.float64: 1}
if os.environ.get("BATMOBILE_NN_UVU_UNROLL"):
    FORWARD_UNROLL = dict.fromkeys(FORWARD_UNROLL, int(os.environ["BATMOBILE_NN_UVU_UNROLL"]))


@dataclass
class UvuKernels:
    spec: _uvu_codegen.UvuSpec
    forward: int  # kernel handles from torch.ops.batmobile_cuda.jit_load
    backward: int


def _compile(source: str, name: str, device: torch.device) -> int:
    return _jit.kernel(source, name, device)


def kernels_for(plan: List[int], cg: List[float], dtype: torch.dtype, device: torch.device,
                per_edge_weights: bool) -> Optional[UvuKernels]:
    if not enabled or dtype not in (torch.float32, torch.float64):
        return None
    if device.index is None:
        device = torch.device(device.type, torch.cuda.current_device())
    key = (tuple(plan), tuple(cg), dtype, device, per_edge_weights)
    if key in _cache:
        return _cache[key]
    spec, _reason = _uvu_codegen.uvu_spec(plan, cg, per_edge_weights, torch.finfo(dtype).bits // 8)
    kernels = None
    if spec is not None:
        ctype = "float" if dtype == torch.float32 else "double"
        try:
            forward_source = _uvu_codegen.forward_source(spec, ctype, FORWARD_UNROLL[dtype])
            kernels = UvuKernels(spec, _compile(forward_source, "bm_uvu_fwd", device),
                                 _compile(_uvu_codegen.backward_source(spec, ctype), "bm_uvu_bwd", device))
        except (ImportError, OSError, RuntimeError) as exc:  # no NVRTC, or it refused the source
            warnings.warn(f"batmobile_nn: the per-problem uvu kernels could not be compiled ({exc}); "
                          "using the generic CUDA kernels.", _backend.ReferencePathWarning, stacklevel=3)
    _cache[key] = kernels
    return kernels


def forward(k: UvuKernels, in1: Tensor, in2: Tensor, weight: Tensor, order: Optional[Tensor],
            send: Optional[Tensor], row_ptr: Optional[Tensor]) -> Tensor:
    dim1, dim2, dim_out, weight_numel = k.spec.dims
    return torch.ops.batmobile_cuda.uvu_forward(k.forward, k.spec.threads, in1.contiguous(), in2.contiguous(),
                                                weight.contiguous(), order, send, row_ptr, dim1, dim2, dim_out,
                                                weight_numel, not k.spec.out_covered)


def backward(k: UvuKernels, grad_out: Tensor, in1: Tensor, in2: Tensor, weight: Tensor, order: Optional[Tensor],
             send: Optional[Tensor], row_ptr: Optional[Tensor], needs: List[bool]) -> Tuple[Tensor, Tensor, Tensor]:
    """``(grad_in1 per edge [n_edges, dim1], grad_in2 [n_edges, dim2], grad_weight [n_edges, weight_numel])``."""
    dim1, dim2, dim_out, weight_numel = k.spec.dims
    g1, g2_part, gw = torch.ops.batmobile_cuda.uvu_backward(
        k.backward, k.spec.threads, grad_out.contiguous(), in1.contiguous(), in2.contiguous(), weight.contiguous(),
        order, send, row_ptr, dim1, dim2, dim_out, weight_numel, list(needs), not k.spec.in1_covered)
    if needs[1]:
        g2_part = g2_part.sum(1)  # [n_edges, dim2]: per-warp partial sums, added in a fixed order
    return g1, g2_part, gw
