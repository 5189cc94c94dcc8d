"""The key under which the per-tensor caches (graphs, element sorts, index checks) remember a tensor.

A tensor is its base object (``id``), data pointer (the storage's, plus the offset), version counter, shape,
stride, dtype and device. The caches hold the tensor in their entries, so neither its base's ``id`` nor its memory can be
reused by another tensor while the entry lives; the version moves on every in-place change; and the base's
``id`` tells apart a new tensor that wraps reused memory (``torch.from_numpy`` of a reused array, DLPack),
which would otherwise match on pointer, shape and version. Views of one tensor (``edge_index[0]`` on every
call) share the key. Inference tensors have no version counter, and tensor subclasses (fake tensors
while tracing) and meta tensors no storage: they are not cached (``None``).
"""

from typing import Optional

import torch


_PLAIN = (torch.Tensor, torch.nn.Parameter)


def identity(t: torch.Tensor) -> Optional[tuple]:
    # called several times per op call (index checks, graph caches): 1.8 us here against 2.4 us with the storage
    # object's pointer and the offset apart (this project's VM)
    if type(t) not in _PLAIN or t.is_meta or t.is_inference():
        return None  # fake, functional and other subclasses (tracing) and meta tensors have no storage to key on
    pointer = t.data_ptr()
    if not pointer and t.numel():
        return None  # functionalization's wrappers (torch.func.functionalize): no memory behind the pointer
    base = t._base
    return (id(t if base is None else base), pointer, t._version, t.shape, t.stride(), t.dtype, t.device)
