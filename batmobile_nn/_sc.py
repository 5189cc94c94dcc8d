"""The CUDA symmetric contraction: per-problem kernels (``_sc_codegen``) compiled at first use, and the calls.

The kernels depend on the values of ``u``, which the op receives as tensors. A problem is looked up by
the identity of those tensors (storage pointer, version counter, shape, dtype); the cache holds on to
them, so that memory cannot be freed and reused by other values under the same key, and an in-place
change bumps the version. A miss reads ``u`` once to the host (one synchronization), then builds or
finds the kernels (the source decides: models with equal ``u`` share them). Compilation takes a few
seconds per problem and dtype, once; the cubins are cached on disk (``_jit``).
"""

import hashlib
import os
import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor

from . import _backend, _jit, _sc_codegen, reference

enabled = os.environ.get("BATMOBILE_NN_SC", "1") != "0"
# Float64 problems above this many terms compile their kernels with F64_LARGE_NVRTC_OPTIONS. On an H200 (CUDA
# 13.0) the float64 kernels of a MACE-MP-large-shaped problem (0e+1o+2e out, correlation 3: 5,911 terms) compiled
# with ptxas' default optimization gave wrong first or second derivatives (depending on how the source was cut into
# parts) with compute-sanitizer memcheck clean, while the same source in float32, and float64 up to MACE-MP-medium's
# 1,909 terms, matched the oracle. --fmad=false, --maxrregcount=128 and --ptxas-options=-O1 left other derivatives
# wrong; --device-debug and --ptxas-options=-O0 make them right (csrc/README.md run 11: ptxas -O0 runs this
# problem's forward in 3.8 ms and its force-loss training step in 67 ms at 4,913 nodes, against 122 and 1,127 ms on
# the reference path). Unexplained: an optimizer bug on these long float64 kernels, or undefined behaviour in the
# source that only optimized code exposes. BATMOBILE_NN_SC_F64_LARGE_OPTIONS replaces the options ("reference":
# these problems take the pure-PyTorch reference path instead; blank: the default).
F64_MAX_TERMS = 2000
F64_LARGE_DEFAULT_OPTIONS = ("--ptxas-options=-O0",)


def _f64_large_options(value: Optional[str]) -> Optional[Tuple[str, ...]]:
    """The options from the environment's value: unset or blank -> the default (never the optimized compile, known
    wrong), "reference" (any case) -> None, else the value split on whitespace."""
    words = (value or "").split()
    if not words:
        return F64_LARGE_DEFAULT_OPTIONS
    if len(words) == 1 and words[0].lower() == "reference":
        return None
    return tuple(words)


F64_LARGE_NVRTC_OPTIONS: Optional[Tuple[str, ...]] = _f64_large_options(
    os.environ.get("BATMOBILE_NN_SC_F64_LARGE_OPTIONS"))
MAX_PROBLEMS = 32  # problems remembered (each keeps its u tensors alive)
THREADS = _sc_codegen.THREADS


@dataclass
class ScKernels:
    spec: _sc_codegen.ScSpec
    sources: Dict[str, List[str]]  # kernel name -> its parts' sources (_sc_codegen.parts); compiled on first launch
    loaded: Dict[tuple, List[int]] = field(default_factory=dict)  # (name, device) -> handles
    options: Tuple[str, ...] = ()  # NVRTC options of this problem's kernels

    def handles(self, name: str, device: torch.device) -> List[int]:
        # kept here: _jit.kernel hashes the source (100 KB and more) to find it, too slow for every launch
        key = (name, device)
        if key not in self.loaded:
            self.loaded[key] = [_jit.kernel(source, name, device, self.options) for source in self.sources[name]]
        return self.loaded[key]

    def handle(self, name: str, device: torch.device) -> int:
        (handle,) = self.handles(name, device)
        return handle


_problems: "OrderedDict[tuple, Tuple[List[Tensor], Optional[ScKernels]]]" = OrderedDict()
_by_source: Dict[str, ScKernels] = {}
_lock = threading.Lock()


def _key(u: List[Tensor], correlations: List[int], mul: int, dim: int) -> tuple:
    return (tuple((t.untyped_storage().data_ptr(), t.storage_offset(), t._version, tuple(t.shape), tuple(t.stride()),
                   t.dtype, t.device) for t in u), tuple(correlations), mul, dim)


def kernels_for(x: Tensor, u: List[Tensor], correlations: List[int]) -> Optional[ScKernels]:
    if not enabled or x.dtype not in (torch.float32, torch.float64):
        return None
    mul, dim = x.shape[1], x.shape[2]
    key = _key(u, correlations, mul, dim) + (x.dtype,)
    if key in _problems:
        return _problems[key][1]
    with _lock:
        spec = _sc_codegen.sc_spec(u, correlations, mul, dim)
        n_terms = sum(len(ts) for _, _, ts in spec.terms)
        large_f64 = x.dtype == torch.float64 and n_terms > F64_MAX_TERMS
        if large_f64 and F64_LARGE_NVRTC_OPTIONS is None:
            _problems[key] = (list(u), None)
            warnings.warn(f"batmobile_nn: a float64 symmetric contraction with {n_terms} terms (more than "
                          f"{F64_MAX_TERMS}) runs on the pure-PyTorch reference path (BATMOBILE_NN_SC_F64_LARGE_OPTIONS"
                          "=reference; see _sc.F64_MAX_TERMS).",
                          _backend.ReferencePathWarning, stacklevel=4)
            return None
        ctype = "float" if x.dtype == torch.float32 else "double"
        sources = {name: [make(spec, ctype, part, n > 0) for n, part in enumerate(_sc_codegen.parts(spec, ctype, kind))]
                   for name, kind, make in (("bm_sc_fwd", "fwd", _sc_codegen.forward_source),
                                            ("bm_sc_bwd", "bwd", _sc_codegen.backward_source),
                                            ("bm_sc_dbl", "dbl", _sc_codegen.double_backward_source))}
        sources.update({"bm_sc_wgrad": [_sc_codegen.weight_grad_source(spec, ctype, along=False)],
                        "bm_sc_wgrad_dir": [_sc_codegen.weight_grad_source(spec, ctype, along=True)],
                        "bm_sc_chunk_sum": [_sc_codegen.chunk_sum_source(ctype)]})
        options = F64_LARGE_NVRTC_OPTIONS if large_f64 else ()
        signature = hashlib.sha256("\0".join(["\0".join(parts) for parts in sources.values()] + list(options)).encode()
                                   ).hexdigest()
        kernels = _by_source.setdefault(signature, ScKernels(spec, sources, options=options))
        _problems[key] = (list(u), kernels)
        while len(_problems) > MAX_PROBLEMS:
            _problems.popitem(last=False)
    return kernels


def _nodes(n_nodes: int, mul: int) -> int:
    return _jit.grid_for(n_nodes * mul, THREADS)


def forward(k: ScKernels, x: Tensor, element: Tensor, weight: Tensor) -> Tensor:
    n = x.shape[0]
    out = x.new_empty(n, k.spec.width)  # [n_nodes, mul * sum_o D_o]
    if n:
        args = [x.contiguous(), element, weight.contiguous(), out]
        for handle in k.handles("bm_sc_fwd", x.device):  # the first part writes, the others add
            _jit.launch(handle, _nodes(n, k.spec.mul), THREADS, args, [n])
    return out


def grad_x(k: ScKernels, grad_out: Tensor, x: Tensor, element: Tensor, weight: Tensor) -> Tensor:
    n = x.shape[0]
    gx = torch.empty_like(x)  # [n_nodes, mul, L]
    if n:
        args = [grad_out.contiguous(), x.contiguous(), element, weight.contiguous(), gx]
        for handle in k.handles("bm_sc_bwd", x.device):
            _jit.launch(handle, _nodes(n, k.spec.mul), THREADS, args, [n])
    return gx


def double_backward_nodes(k: ScKernels, v: Tensor, grad_out: Tensor, x: Tensor, element: Tensor, weight: Tensor,
                          need_grad_out: bool, need_x: bool) -> Tuple[Optional[Tensor], Optional[Tensor]]:
    """``(d grad_out, d x)`` of ``<v, grad_x>`` (None where not asked for)."""
    n = x.shape[0]
    d_g = x.new_empty(n, k.spec.width) if need_grad_out else None
    d_x = torch.empty_like(x) if need_x else None
    if n and (need_grad_out or need_x):
        args = [v.contiguous(), grad_out.contiguous(), x.contiguous(), element, weight.contiguous(), d_g, d_x]
        for handle in k.handles("bm_sc_dbl", x.device):
            _jit.launch(handle, _nodes(n, k.spec.mul), THREADS, args, [n])
    return d_g, d_x


def _chunks(element: Tensor, n_elements: int, size: int = _sc_codegen.CHUNK):
    """Nodes sorted by element, cut into chunks of at most ``size`` nodes of one element, with no host sync:
    ``(perm [n], chunk_start [M], chunk_end [M], chunk_ptr [E + 1])`` for a fixed bound
    ``M = ceil(n / size) + E`` (the chunks past the last are empty)."""
    from ._cuda import _memo  # the graph cache: the same element tensor serves every call of a step

    return _memo("chunks", (element,), (n_elements, size), lambda: _compute_chunks(element, n_elements, size))


def _compute_chunks(element: Tensor, n_elements: int, size: int):
    n = element.shape[0]
    perm = torch.argsort(element, stable=True)  # [n]
    # [E]; bincount would read the largest element back to the host (a sync), index_add_ of integers does not
    counts = torch.zeros(n_elements, dtype=torch.long, device=element.device).index_add_(0, element, torch.ones_like(element))
    zero = counts.new_zeros(1)
    node_ptr = torch.cat([zero, counts.cumsum(0)])  # [E + 1]
    chunk_ptr = torch.cat([zero, ((counts + size - 1) // size).cumsum(0)])  # [E + 1]
    m = (n + size - 1) // size + n_elements
    q = torch.arange(m, device=element.device)  # [M]
    e = torch.searchsorted(chunk_ptr[1:], q, right=True).clamp_(max=n_elements - 1)  # element of chunk q
    start = node_ptr[e] + (q - chunk_ptr[e]) * size
    end = torch.minimum(start + size, node_ptr[e + 1])
    valid = q < chunk_ptr[-1]
    start = torch.where(valid, start, 0)
    end = torch.where(valid, end, 0)
    return perm, start.contiguous(), end.contiguous(), chunk_ptr


def grad_weight(k: ScKernels, grad_out: Tensor, x: Tensor, v: Optional[Tensor], element: Tensor,
                n_elements: int) -> Tensor:
    """``sum over the nodes of each element`` of ``g . poly(x)`` (``g . D_v poly(x)`` with ``v``): ``[E, P, mul]``,
    summed in a fixed order (chunks of one element in registers, then the chunks in order)."""
    spec = k.spec
    if x.shape[0] == 0:
        return x.new_zeros(n_elements, spec.n_params, spec.mul)
    perm, start, end, chunk_ptr = _chunks(element, n_elements)
    m = start.shape[0]
    partial = x.new_empty(m, spec.n_params, spec.mul)  # [M, P, mul]
    name = "bm_sc_wgrad" if v is None else "bm_sc_wgrad_dir"
    _jit.launch(k.handle(name, x.device), _nodes(m, spec.mul), THREADS,
                [grad_out.contiguous(), x.contiguous(), None if v is None else v.contiguous(), perm, start, end,
                 partial], [m])
    out = x.new_empty(n_elements, spec.n_params, spec.mul)
    row = spec.n_params * spec.mul
    _jit.launch(k.handle("bm_sc_chunk_sum", x.device), _jit.grid_for(n_elements * row, THREADS), THREADS,
                [partial, chunk_ptr, out], [n_elements, row])
    return out


# ---- the op's CUDA implementations (same signatures as reference.symmetric_contraction*) -----------------
def _element(element: Tensor) -> Tensor:
    return element.long().contiguous()


def symmetric_contraction(x: Tensor, element: Tensor, weight: Tensor, u: List[Tensor],
                          correlations: List[int]) -> Tensor:
    k = kernels_for(x, u, correlations)
    if k is None:
        return reference.symmetric_contraction(x, element, weight, u, correlations)
    return forward(k, x, _element(element), weight)


def symmetric_contraction_backward(grad_out: Tensor, x: Tensor, element: Tensor, weight: Tensor, u: List[Tensor],
                                   correlations: List[int], needs: List[bool]) -> Tuple[Tensor, Tensor]:
    k = kernels_for(x, u, correlations)
    if k is None:
        return reference.symmetric_contraction_backward(grad_out, x, element, weight, u, correlations, needs)
    element = _element(element)
    gx = grad_x(k, grad_out, x, element, weight) if needs[0] else x.new_empty(0)
    gw = grad_weight(k, grad_out, x, None, element, weight.shape[0]) if needs[1] else weight.new_empty(0)
    return gx, gw


def symmetric_contraction_double_backward(grad_grad_x: Tensor, grad_grad_weight: Tensor, grad_out: Tensor, x: Tensor,
                                          element: Tensor, weight: Tensor, u: List[Tensor], correlations: List[int],
                                          needs: List[bool]) -> Tuple[Tensor, Tensor, Tensor]:
    k = kernels_for(x, u, correlations)
    if k is None:
        return reference.symmetric_contraction_double_backward(grad_grad_x, grad_grad_weight, grad_out, x, element,
                                                               weight, u, correlations, needs)
    element = _element(element)
    has_gx, has_gw = grad_grad_x.numel() > 0, grad_grad_weight.numel() > 0
    d_g = d_x = None
    if has_gx:  # the backward is linear in grad_out and in weight: its derivatives along grad_grad_x
        d_g, d_x = double_backward_nodes(k, grad_grad_x, grad_out, x, element, weight, needs[0], needs[1])
    if has_gw:  # and along grad_grad_weight: the forward and the x-gradient with grad_grad_weight as weights
        if needs[0]:
            extra = forward(k, x, element, grad_grad_weight)
            d_g = extra if d_g is None else d_g + extra
        if needs[1]:
            extra = grad_x(k, grad_out, x, element, grad_grad_weight)
            d_x = extra if d_x is None else d_x + extra
    if needs[0] and d_g is None:
        d_g = torch.zeros_like(grad_out)
    if needs[1] and d_x is None:
        d_x = torch.zeros_like(x)
    d_w = weight.new_empty(0)
    if needs[2]:
        d_w = grad_weight(k, grad_out, x, grad_grad_x, element, weight.shape[0]) if has_gx else torch.zeros_like(weight)
    return (d_g if needs[0] else grad_out.new_empty(0), d_x if needs[1] else x.new_empty(0), d_w)


KERNEL_NAMES = ("symmetric_contraction", "symmetric_contraction_backward", "symmetric_contraction_double_backward")
