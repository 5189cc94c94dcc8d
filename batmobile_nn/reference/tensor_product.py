"""The tensor product of a flat plan (``ops/_plan.py``) in plain PyTorch: forward and backward.

``weight`` is ``[batch, weight_numel]`` (per sample) or ``[weight_numel]`` (shared), e3nn's layout: per
instruction, ``[mul1, mul2]`` for ``uvu`` and ``[mul1, mul2, mul_out]`` for ``uvw``, in instruction order.

Every path is two matrix products instead of one four-operand einsum: first the Clebsch-Gordan block
is contracted with ``in2`` (``A[b, v, k, i] = sum_j x2[b, v, j] C[i, j, k]``, small), then ``A`` with ``in1``
and the weights as a batched product whose long dimension is the channel ``u`` (``[b, k, i] @ [b, i, u]``
runs about twice as fast on the CPU as the transposed ``[b, u, i] @ [b, i, k]``, or as e3nn's einsum).
Plans are unpacked and Clebsch-Gordan blocks built once (``_tp_paths.py``): a call does no table work
and no einsum path search. The double backward is not here: the tensor product is linear in each
input, so it is composed from these two functions (``ops/_trilinear.py``).
"""

from typing import List, Optional

import torch
from torch import Tensor

from ..ops import _plan
from ._tp_paths import Path, new_result, put, setup


def _operands(p: Path, C_jki: Tensor, in1: Tensor, in2: Tensor, weight: Tensor):
    """``x1t [b, i, u]`` (channels last), ``At [b, v, k, i]`` and the path's weights: ``[b|1, v, u]`` (uvu,
    channels last), ``[b|1, u * v, w]`` (uvw) or None."""
    batch = in1.shape[0]
    x1t = in1[:, p.in1].reshape(batch, p.mul1, p.d1).transpose(1, 2)
    x2 = in2[:, p.in2].reshape(batch * p.mul2, p.d2)
    At = (x2 @ C_jki).reshape(batch, p.mul2, p.d_out, p.d1)
    w = None
    if p.weight is not None:
        rows = 1 if weight.dim() == 1 else batch
        w = weight[..., p.weight]
        w = w.reshape(rows, p.mul1, p.mul2).transpose(1, 2) if p.uvu else w.reshape(rows, p.mul1 * p.mul2, p.mul_out)
    return x1t, At, w


def _uvu_left(x1t: Tensor, wt: Optional[Tensor], mul2: int) -> Tensor:
    """``T[b, (v, i), u] = w[b, u, v] x1[b, u, i]`` (``w = 1`` without weights)."""
    batch, d1, mul1 = x1t.shape
    if wt is None:
        return x1t.unsqueeze(1).expand(batch, mul2, d1, mul1).reshape(batch, mul2 * d1, mul1)
    return (wt.unsqueeze(2) * x1t.unsqueeze(1)).reshape(batch, mul2 * d1, mul1)


def _uvw_z(x1t: Tensor, At: Tensor) -> Tensor:
    """``Z[b, (u, v), k] = sum_i x1[b, u, i] A[b, v, k, i]``."""
    batch, mul2, d_out, d1 = At.shape
    Z = x1t.transpose(1, 2) @ At.permute(0, 3, 1, 2).reshape(batch, d1, mul2 * d_out)  # [b, u, v * k]
    return Z.reshape(batch, x1t.shape[2] * mul2, d_out)


def tensor_product(in1: Tensor, in2: Tensor, weight: Tensor, plan: List[int], cg: List[float]) -> Tensor:
    batch = in1.shape[0]
    layout, blocks = setup(plan, cg, in1)
    out = new_result(in1, batch, _plan.dims(plan)[2], layout.gaps_out)  # [batch, dim_out]
    for p, (C_jki, _) in zip(layout.paths, blocks):
        x1t, At, w = _operands(p, C_jki, in1, in2, weight)
        if p.uvu:
            if w is None:
                y = At.sum(1) @ x1t  # [b, k, u]
            elif p.mul2 == 1:
                y = At[:, 0] @ (x1t * w)  # [b, k, u]
            else:
                A_kvi = At.permute(0, 2, 1, 3).reshape(batch, p.d_out, p.mul2 * p.d1)
                y = A_kvi @ _uvu_left(x1t, w, p.mul2)  # [b, k, u]
            y = y.transpose(1, 2)  # [b, u, k]
        else:
            y = w.transpose(1, 2) @ _uvw_z(x1t, At)  # [b, w, k]
        put(out[:, p.out].view(batch, p.mul_out, p.d_out), y, p.first_out)
    return out


def tensor_product_backward(grad_out: Tensor, in1: Tensor, in2: Tensor, weight: Tensor, plan: List[int],
                            cg: List[float], needs: List[bool]):
    """Gradients ``(in1, in2, weight)``; an entry not asked for in ``needs`` is an empty tensor."""
    batch = in1.shape[0]
    layout, blocks = setup(plan, cg, in1)
    g1 = new_result(in1, batch, in1.shape[1], layout.gaps_in1) if needs[0] else in1.new_empty(0)
    g2 = new_result(in2, batch, in2.shape[1], layout.gaps_in2) if needs[1] else in2.new_empty(0)
    # every weight belongs to exactly one path: no gaps, no sums
    gw = torch.empty_like(weight) if needs[2] else weight.new_empty(0)
    shared = weight.dim() == 1
    for p, (C_jki, C_ikj) in zip(layout.paths, blocks):
        x1t, At, w = _operands(p, C_jki, in1, in2, weight)
        g = grad_out[:, p.out].reshape(batch, p.mul_out, p.d_out)  # [b, mul_out, k]
        # views into the results, with whether this path writes them first
        g1_p = (g1[:, p.in1].view(batch, p.mul1, p.d1), p.first_in1) if needs[0] else None
        g2_p = (g2[:, p.in2].view(batch, p.mul2, p.d2), p.first_in2) if needs[1] else None
        gw_p = None
        if needs[2] and w is not None:
            gw_p = gw[..., p.weight].view(w.shape[0], p.mul1, p.mul2) if p.uvu else gw[..., p.weight].view(w.shape)
        if p.uvu:
            _uvu_backward(p, g, x1t, At, w, C_ikj, g1_p, g2_p, gw_p, shared)
        else:
            _uvw_backward(p, g, x1t, At, w, C_ikj, g1_p, g2_p, gw_p, shared)
    return g1, g2, gw


def _uvu_backward(p: Path, g, x1t, At, wt, C_ikj, g1_p, g2_p, gw_p, shared: bool):
    batch = g.shape[0]
    if p.mul2 == 1:  # MACE's case: no sum over v
        A_ik = At[:, 0].transpose(1, 2)  # [b, i, k]
        if g1_p is not None or gw_p is not None:
            G = A_ik @ g.transpose(1, 2)  # [b, i, u]
            if g1_p is not None:
                put(g1_p[0], (G if wt is None else G * wt).transpose(1, 2), g1_p[1])
            if gw_p is not None:
                y = (x1t * G).sum(1, keepdim=True)  # [b, 1, u]
                gw_p.copy_((y.sum(0, keepdim=True) if shared else y).transpose(1, 2))
        if g2_p is not None:
            dA = (x1t if wt is None else x1t * wt) @ g  # [b, i, k]
            put(g2_p[0], (dA.reshape(batch, 1, p.d1 * p.d_out) @ C_ikj), g2_p[1])
        return
    A_kvi = At.permute(0, 2, 1, 3).reshape(batch, p.d_out, p.mul2 * p.d1)  # [b, k, v * i]
    if g1_p is not None or gw_p is not None:
        G = (A_kvi.transpose(1, 2) @ g.transpose(1, 2)).view(batch, p.mul2, p.d1, p.mul1)  # [b, v, i, u]
        if g1_p is not None:
            y = G.sum(1) if wt is None else (wt.unsqueeze(2) * G).sum(1)  # [b, i, u]
            put(g1_p[0], y.transpose(1, 2), g1_p[1])
        if gw_p is not None:
            y = (x1t.unsqueeze(1) * G).sum(2)  # [b, v, u]
            gw_p.copy_((y.sum(0, keepdim=True) if shared else y).transpose(1, 2))
    if g2_p is not None:
        if wt is None:
            dA = (x1t @ g).reshape(batch, 1, p.d1 * p.d_out)  # [b, 1, i * k], the same for every v
            put(g2_p[0], (dA @ C_ikj).expand(batch, p.mul2, p.d2), g2_p[1])
        else:
            dA = _uvu_left(x1t, wt, p.mul2) @ g  # [b, v * i, k]
            y = dA.reshape(batch * p.mul2, p.d1 * p.d_out) @ C_ikj  # [b * v, j]
            put(g2_p[0], y.view(batch, p.mul2, p.d2), g2_p[1])


def _uvw_backward(p: Path, g, x1t, At, w, C_ikj, g1_p, g2_p, gw_p, shared: bool):
    batch = g.shape[0]
    Gz = (w @ g).reshape(batch, p.mul1, p.mul2 * p.d_out)  # [b, u, v * k]
    if g1_p is not None:
        put(g1_p[0], Gz @ At.reshape(batch, p.mul2 * p.d_out, p.d1), g1_p[1])  # [b, u, i]
    if g2_p is not None:
        R = (x1t @ Gz).reshape(batch, p.d1, p.mul2, p.d_out)  # [b, i, v, k]
        y = R.transpose(1, 2).reshape(batch * p.mul2, p.d1 * p.d_out) @ C_ikj  # [b * v, j]
        put(g2_p[0], y.view(batch, p.mul2, p.d2), g2_p[1])
    if gw_p is not None:
        Z = _uvw_z(x1t, At)  # [b, u * v, k]
        if shared:
            gw_p.copy_(torch.einsum("bxk,bwk->xw", Z, g).unsqueeze(0))  # [1, u * v, w]
        else:
            gw_p.copy_(Z @ g.transpose(1, 2))  # [b, u * v, w]
