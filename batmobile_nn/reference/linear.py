"""Reference ``linear`` / ``linear_outer``: one matrix product per irrep block (BLAS on the CPU, cuBLAS on CUDA).

A block of ``d = 2l + 1`` components is moved to ``[n * d, mul]`` rows for the product (a transient copy);
nothing but the op's inputs is kept for the backward. The same code is the op's CUDA path (a matrix
product has no better kernel to write), so on CUDA it is registered as the kernel (``_cuda.py``).
"""

import torch
from torch import Tensor


def _rows(x: Tensor) -> Tensor:
    """``[n, mul, d]`` -> ``[n * d, mul]`` (a view when ``d == 1``)."""
    n, mul, d = x.shape
    return x.reshape(n, mul) if d == 1 else x.transpose(1, 2).reshape(n * d, mul)


def linear(x: Tensor, weight: Tensor, alpha: float) -> Tensor:
    """``x [n, mul_in, d]``, ``weight [mul_in, mul_out]`` -> ``alpha * x . weight``: ``[n, mul_out, d]``."""
    if torch.is_autocast_enabled(x.device.type):  # the op computes in its inputs' dtype, as its fake says
        with torch.autocast(x.device.type, enabled=False):
            return linear(x, weight, alpha)
    n, mul_in, d = x.shape
    mul_out = weight.shape[1]
    if d == 1:  # one product, alpha inside it (beta = 0: the empty first argument is not read)
        return torch.addmm(x.new_empty(()), x.reshape(n, mul_in), weight, beta=0, alpha=alpha).view(n, mul_out, 1)
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):  # differentiable (as an oracle)
        return torch.mm(_rows(x), weight * alpha).view(n, d, mul_out).transpose(1, 2).contiguous()
    rows = torch.mm(_rows(x), weight)  # [n * d, mul_out]
    # back to [n, mul_out, d], scaled on the way (one kernel)
    return torch.mul(rows.view(n, d, mul_out).transpose(1, 2), alpha, out=x.new_empty(n, mul_out, d))


def linear_outer(x: Tensor, y: Tensor, alpha: float) -> Tensor:
    """``x [n, mul_in, d]``, ``y [n, mul_out, d]`` -> ``alpha * sum over n and m of x[n, :, m] y[n, :, m]^T``:
    ``[mul_in, mul_out]``, the weight gradient of ``linear``."""
    if torch.is_autocast_enabled(x.device.type):
        with torch.autocast(x.device.type, enabled=False):
            return linear_outer(x, y, alpha)
    return torch.addmm(x.new_empty(()), _rows(x).transpose(0, 1), _rows(y), beta=0, alpha=alpha)  # [mul_in, mul_out]
