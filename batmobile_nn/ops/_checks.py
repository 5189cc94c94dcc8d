"""Input validation shared by every op: clear ``ValueError``s instead of out-of-bounds reads.

Shape, dtype and device checks need no data and also run in the fake (meta) implementations.
Index-range checks read the indices, so they run in the real implementations only, and are
skipped while a CUDA graph is being captured (a capture cannot synchronize).
"""

from collections import OrderedDict
from typing import Dict, Sequence, Tuple

import torch

from .._identity import identity
from . import _plan

FLOAT_DTYPES = (torch.float32, torch.float64)
INDEX_DTYPES = (torch.int32, torch.int64)
_check_indices = True


def set_index_checks(enabled: bool) -> bool:
    """Turn the index-range checks of the convolution on or off; returns the previous setting."""
    global _check_indices
    previous, _check_indices = _check_indices, bool(enabled)
    return previous


def _fail(op: str, message: str):
    raise ValueError(f"batmobile.{op}: {message}")


def float_tensor(op: str, name: str, t: torch.Tensor, ndim: int, last: int = -1):
    if t.dtype not in FLOAT_DTYPES:
        _fail(op, f"{name} must be float32 or float64, got {t.dtype}")
    if t.dim() != ndim:
        _fail(op, f"{name} must have {ndim} dimensions, got shape {tuple(t.shape)}")
    if last >= 0 and t.shape[-1] != last:
        _fail(op, f"{name} must have last dimension {last}, got shape {tuple(t.shape)}")


def same(op: str, tensors: dict):
    first_name, first = next(iter(tensors.items()))
    for name, t in tensors.items():
        if t.dtype != first.dtype:
            _fail(op, f"{name} is {t.dtype} but {first_name} is {first.dtype}: all inputs need one dtype")
        if t.device != first.device:
            _fail(op, f"{name} is on {t.device} but {first_name} is on {first.device}")


_cg_needed: Dict[Tuple[int, ...], int] = {}  # well-formed plans -> the cg length they need (a few per model)
MAX_PLANS = 256


def plan(op: str, plan_: Sequence[int], cg: Sequence[float]):
    key = tuple(plan_)
    needed = _cg_needed.get(key)
    if needed is None:
        if len(plan_) < _plan.HEADER or len(plan_) != _plan.HEADER + plan_[0] * _plan.INSTRUCTION_FIELDS:
            _fail(op, "malformed plan: build it with batmobile_nn.ops.make_plan")
        needed = max([ins["cg_offset"] + (2 * ins["l1"] + 1) * (2 * ins["l2"] + 1) * (2 * ins["l_out"] + 1)
                      for ins in _plan.unpack(plan_)], default=0)
        if len(_cg_needed) < MAX_PLANS:
            _cg_needed[key] = needed
    if needed > len(cg):
        _fail(op, "malformed plan: cg table is shorter than the plan needs")


def weights(op: str, weight: torch.Tensor, weight_numel: int, batch: int, batch_name: str):
    if weight.dim() == 1:
        if weight.shape[0] != weight_numel:
            _fail(op, f"shared weight must have shape [{weight_numel}], got {tuple(weight.shape)}")
    elif weight.dim() == 2:
        if weight.shape != (batch, weight_numel):
            _fail(op, f"weight must have shape [{batch_name}={batch}, weight_numel={weight_numel}] "
                      f"(or [{weight_numel}] for shared weights), got {tuple(weight.shape)}")
    else:
        _fail(op, f"weight must be 1-D (shared) or 2-D (per {batch_name}), got shape {tuple(weight.shape)}")


def tensor_product(op, in1, in2, weight, plan_, cg):
    plan(op, plan_, cg)
    dim1, dim2, _, weight_numel = _plan.dims(plan_)
    float_tensor(op, "in1", in1, 2, dim1)
    float_tensor(op, "in2", in2, 2, dim2)
    same(op, {"in1": in1, "in2": in2, "weight": weight})
    if in2.shape[0] != in1.shape[0]:
        _fail(op, f"in1 and in2 need the same batch size, got {in1.shape[0]} and {in2.shape[0]}")
    weights(op, weight, weight_numel, in1.shape[0], "batch")


def conv(op, node_feats, edge_attrs, weight, sender, receiver, plan_, cg):
    plan(op, plan_, cg)
    dim1, dim2, _, weight_numel = _plan.dims(plan_)
    float_tensor(op, "node_feats", node_feats, 2, dim1)
    float_tensor(op, "edge_attrs", edge_attrs, 2, dim2)
    same(op, {"node_feats": node_feats, "edge_attrs": edge_attrs, "weight": weight})
    n_edges = edge_attrs.shape[0]
    weights(op, weight, weight_numel, n_edges, "n_edges")
    for name, index in (("sender", sender), ("receiver", receiver)):
        index_tensor(op, name, index, "n_edges", n_edges, "node_feats", node_feats)


def index_tensor(op: str, name: str, index: torch.Tensor, length_name: str, length: int, owner_name: str,
                 owner: torch.Tensor):
    """``index`` is an int32/int64 tensor of shape ``[length]`` on ``owner``'s device (no data read)."""
    if index.dtype not in INDEX_DTYPES:
        _fail(op, f"{name} must be int32 or int64, got {index.dtype}")
    if index.dim() != 1 or index.shape[0] != length:
        _fail(op, f"{name} must have shape [{length_name}={length}], got {tuple(index.shape)}")
    if index.device != owner.device:
        _fail(op, f"{name} is on {index.device} but {owner_name} is on {owner.device}")


# Index tensors already checked, by identity (``batmobile_nn/_identity.py``): MACE passes one
# edge_index to every convolution of a step, forward, backward and double backward; checking it once
# saves a synchronization per call. Entries hold their tensor, so its memory cannot be reused under the key.
_checked: "OrderedDict[tuple, torch.Tensor]" = OrderedDict()
MAX_CHECKED = 16


def _key(t: torch.Tensor, bound: int):
    found = identity(t)
    return None if found is None else found + (bound,)


def index_ranges(op, n_nodes: int, _bound_is: str = "there are {} nodes", **indices: torch.Tensor):
    """Check ``0 <= index < n_nodes`` for every index tensor given (``_bound_is`` words the bound), each tensor
    once (reading the data is one synchronization on the GPU, for all of them together); skipped while a CUDA
    graph is being captured."""
    if not _check_indices or indices[next(iter(indices))].numel() == 0:
        return
    if indices[next(iter(indices))].is_cuda and torch.cuda.is_current_stream_capturing():
        return
    keys = {name: _key(index, n_nodes) for name, index in indices.items()}
    for key in keys.values():
        if key is not None and key in _checked:
            _checked.move_to_end(key)  # least recently used goes first
    new = {name: index for name, index in indices.items() if keys[name] is None or keys[name] not in _checked}
    if not new:
        return
    bounds = torch.stack([torch.stack(torch.aminmax(index)) for index in new.values()]).tolist()  # [[lo, hi], ...]
    for (name, index), (lo, hi) in zip(new.items(), bounds):
        if lo < 0 or hi >= n_nodes:
            _fail(op, f"{name} holds indices in [{lo}, {hi}] but {_bound_is.format(n_nodes)}")
    for name, index in new.items():
        if keys[name] is None:
            continue  # an inference tensor: checked every time
        _checked[keys[name]] = index
        while len(_checked) > MAX_CHECKED:
            _checked.popitem(last=False)


def sorted_receivers(op, receiver: torch.Tensor):
    if not _check_indices or receiver.numel() < 2:
        return
    if receiver.is_cuda and torch.cuda.is_current_stream_capturing():
        return
    key = _key(receiver, -1)  # -1: "sorted", apart from the range checks' keys (their bound is n_nodes >= 0)
    if key is not None and key in _checked:  # checked before (as index_ranges): no synchronization
        _checked.move_to_end(key)
        return
    if bool((receiver[1:] < receiver[:-1]).any()):
        _fail(op, "deterministic=True needs edges sorted by receiver (edge_index[1]); "
                  "sort them first, e.g. with torch.argsort(receiver, stable=True)")
    if key is not None:
        _checked[key] = receiver
        while len(_checked) > MAX_CHECKED:
            _checked.popitem(last=False)


def sender_perm(op, perm: torch.Tensor, n_edges: int, device):
    if perm.dtype not in INDEX_DTYPES or perm.dim() != 1 or perm.shape[0] != n_edges:
        _fail(op, f"sender_perm must be an int32/int64 tensor of shape [{n_edges}], "
                  f"got {perm.dtype} {tuple(perm.shape)}")
    if perm.device != device:
        _fail(op, f"sender_perm is on {perm.device} but the features are on {device}")


def spherical_harmonics(op, vectors, ls, normalization, l_max_table):
    float_tensor(op, "vectors", vectors, 2, 3)
    if len(ls) == 0 or min(ls) < 0 or max(ls) > l_max_table:
        _fail(op, f"ls must be a non-empty list of degrees in [0, {l_max_table}], got {list(ls)}")
    if normalization not in ("integral", "component", "norm"):
        _fail(op, f"normalization must be 'integral', 'component' or 'norm', got {normalization!r}")
