"""What each seed function must equal, written with e3nn (build these under the ``default_dtype`` fixture)."""

from contextlib import contextmanager
from functools import lru_cache

import torch
from e3nn import o3

TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float64: dict(rtol=1e-11, atol=1e-11)}
# Batmobile's 34 paths, written out independently of the package: l1, then l2, then l_out ascending
BATMOBILE_PATHS = [(l1, l2, lo) for l1 in range(4) for l2 in range(4) for lo in range(4)
                   if abs(l1 - l2) <= lo <= l1 + l2]
SIXTEEN = "0e+1e+2e+3e"


def channels(c: int) -> str:
    return f"{c}x0e+{c}x1e+{c}x2e+{c}x3e"


@contextmanager
def default_dtype_of(dtype: torch.dtype):
    """e3nn keeps its constants in the default dtype: build its modules under the dtype they will run in."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


@lru_cache(maxsize=None)
def e3nn_simple_tp(dtype: torch.dtype) -> o3.TensorProduct:
    with default_dtype_of(dtype):
        return o3.TensorProduct(SIXTEEN, SIXTEEN, SIXTEEN, [(*p, "uvu", False) for p in BATMOBILE_PATHS])


@lru_cache(maxsize=None)
def e3nn_weighted_tp(c_in: int, c_out: int, dtype: torch.dtype) -> o3.TensorProduct:
    with default_dtype_of(dtype):
        return o3.TensorProduct(channels(c_in), SIXTEEN, channels(c_out),
                                [(*p, "uvw", True) for p in BATMOBILE_PATHS], shared_weights=True,
                                internal_weights=False)


def _irrep_major_index(c: int) -> torch.Tensor:
    """Position in the channel-major ``[c, 16]`` flattening of each e3nn (irrep-major) component."""
    return torch.tensor([u * 16 + l * l + m for l in range(4) for u in range(c) for m in range(2 * l + 1)])


def channel_major_to_e3nn(x: torch.Tensor) -> torch.Tensor:
    """``[n, c, 16]`` -> ``[n, 16 c]`` in e3nn's layout."""
    return x.reshape(x.shape[0], -1)[:, _irrep_major_index(x.shape[1])]


def e3nn_to_channel_major(x: torch.Tensor, c: int) -> torch.Tensor:
    out = x.new_zeros(x.shape[0], c * 16)
    out[:, _irrep_major_index(c)] = x
    return out.reshape(x.shape[0], c, 16)


def e3nn_sh(vectors: torch.Tensor, l_max: int) -> torch.Tensor:
    return o3.spherical_harmonics(list(range(l_max + 1)), vectors, normalize=True, normalization="component")


def e3nn_conv(tp, X, Y, W, receivers, senders):
    """e3nn's tensor product on the gathered senders, summed into the receivers (scatter)."""
    messages = tp(X[senders], Y, W)  # [n_edges, irreps_out.dim]
    return messages.new_zeros(X.shape[0], messages.shape[1]).index_add(0, receivers, messages)
