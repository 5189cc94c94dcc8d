"""The CUDA implementations of the ops: the same signatures as ``batmobile_nn.reference``.

Each function wraps the extension's ops (``torch.ops.batmobile_cuda.*``, ``csrc/``) and registers
itself in ``_backend.KERNELS["cuda"]`` once ``load()`` has built or found the extension. The
tensor-product plan becomes an int32 instruction table and a compact coefficient list on the device
(cached per plan, device and dtype); the convolution's graph becomes receiver / sender CSR arrays
computed with torch ops (stable argsort, searchsorted). The deterministic mode, and the atomic mode when a
``sender_perm`` is given, use no float atomics and are bitwise reproducible; the atomic mode's per-problem
(uvu) backward adds the node-feature gradient at the senders with atomics, which saves an
``[n_edges, dim_in1]`` buffer and a segment sum (its last bits vary run to run). Problems the kernels do not cover (degrees above the compiled
maximum, shared memory over the device's limit) run on the reference with one warning each.
"""

import warnings
from collections import OrderedDict
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor

from . import _backend, _build, _element_linear, _extension, _sc, _uvu, _uvu_radial_codegen, _uvw, reference
from ._identity import identity
from .ops import _checks, _plan, _trilinear
from .reference.conv import radial_weights

FIELDS = 12  # csrc/include/batmobile/tp_paths.cuh: struct Instr
MAX_THREADS = 256
INSTR_BYTES = FIELDS * 4
_warned = set()


def _ops():
    return _extension.ops


def _fallback(reason: str):
    if reason not in _warned:
        _warned.add(reason)
        warnings.warn(f"batmobile_nn: {reason}; running the pure-PyTorch reference path for it.",
                      _backend.ReferencePathWarning, stacklevel=4)


# ---- tensor-product plans ---------------------------------------------------------------------------
@dataclass
class _Tables:
    instr: Optional[Tensor]  # int32 [n_instr, FIELDS] on the device
    cg: Optional[Tensor]  # [n_cg] coefficients at the compiled non-zero pattern, in pattern order
    threads: int
    reason: str = ""  # why the kernels cannot run this plan ("" when they can)


_patterns: Dict[Tuple[int, int, int], List[int]] = {}
_tables: Dict[tuple, _Tables] = {}


def _pattern_index(l1: int, l2: int, l_out: int) -> List[int]:
    """Flat indices into wigner_3j(l1, l2, l_out).flatten() of the compiled non-zero pattern."""
    key = (l1, l2, l_out)
    if key not in _patterns:
        pattern = _ops().cg_pattern(l1, l2, l_out).tolist()  # [[i, j, k], ...]
        d2, do = 2 * l2 + 1, 2 * l_out + 1
        _patterns[key] = [(i * d2 + j) * do + k for i, j, k in pattern]
    return _patterns[key]


def _smem_bytes(dims, n_cg: int, n_instr: int, threads: int, itemsize: int) -> int:
    dim1, dim2, dim_out, _ = dims
    backward = dim_out + 2 * dim1 + dim2 + dim2 * threads + n_cg  # the larger of the two kernels
    return backward * itemsize + n_instr * INSTR_BYTES


def _build_tables(plan: Tuple[int, ...], cg: Tuple[float, ...], device: torch.device, dtype: torch.dtype) -> _Tables:
    l_in_max, l_out_max = (int(l) for l in _ops().cg_max_l())
    rows, values, widest = [], [], 1
    for ins in _plan.unpack(plan):
        l1, l2, l_out = ins["l1"], ins["l2"], ins["l_out"]
        if max(l1, l2) > l_in_max or l_out > l_out_max:
            return _Tables(None, None, 0, f"tensor-product paths beyond l1, l2 <= {l_in_max}, l_out <= {l_out_max} "
                                          "have no CUDA kernel")
        size = (2 * l1 + 1) * (2 * l2 + 1) * (2 * l_out + 1)
        block = cg[ins["cg_offset"]: ins["cg_offset"] + size]
        index = _pattern_index(l1, l2, l_out)
        outside = set(range(size)) - set(index)
        if any(block[i] != 0.0 for i in outside):
            return _Tables(None, None, 0, "coefficients outside the Wigner-3j pattern have no CUDA kernel")
        rows.append([ins[name] for name in _plan.FIELDS[:-1]] + [len(values)])
        values += [block[i] for i in index]
        widest = max(widest, ins["mul1"], ins["mul_out"])
    threads = min(MAX_THREADS, (widest + 31) // 32 * 32)
    itemsize = torch.finfo(dtype).bits // 8
    limit = getattr(torch.cuda.get_device_properties(device), "shared_memory_per_block_optin", 48 * 1024)
    while threads > 32 and _smem_bytes(_plan.dims(plan), len(values), len(rows), threads, itemsize) > limit:
        threads //= 2
    if _smem_bytes(_plan.dims(plan), len(values), len(rows), threads, itemsize) > limit:
        return _Tables(None, None, 0, f"this tensor product needs more than the device's {limit} bytes of "
                                      "shared memory per block")
    instr = torch.tensor(rows, dtype=torch.int32, device=device).reshape(-1, FIELDS)
    return _Tables(instr, torch.tensor(values, dtype=dtype, device=device), threads)


def _tables_for(plan: List[int], cg: List[float], device: torch.device, dtype: torch.dtype) -> _Tables:
    key = (_plan.token(plan, cg), device, dtype)
    tables = _tables.get(key)
    if tables is None:
        tables = _tables[key] = _build_tables(tuple(plan), tuple(cg), device, dtype)
    return tables


# ---- graphs ---------------------------------------------------------------------------------------
# The CSR arrays of the graphs seen last. One training step calls the convolution's forward, backward and
# double backward on the same edge_index in every interaction block; each call sorted it again (argsort
# took 5% of a MACE-MP-medium training step's GPU time on an H200). Keyed by the index tensor's identity
# (``_identity.py``), holding on to the tensor so that its memory cannot be reused under the same key; an
# in-place change moves the version.
_graphs: "OrderedDict[tuple, Tuple[Tensor, tuple]]" = OrderedDict()
MAX_GRAPHS = 16  # a step's receiver, sender and element graphs, for a few models in turn


def _memo(tag: str, indices: Tuple[Tensor, ...], extra: tuple, compute):
    if indices[0].is_cuda and torch.cuda.is_current_stream_capturing():
        return compute()  # nothing cached from inside a capture
    identities = tuple(identity(t) for t in indices)
    if None in identities:
        return compute()  # inference tensors: no version counter to key on
    key = (tag,) + identities + extra
    found = _graphs.get(key)
    if found is not None:
        _graphs.move_to_end(key)
        return found[1]
    value = compute()
    _graphs[key] = (indices, value)
    while len(_graphs) > MAX_GRAPHS:
        _graphs.popitem(last=False)
    return value


def _csr(index: Tensor, n_nodes: int, order: Optional[Tensor]) -> Tensor:
    """Row pointers [n_nodes + 1] (int64) of ``index[order]`` (sorted) by node."""
    keys = index if order is None else index[order]
    nodes = torch.arange(n_nodes + 1, device=index.device, dtype=keys.dtype)
    return torch.searchsorted(keys, nodes)


def _receiver_graph(receiver: Tensor, n_nodes: int, deterministic: bool):
    """``(edge_order or None, row_ptr)``: edges grouped by receiver, in edge order within a receiver."""
    def compute():
        order = None if deterministic else torch.argsort(receiver, stable=True)
        return order, _csr(receiver, n_nodes, order)
    return _memo("receiver", (receiver,), (n_nodes, deterministic), compute)


def _sorted_senders(sender: Tensor, receiver: Tensor, order: Optional[Tensor]) -> Tensor:
    """The sender of the edge at each CSR position (int64): the kernels then load it without a dependent read.
    ``order`` is ``receiver``'s (it is part of the key through ``receiver``)."""
    def compute():
        sender64 = sender.long()
        return (sender64 if order is None else sender64[order]).contiguous()
    return _memo("send", (sender, receiver), (order is None,), compute)


def _sender_graph(sender: Tensor, n_nodes: int, sender_perm: Optional[Tensor]):
    if sender_perm is None:
        return _memo("sender", (sender,), (n_nodes,), lambda: _sorted_graph(sender, n_nodes))
    else:
        order = sender_perm.long().contiguous()
        if _checks._check_indices and sender.numel() > 1 and not torch.cuda.is_current_stream_capturing():
            keys = sender[order]
            if bool((keys[1:] < keys[:-1]).any()):
                raise ValueError("batmobile.conv: sender_perm does not sort the edges by sender (edge_index[0])")
    return order, _csr(sender, n_nodes, order)


def _sorted_graph(index: Tensor, n_nodes: int):
    order = torch.argsort(index, stable=True)
    return order, _csr(index, n_nodes, order)


# ---- tensor product and convolution ---------------------------------------------------------------
def tensor_product(in1: Tensor, in2: Tensor, weight: Tensor, plan: List[int], cg: List[float]) -> Tensor:
    uvw = _uvw.kernels_for(plan, cg, in1.dtype, in1.device, weight.dim() == 2)
    if uvw is not None:
        return _uvw.forward(uvw, in1, in2, weight)
    uvu = _uvu.kernels_for(plan, cg, in1.dtype, in1.device, weight.dim() == 2)
    if uvu is not None:
        return _uvu.forward(uvu, in1, in2, weight, None, None, None)
    tables = _tables_for(plan, cg, in1.device, in1.dtype)
    if tables.reason:
        _fallback(tables.reason)
        return reference.tensor_product(in1, in2, weight, plan, cg)
    return _ops().tp_forward(in1.contiguous(), in2.contiguous(), weight.contiguous(), None, None, None, tables.instr,
                             tables.cg, _plan.dims(plan)[2], tables.threads)


def tensor_product_backward(grad_out: Tensor, in1: Tensor, in2: Tensor, weight: Tensor, plan: List[int],
                            cg: List[float], needs: List[bool]):
    uvw = _uvw.kernels_for(plan, cg, in1.dtype, in1.device, weight.dim() == 2)
    if uvw is not None:
        return _uvw.backward(uvw, grad_out, in1, in2, weight, needs)
    uvu = _uvu.kernels_for(plan, cg, in1.dtype, in1.device, weight.dim() == 2)
    if uvu is not None:
        return _uvu.backward(uvu, grad_out, in1, in2, weight, None, None, None, needs)
    tables = _tables_for(plan, cg, in1.device, in1.dtype)
    if tables.reason:
        _fallback(tables.reason)
        return reference.tensor_product_backward(grad_out, in1, in2, weight, plan, cg, needs)
    g1, g2, gw = _ops().tp_backward(grad_out.contiguous(), in1.contiguous(), in2.contiguous(), weight.contiguous(),
                                    None, None, None, tables.instr, tables.cg, list(needs), tables.threads)
    if needs[2] and weight.dim() == 1:
        gw = gw.sum(0)  # [weight_numel]: the kernel's per-block partial sums, added in a fixed order
    return g1, g2, gw


def conv(node_feats: Tensor, edge_attrs: Tensor, weight: Tensor, sender: Tensor, receiver: Tensor,
         sender_perm: Optional[Tensor], plan: List[int], cg: List[float], deterministic: bool) -> Tensor:
    uvu = _uvu.kernels_for(plan, cg, node_feats.dtype, node_feats.device, weight.dim() == 2)
    if uvu is not None:
        order, row_ptr = _receiver_graph(receiver, node_feats.shape[0], deterministic)
        send = _sorted_senders(sender, receiver, order)
        return _uvu.forward(uvu, node_feats, edge_attrs, weight, order, send, row_ptr)
    tables = _tables_for(plan, cg, node_feats.device, node_feats.dtype)
    if tables.reason:
        _fallback(tables.reason)
        return reference.conv(node_feats, edge_attrs, weight, sender, receiver, plan, cg)
    order, row_ptr = _receiver_graph(receiver, node_feats.shape[0], deterministic)
    return _ops().tp_forward(node_feats.contiguous(), edge_attrs.contiguous(), weight.contiguous(),
                             sender.long().contiguous(), order, row_ptr, tables.instr, tables.cg,
                             _plan.dims(plan)[2], tables.threads)


def conv_radial(node_feats: Tensor, edge_attrs: Tensor, radial_hidden: Tensor, radial_weight: Tensor, alpha: float,
                sender: Tensor, receiver: Tensor, sender_perm: Optional[Tensor], plan: List[int], cg: List[float],
                deterministic: bool) -> Tensor:
    """``conv`` of ``alpha * radial_hidden @ radial_weight``: the weights made inside the uvu kernel when
    ``_uvu.RADIAL_IN_KERNEL``, else by a matrix product before the convolution."""
    if _uvu.RADIAL_IN_KERNEL and 1 <= radial_hidden.shape[1] <= _uvu_radial_codegen.MAX_HIDDEN:
        uvu = _uvu.kernels_for(plan, cg, node_feats.dtype, node_feats.device, True)
        if uvu is not None:
            order, row_ptr = _receiver_graph(receiver, node_feats.shape[0], deterministic)
            send = _sorted_senders(sender, receiver, order)
            try:
                return _uvu.forward_radial(uvu, node_feats, edge_attrs, radial_hidden, radial_weight, alpha, order,
                                           send, row_ptr)
            except (ImportError, OSError, RuntimeError) as exc:  # NVRTC refused the source: the two steps
                warnings.warn(f"batmobile_nn: the convolution with the radial layer inside could not be compiled "
                              f"({exc}); using a matrix product, then the convolution.", _backend.ReferencePathWarning,
                              stacklevel=3)
                _uvu.RADIAL_IN_KERNEL = False
    weight = radial_weights(radial_hidden, radial_weight, alpha)  # [n_edges, weight_numel]
    return conv(node_feats, edge_attrs, weight, sender, receiver, sender_perm, plan, cg, deterministic)


def conv_backward(grad_out: Tensor, node_feats: Tensor, edge_attrs: Tensor, weight: Tensor, sender: Tensor,
                  receiver: Tensor, sender_perm: Optional[Tensor], plan: List[int], cg: List[float],
                  deterministic: bool, needs: List[bool]):
    n_nodes = node_feats.shape[0]
    uvu = _uvu.kernels_for(plan, cg, node_feats.dtype, node_feats.device, weight.dim() == 2)
    if uvu is not None:
        order, row_ptr = _receiver_graph(receiver, n_nodes, deterministic)
        send = _sorted_senders(sender, receiver, order)
        if needs[0] and not deterministic and sender_perm is None:  # atomic mode: add at the senders
            return _uvu.backward_atomic_g1(uvu, grad_out, node_feats, edge_attrs, weight, order, send, row_ptr, needs)
        g_edge1, g2, gw = _uvu.backward(uvu, grad_out, node_feats, edge_attrs, weight, order, send, row_ptr, needs)
    else:
        tables = _tables_for(plan, cg, node_feats.device, node_feats.dtype)
        if tables.reason:
            _fallback(tables.reason)
            return reference.conv_backward(grad_out, node_feats, edge_attrs, weight, sender, receiver, plan, cg,
                                           needs)
        order, row_ptr = _receiver_graph(receiver, n_nodes, deterministic)
        g_edge1, g2, gw = _ops().tp_backward(grad_out.contiguous(), node_feats.contiguous(),
                                             edge_attrs.contiguous(), weight.contiguous(), sender.long().contiguous(),
                                             order, row_ptr,
                                             tables.instr, tables.cg, list(needs), tables.threads)
    g1 = g_edge1  # [n_edges, dim1] per edge -> [n_nodes, dim1] summed by sender
    if needs[0]:  # (keyed on the given sender: an int32 one's .long() is a new tensor every call)
        sender_order, sender_ptr = _sender_graph(sender, n_nodes, sender_perm)
        g1 = _ops().segment_sum(g_edge1, sender_order, sender_ptr)
    if needs[2] and weight.dim() == 1:
        gw = gw.sum(0)
    return g1, g2, gw


def _conv_backward_into(uvu: "_uvu.UvuKernels", weight_grad: Tensor, grad_out: Tensor, node_feats: Tensor,
                        edge_attrs: Tensor, weight: Tensor, sender: Tensor, receiver: Tensor,
                        sender_perm: Optional[Tensor], deterministic: bool, needs: List[bool]):
    """``conv_backward`` on the uvu kernels with the weight gradient added into ``weight_grad [n_edges,
    weight_numel]``: ``(grad_node [n_nodes, dim1], grad_edge [n_edges, dim2])``, None where not needed."""
    n_nodes = node_feats.shape[0]
    order, row_ptr = _receiver_graph(receiver, n_nodes, deterministic)
    send = _sorted_senders(sender, receiver, order)
    g1_atomic = needs[0] and not deterministic and sender_perm is None  # as conv_backward's atomic mode
    g1, g2 = _uvu.backward_into(uvu, weight_grad, grad_out, node_feats, edge_attrs, weight, order, send, row_ptr,
                                needs, g1_atomic)
    if g1 is not None and not g1_atomic:  # [n_edges, dim1] per edge -> [n_nodes, dim1] by sender
        sender_order, sender_ptr = _sender_graph(sender, n_nodes, sender_perm)
        g1 = _ops().segment_sum(g1, sender_order, sender_ptr)
    return g1, g2


def conv_double_backward(grad_grad_node: Tensor, grad_grad_edge: Tensor, grad_grad_weight: Tensor, grad_out: Tensor,
                         node_feats: Tensor, edge_attrs: Tensor, weight: Tensor, sender: Tensor, receiver: Tensor,
                         sender_perm: Optional[Tensor], plan: List[int], cg: List[float], deterministic: bool,
                         needs: List[bool]):
    """The per-problem fused kernel where the uvu kernels apply and it fits (``fuses_double_backward``), else the
    composition of this module's forward and backward (without the ops' dispatch around each call)."""
    cotangents = [g if g.numel() else None for g in (grad_grad_node, grad_grad_edge, grad_grad_weight)]
    uvu = _uvu.kernels_for(plan, cg, node_feats.dtype, node_feats.device, weight.dim() == 2)
    if uvu is None or not uvu.fuses_double_backward:
        graph = (sender, receiver, sender_perm)
        grads = _trilinear.planned_double_backward(
            lambda a, b, c, p: conv(a, b, c, *graph, p, cg, deterministic),
            lambda g, a, b, c, p, n: conv_backward(g, a, b, c, *graph, p, cg, deterministic, n),
            plan, grad_out, node_feats, edge_attrs, weight, cotangents, needs,
            None if uvu is None else lambda dest, g, a, b, c, n: _conv_backward_into(
                uvu, dest, g, a, b, c, *graph, deterministic, n))
    else:
        n_nodes = node_feats.shape[0]
        order, row_ptr = _receiver_graph(receiver, n_nodes, deterministic)
        atomic = not deterministic and sender_perm is None
        grads = list(_uvu.double_backward(uvu, cotangents, grad_out, node_feats, edge_attrs, weight, order,
                                          _sorted_senders(sender, receiver, order), row_ptr, needs, atomic))
        if grads[1] is not None and not atomic:  # [n_edges, dim1] per edge -> [n_nodes, dim1] by sender
            sender_order, sender_ptr = _sender_graph(sender, n_nodes, sender_perm)
            grads[1] = _ops().segment_sum(grads[1], sender_order, sender_ptr)
    return _trilinear.op_outputs(grads, (grad_out, node_feats, edge_attrs, weight), needs)


# ---- spherical harmonics --------------------------------------------------------------------------
_sh_max_l: List[int] = []


def _sh_supported(ls: List[int]) -> bool:
    if not _sh_max_l:
        _sh_max_l.append(int(_ops().sh_max_l()))
    if max(ls) > _sh_max_l[0] or len(ls) > 32:
        _fallback(f"spherical harmonics of degree > {_sh_max_l[0]} (or more than 32 entries in ls) have no CUDA kernel")
        return False
    return True


def spherical_harmonics(vectors: Tensor, ls: List[int], normalize: bool, normalization: str) -> Tensor:
    if not _sh_supported(ls):
        return reference.spherical_harmonics(vectors, ls, normalize, normalization)
    return _ops().sh_forward(vectors.contiguous(), list(ls), normalize, normalization)


def spherical_harmonics_backward(grad_sh: Tensor, vectors: Tensor, ls: List[int], normalize: bool,
                                 normalization: str) -> Tensor:
    if not _sh_supported(ls):
        return reference.spherical_harmonics_backward(grad_sh, vectors, ls, normalize, normalization)
    return _ops().sh_backward(grad_sh.contiguous(), vectors.contiguous(), list(ls), normalize, normalization)


def spherical_harmonics_double_backward(grad_grad_vectors: Tensor, grad_sh: Tensor, vectors: Tensor, ls: List[int],
                                        normalize: bool, normalization: str):
    if not _sh_supported(ls):
        return reference.spherical_harmonics_double_backward(grad_grad_vectors, grad_sh, vectors, ls, normalize,
                                                             normalization)
    return _ops().sh_double_backward(grad_grad_vectors.contiguous(), grad_sh.contiguous(), vectors.contiguous(),
                                     list(ls), normalize, normalization)


KERNEL_NAMES = ("spherical_harmonics", "spherical_harmonics_backward", "spherical_harmonics_double_backward",
                "tensor_product", "tensor_product_backward", "conv", "conv_backward", "conv_double_backward",
                "conv_radial")


def load(device: Optional[torch.device] = None) -> None:
    """Build (or find in the cache) and load the extension, then register the kernels for CUDA tensors."""
    _build.load(device)
    kernels = {name: globals()[name] for name in KERNEL_NAMES}
    kernels.update({name: getattr(_sc, name) for name in _sc.KERNEL_NAMES})
    kernels.update({name: getattr(_element_linear, name) for name in _element_linear.KERNEL_NAMES})
    # the linear's matrix products: cuBLAS through torch.mm (reference/linear.py), the fastest kernel for them
    kernels.update(linear=reference.linear, linear_outer=reference.linear_outer)
    _backend.KERNELS["cuda"] = kernels
