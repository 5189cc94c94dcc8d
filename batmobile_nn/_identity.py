"""The key under which the per-tensor caches (graphs, element sorts, index checks) remember a tensor.

A tensor is its base object (``id``), storage pointer, offset, version counter, shape, stride, dtype and
device. The caches hold the tensor in their entries, so neither its base's ``id`` nor its memory can be
reused by another tensor while the entry lives; the version moves on every in-place change; and the base's
``id`` tells apart a new tensor that wraps reused memory (``torch.from_numpy`` of a reused array, DLPack),
which would otherwise match on pointer, shape and version. Views of one tensor (``edge_index[0]`` on every
call) share the key. Inference tensors have no version counter, and tensor subclasses (fake tensors
while tracing) and meta tensors no storage: they are not cached (``None``).
"""

from typing import Optional

import torch


def identity(t: torch.Tensor) -> Optional[tuple]:
    if type(t) not in (torch.Tensor, torch.nn.Parameter) or t.is_meta or t.is_inference():
        return None  # fake, functional and other subclasses (tracing) and meta tensors have no storage to key on
    base = t._base if t._base is not None else t
    return (id(base), t.untyped_storage().data_ptr(), t.storage_offset(), t._version, tuple(t.shape),
            tuple(t.stride()), t.dtype, t.device)
