"""Each node's element index from the one-hot node attributes, once per ``node_attrs`` tensor.

MACE passes one ``node_attrs`` to every skip connection and product block of a step; the index tensor
computed from it keys the per-element caches of the kernels (nodes sorted by element) and its range
check, so computing it once saves those launches and synchronizations in every later module of the
step. Keyed by the tensor's identity (``batmobile_nn/_identity.py``); entries hold their tensor.
"""

from collections import OrderedDict

import torch
from torch import Tensor

from .._identity import identity

_cache: "OrderedDict[tuple, tuple]" = OrderedDict()
MAX_ENTRIES = 8


@torch.jit.unused
def element_index(node_attrs: Tensor) -> Tensor:
    """``node_attrs.argmax(-1)`` ([n_nodes], int64), the same tensor for the same ``node_attrs``."""
    if torch.compiler.is_compiling() or (node_attrs.is_cuda and torch.cuda.is_current_stream_capturing()):
        return node_attrs.argmax(dim=-1)  # nothing cached while traced or captured
    key = identity(node_attrs)
    if key is None:
        return node_attrs.argmax(dim=-1)  # an inference, fake or meta tensor: nothing to key on
    found = _cache.get(key)
    if found is not None:
        _cache.move_to_end(key)
        return found[1]
    element = node_attrs.argmax(dim=-1)  # [n_nodes]
    _cache[key] = (node_attrs, element)
    while len(_cache) > MAX_ENTRIES:
        _cache.popitem(last=False)
    return element


def element_of(y: Tensor, n_nodes: int, num_elements: int) -> Tensor:
    """Each node's element for the modules: ``y`` one-hot ``[n_nodes, num_elements]`` (read as its argmax, as
    mace's cuEquivariance path does; once per tensor outside TorchScript) or int indices ``[n_nodes]``."""
    if not y.is_floating_point():
        return y
    if y.dim() != 2 or y.shape[0] != n_nodes or y.shape[1] != num_elements:
        raise ValueError("y (node_attrs) must have shape [n_nodes=" + str(n_nodes) + ", num_elements="
                         + str(num_elements) + "], got " + str(list(y.shape)))
    if torch.jit.is_scripting():
        return y.argmax(dim=-1)  # [n_nodes]
    return element_index(y)
