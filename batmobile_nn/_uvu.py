"""The per-problem uvu kernels: NVRTC compilation, a cache per (plan, dtype, device), and the calls.

``_cuda.py`` tries these first for the tensor product and the convolution; ``kernels_for`` returns None
when the plan is not a uniform-multiplicity uvu product with per-edge weights (``_uvu_codegen.uvu_spec``),
when NVRTC is unavailable, or when ``BATMOBILE_NN_UVU=0``, and the generic kernels run instead.
Compiling one problem (forward and backward, one dtype) takes about a second, once per process.
"""

import functools
import os
import warnings
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor

from . import _backend, _extension, _jit, _uvu_codegen, _uvu_dbl_codegen, _uvu_radial_codegen
from .ops import _plan, _trilinear

_cache: Dict[tuple, Optional["UvuKernels"]] = {}
_MISSING = object()
enabled = os.environ.get("BATMOBILE_NN_UVU", "1") != "0"
# edges in flight per forward loop iteration: 2 in float32 (H200, MACE-MP-medium, 170k edges: 1.23 -> 0.96 ms);
# 1 in float64, whose registers are full at 1
FORWARD_UNROLL = {torch.float32: 2, torch.float64: 1}
# the forward's other tuning choices (_uvu_codegen.forward_source): resident blocks per multiprocessor asked of ptxas
# (0: its choice) and weights loaded evict-first. The best of 32 variants on an H200 (MACE-MP-medium, 170k edges,
# csrc/README.md run 10): float32 5 blocks (0.460 -> 0.344 ms the kernel), float64 3 blocks and evict-first
# weights (0.765 -> 0.711 ms)
FORWARD_MIN_BLOCKS = {torch.float32: 5, torch.float64: 3}
# The resident-block caps (forward, backward and double backward: min_blocks) apply only to problems of at most this
# many outputs per thread (MACE-MP-medium's 40; MACE-MP-large's 71 would spill under the forward's cap: ptxas,
# float32, 568 bytes): above it ptxas chooses
MIN_BLOCKS_MAX_OUTPUTS = 40
FORWARD_STREAM_WEIGHTS = {torch.float32: False, torch.float64: True}
# the backward's and the fused double backward's resident blocks per multiprocessor asked of ptxas (0: its choice),
# by dtype and kernel variant: whether the input-1 gradient is added with atomics at each sender (True: the atomic
# mode without a sender_perm) or written per edge (False: the deterministic mode, and the atomic one given a
# sender_perm, tensor_product_backward, or a backward that does not need the input-1 gradient).
# Swept on an H200 (MACE-MP-medium, 170k edges, csrc/README.md run 11; each variant bitwise equal to ptxas' choice):
# float64 deterministic backward 4 blocks (forward + backward 3.10 -> 2.81 ms, though ptxas spills 248 bytes),
# float32 atomic double backward 3 (forward + backward + double backward 5.82 -> 5.40 ms); elsewhere no variant won
# (float64's double backward under 3 blocks: 13.2 -> 18.2 ms)
BACKWARD_MIN_BLOCKS = {(torch.float32, False): 0, (torch.float32, True): 0,
                       (torch.float64, False): 4, (torch.float64, True): 0}
DOUBLE_BACKWARD_MIN_BLOCKS = {(torch.float32, False): 0, (torch.float32, True): 3,
                              (torch.float64, False): 0, (torch.float64, True): 0}
# conv_radial's forward with the per-edge weights made inside the kernel (_uvu_radial_codegen.py) instead of a
# matrix product before it: off, 2.2x slower on an H200 (3.29 against 1.47 ms at MACE-MP-medium, 170k edges, csrc/
# README.md run 10); BATMOBILE_NN_RADIAL_IN_KERNEL=1 turns it on
RADIAL_IN_KERNEL = os.environ.get("BATMOBILE_NN_RADIAL_IN_KERNEL", "0") == "1"
if os.environ.get("BATMOBILE_NN_UVU_UNROLL"):
    FORWARD_UNROLL = dict.fromkeys(FORWARD_UNROLL, int(os.environ["BATMOBILE_NN_UVU_UNROLL"]))


@dataclass
class UvuKernels:
    spec: _uvu_codegen.UvuSpec
    forward: int  # kernel handles from torch.ops.batmobile_cuda.jit_load
    backward: int
    ctype: str
    device: torch.device
    dtype: torch.dtype
    _backward_variants: Optional[Dict[Tuple[bool, bool], int]] = None
    _double_backward: Optional[Dict[tuple, int]] = None
    _radial: Optional[Dict[tuple, int]] = None

    def radial(self, hidden: int, alpha: float) -> int:
        """The forward with the radial layer inside, for its input size and scale (compiled on first use)."""
        if self._radial is None:
            self._radial = {}
        if (hidden, alpha) not in self._radial:
            source = _uvu_radial_codegen.forward_radial_source(self.spec, self.ctype, hidden, alpha)
            self._radial[(hidden, alpha)] = _compile(source, "bm_uvu_fwd_radial", self.device)
        return self._radial[(hidden, alpha)]

    @functools.cached_property
    def fuses_double_backward(self) -> bool:
        """Whether the fused double-backward kernel serves this problem (else its double backward is composed of the
        forward and backward kernels): ``_uvu_codegen.MAX_FUSED_DBL_OUT``."""
        itemsize = torch.finfo(self.dtype).bits // 8
        return _uvu_codegen.outputs_per_thread(self.spec.instructions) <= _uvu_codegen.MAX_FUSED_DBL_OUT[itemsize]

    def backward_variant(self, g1_atomic: bool, gw_add: bool = False) -> int:
        """The backward with the input-1 gradient added at the senders with atomics (``g1_atomic``) or written per
        edge, and its weight gradient added into a given tensor (``gw_add``: ``backward_into``) or written.
        ``backward`` is the (False, False) one, compiled with the forward; the others compile on first use."""
        if not (g1_atomic or gw_add):
            return self.backward
        if self._backward_variants is None:
            self._backward_variants = {}
        key = (g1_atomic, gw_add)
        if key not in self._backward_variants:
            blocks = min_blocks(self.spec, BACKWARD_MIN_BLOCKS[(self.dtype, g1_atomic)])
            source = _uvu_codegen.backward_source(self.spec, self.ctype, g1_atomic, blocks, gw_add=gw_add)
            self._backward_variants[key] = _compile(source, "bm_uvu_bwd", self.device)
        return self._backward_variants[key]

    @property
    def backward_atomic(self) -> int:
        """The backward that adds the input-1 gradient at each sender with atomics."""
        return self.backward_variant(True)

    def double_backward(self, has: Tuple[bool, bool, bool], da_atomic: bool) -> int:
        """The fused double backward for the cotangents present (``has``), compiled on first use."""
        if self._double_backward is None:
            self._double_backward = {}
        key = (tuple(has), da_atomic)
        if key not in self._double_backward:
            blocks = min_blocks(self.spec, DOUBLE_BACKWARD_MIN_BLOCKS[(self.dtype, da_atomic)])
            source = _uvu_dbl_codegen.double_backward_source(self.spec, self.ctype, tuple(has), da_atomic,
                                                             min_blocks=blocks)
            self._double_backward[key] = _compile(source, "bm_uvu_dbl", self.device)
        return self._double_backward[key]


def min_blocks(spec: _uvu_codegen.UvuSpec, tuned: int) -> int:
    """``tuned`` (a tuning dict's entry) for problems whose thread keeps at most ``MIN_BLOCKS_MAX_OUTPUTS``
    outputs, else 0 (ptxas' choice: the caps were tuned at MACE-MP-medium's 40). The tuning dicts are read when a
    problem is compiled: after changing them, ``_cache.clear()``."""
    return tuned if _uvu_codegen.outputs_per_thread(spec.instructions) <= MIN_BLOCKS_MAX_OUTPUTS else 0


def forward_min_blocks(spec: _uvu_codegen.UvuSpec, dtype: torch.dtype) -> int:
    """The forward's cap: ``FORWARD_MIN_BLOCKS`` through ``min_blocks``."""
    return min_blocks(spec, FORWARD_MIN_BLOCKS[dtype])


def _compile(source: str, name: str, device: torch.device) -> int:
    return _jit.kernel(source, name, device)


def kernels_for(plan: List[int], cg: List[float], dtype: torch.dtype, device: torch.device,
                per_edge_weights: bool) -> Optional[UvuKernels]:
    if not enabled or dtype not in (torch.float32, torch.float64):
        return None
    if device.index is None:
        device = torch.device(device.type, torch.cuda.current_device())
    key = (_plan.token(plan, cg), dtype, device, per_edge_weights)
    found = _cache.get(key, _MISSING)  # one lookup: this runs on every launch
    if found is not _MISSING:
        return found
    spec, _reason = _uvu_codegen.uvu_spec(plan, cg, per_edge_weights, torch.finfo(dtype).bits // 8)
    kernels = None
    if spec is not None:
        ctype = "float" if dtype == torch.float32 else "double"
        try:
            forward_source = _uvu_codegen.forward_source(spec, ctype, FORWARD_UNROLL[dtype],
                                                         forward_min_blocks(spec, dtype), FORWARD_STREAM_WEIGHTS[dtype])
            backward_source = _uvu_codegen.backward_source(spec, ctype, False,
                                                           min_blocks(spec, BACKWARD_MIN_BLOCKS[(dtype, False)]))
            kernels = UvuKernels(spec, _compile(forward_source, "bm_uvu_fwd", device),
                                 _compile(backward_source, "bm_uvu_bwd", device),
                                 ctype, device, dtype)
        except (ImportError, OSError, RuntimeError) as exc:  # no NVRTC, or it refused the source
            warnings.warn(f"batmobile_nn: the per-problem uvu kernels could not be compiled ({exc}); "
                          "using the generic CUDA kernels.", _backend.ReferencePathWarning, stacklevel=3)
    _cache[key] = kernels
    return kernels


def forward(k: UvuKernels, in1: Tensor, in2: Tensor, weight: Tensor, order: Optional[Tensor],
            send: Optional[Tensor], row_ptr: Optional[Tensor]) -> Tensor:
    dim1, dim2, dim_out, weight_numel = k.spec.dims
    return _extension.ops.uvu_forward(k.forward, k.spec.threads, in1.contiguous(), in2.contiguous(),
                                      weight.contiguous(), order, send, row_ptr, dim1, dim2, dim_out,
                                      weight_numel, not k.spec.out_covered)


def forward_radial(k: UvuKernels, in1: Tensor, in2: Tensor, radial_hidden: Tensor, radial_weight: Tensor,
                   alpha: float, order: Optional[Tensor], send: Optional[Tensor], row_ptr: Tensor) -> Tensor:
    """``forward`` with ``alpha * radial_hidden @ radial_weight`` as the weights, made in the kernel:
    ``radial_hidden [n_edges, hidden]``, ``radial_weight [hidden, weight_numel]`` -> ``[n_nodes, dim_out]``."""
    n_nodes, dim_out = in1.shape[0], k.spec.dims[2]
    out = (in1.new_empty if k.spec.out_covered else in1.new_zeros)(n_nodes, dim_out)  # [n_nodes, dim_out]
    if n_nodes:  # (no edges: the kernel writes the zero sums)
        _jit.launch(k.radial(radial_hidden.shape[1], alpha), min(n_nodes, _jit.MAX_GRID), k.spec.threads,
                    [in1.contiguous(), in2.contiguous(), radial_hidden.contiguous(), radial_weight.contiguous(), order,
                     send, row_ptr, out], [n_nodes])
    return out


def backward(k: UvuKernels, grad_out: Tensor, in1: Tensor, in2: Tensor, weight: Tensor, order: Optional[Tensor],
             send: Optional[Tensor], row_ptr: Optional[Tensor], needs: List[bool]) -> Tuple[Tensor, Tensor, Tensor]:
    """``(grad_in1 per edge [n_edges, dim1], grad_in2 [n_edges, dim2], grad_weight [n_edges, weight_numel])``."""
    dim1, dim2, dim_out, weight_numel = k.spec.dims
    g1, g2_part, gw = _extension.ops.uvu_backward(
        k.backward, k.spec.threads, grad_out.contiguous(), in1.contiguous(), in2.contiguous(), weight.contiguous(),
        order, send, row_ptr, dim1, dim2, dim_out, weight_numel, list(needs), not k.spec.in1_covered)
    if needs[1]:
        g2_part = g2_part.sum(1)  # [n_edges, dim2]: per-warp partial sums, added in a fixed order
    return g1, g2_part, gw


def backward_atomic_g1(k: UvuKernels, grad_out: Tensor, in1: Tensor, in2: Tensor, weight: Tensor,
                       order: Optional[Tensor], send: Tensor, row_ptr: Tensor,
                       needs: List[bool]) -> Tuple[Tensor, Tensor, Tensor]:
    """The convolution's backward with the input-1 gradient summed by sender, and the harmonics' gradient
    over the block's warps, with atomics: ``(grad_in1 [n_nodes, dim1], grad_in2 [n_edges, dim2],
    grad_weight [n_edges, weight_numel])``. No ``[n_edges, dim1]`` buffer (350 MB at MACE-MP-medium, 170k
    edges, float32), no ``[n_edges, warps, dim2]`` partial sums (44 MB) and no segment sum. An output not in
    ``needs`` is an empty placeholder."""
    gw = in1.new_empty(in2.shape[0], k.spec.dims[3]) if needs[2] else None  # [n_edges, weight_numel], written
    g1, g2 = _backward_by_receiver(k, True, False, gw, grad_out, in1, in2, weight, order, send, row_ptr, needs)
    # distinct empty placeholders: a custom op's outputs may not alias each other
    return tuple(in1.new_empty(0) if t is None else t for t in (g1, g2, gw))


def backward_into(k: UvuKernels, weight_grad: Tensor, grad_out: Tensor, in1: Tensor, in2: Tensor, weight: Tensor,
                  order: Optional[Tensor], send: Tensor, row_ptr: Tensor, needs: List[bool],
                  g1_atomic: bool) -> Tuple[Optional[Tensor], Optional[Tensor]]:
    """The backward with its weight gradient added into ``weight_grad [n_edges, weight_numel]`` (the composed double
    backward's second weight-gradient term, without a second buffer of that size: 4.2 GB at MACE-MP-large's second
    convolution, 170k edges, float64). Returns ``(grad_in1, grad_in2)`` as ``_backward_by_receiver``."""
    n_edges, weight_numel = in2.shape[0], k.spec.dims[3]
    if weight_grad.shape != (n_edges, weight_numel) or weight_grad.dtype != in1.dtype or not weight_grad.is_contiguous():
        raise ValueError(f"weight_grad must be a contiguous [{n_edges}, {weight_numel}] {in1.dtype} tensor, got "
                         f"{tuple(weight_grad.shape)} {weight_grad.dtype}")
    return _backward_by_receiver(k, g1_atomic, True, weight_grad if needs[2] else None, grad_out, in1, in2, weight,
                                 order, send, row_ptr, needs)


def _backward_by_receiver(k: UvuKernels, g1_atomic: bool, gw_add: bool, gw: Optional[Tensor], grad_out: Tensor,
                          in1: Tensor, in2: Tensor, weight: Tensor, order: Optional[Tensor], send: Tensor,
                          row_ptr: Tensor, needs: List[bool]) -> Tuple[Optional[Tensor], Optional[Tensor]]:
    """Launch ``k.backward_variant(g1_atomic, gw_add)`` (a block per receiver) with the buffers its mode fills, the
    weight gradient into the given ``gw [n_edges, weight_numel]`` (or None). Returns ``(grad_in1, grad_in2)``,
    None where not needed: ``grad_in1 [n_nodes, dim1]`` added at the senders (``g1_atomic``) or ``[n_edges, dim1]``
    per edge, and ``grad_in2 [n_edges, dim2]``."""
    dim1, dim2 = k.spec.dims[:2]
    n_nodes, n_edges = in1.shape[0], in2.shape[0]
    g1 = g2 = None
    if needs[0]:  # [n_nodes, dim1] added into, or [n_edges, dim1] written (zeroed where the kernel skips columns)
        g1 = in1.new_zeros(n_nodes, dim1) if g1_atomic else (
            in1.new_empty if k.spec.in1_covered else in1.new_zeros)(n_edges, dim1)
    if needs[1]:  # [n_edges, dim2] added into by the warps (one warp writes its sums), or [n_edges, warps, dim2]
        g2 = (in1.new_zeros(n_edges, dim2) if k.spec.warps > 1 else in1.new_empty(n_edges, dim2)) if g1_atomic \
            else in1.new_empty(n_edges, k.spec.warps, dim2)
    if n_nodes and n_edges:
        _jit.launch(k.backward_variant(g1_atomic, gw_add), min(n_nodes, _jit.MAX_GRID), k.spec.threads,
                    [grad_out.contiguous(), in1.contiguous(), in2.contiguous(), weight.contiguous(), order, send,
                     row_ptr, g1, g2, gw], [n_nodes])
    if g2 is not None and not g1_atomic:
        g2 = g2.sum(1)  # [n_edges, dim2], the warps' partial sums added in a fixed order
    return g1, g2


def double_backward(k: UvuKernels, cotangents: List[Optional[Tensor]], grad_out: Tensor, in1: Tensor, in2: Tensor,
                    weight: Tensor, order: Optional[Tensor], send: Tensor, row_ptr: Tensor, needs: List[bool],
                    da_atomic: bool) -> Tuple[Tensor, ...]:
    """The convolution's double backward in one kernel (``_uvu_dbl_codegen``): gradients ``(grad_out [n_nodes,
    dim_out], in1 [n_nodes, dim1] (or [n_edges, dim1] per edge unless da_atomic), in2 [n_edges, dim2],
    weight [n_edges, weight_numel])`` of ``<cotangents, backward>``; None where not needed or zero."""
    dim1, dim2, dim_out, weight_numel = k.spec.dims
    has = tuple(t is not None for t in cotangents)
    n_nodes, n_edges = in1.shape[0], in2.shape[0]
    want_g, want_a, want_b, want_c = (need and reach for need, reach in zip(needs, _trilinear.reached(cotangents)))
    if not (want_g or want_a or want_b or want_c):
        return None, None, None, None
    new = in1.new_empty
    d_g = (new if k.spec.out_covered else in1.new_zeros)(n_nodes, dim_out) if want_g else None
    d_a = None
    if want_a:
        d_a = in1.new_zeros(n_nodes, dim1) if da_atomic else (new if k.spec.in1_covered else in1.new_zeros)(n_edges, dim1)
    d_b = new(n_edges, k.spec.warps, dim2) if want_b else None  # per-warp partial sums
    d_c = new(n_edges, weight_numel) if want_c else None
    if n_nodes and n_edges:
        inputs = [grad_out.contiguous(), in1.contiguous(), in2.contiguous(), weight.contiguous(),
                  *(None if t is None else t.contiguous() for t in cotangents), order, send, row_ptr]
        _jit.launch(k.double_backward(has, da_atomic), min(n_nodes, _jit.MAX_GRID), k.spec.threads,
                    inputs + [d_g, d_a, d_b, d_c], [n_nodes])
    elif d_g is not None:
        d_g.zero_()
    return d_g, d_a, None if d_b is None else d_b.sum(1), d_c
