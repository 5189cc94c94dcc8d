"""The tensor product of a flat plan (``ops/_plan.py``) in plain PyTorch: forward and backward.

One einsum per instruction, as e3nn's generated code does. ``weight`` is ``[batch, weight_numel]``
(per sample) or ``[weight_numel]`` (shared), e3nn's layout: per instruction, ``[mul1, mul2]`` for
``uvu`` and ``[mul1, mul2, mul_out]`` for ``uvw``, in instruction order.
The double backward is not here: the tensor product is linear in each input, so it is
composed from these two functions (``ops/tensor_product.py``).
"""

from typing import List

import torch

from ..ops import _plan


def _views(plan: List[int], cg: List[float], in1, in2, weight, dtype, device):
    """Per instruction: (ins, x1 [b, mul1, d1], x2 [b, mul2, d2], w or None, C [d1, d2, d_out])."""
    cg_t = torch.tensor(cg, dtype=dtype, device=device)
    shared = weight.dim() == 1
    for ins in _plan.unpack(plan):
        d1, d2, do = 2 * ins["l1"] + 1, 2 * ins["l2"] + 1, 2 * ins["l_out"] + 1
        mul1, mul2, mul_out = ins["mul1"], ins["mul2"], ins["mul_out"]
        x1 = in1[:, ins["in1_offset"]: ins["in1_offset"] + mul1 * d1].reshape(-1, mul1, d1)
        x2 = in2[:, ins["in2_offset"]: ins["in2_offset"] + mul2 * d2].reshape(-1, mul2, d2)
        C = cg_t[ins["cg_offset"]: ins["cg_offset"] + d1 * d2 * do].reshape(d1, d2, do)
        w = None
        if ins["weight_offset"] != _plan.NO_WEIGHT:
            shape = (mul1, mul2) if ins["mode"] == _plan.MODES["uvu"] else (mul1, mul2, mul_out)
            size = mul1 * mul2 * (1 if ins["mode"] == _plan.MODES["uvu"] else mul_out)
            w = weight[..., ins["weight_offset"]: ins["weight_offset"] + size]
            w = w.reshape(1, *shape) if shared else w.reshape(-1, *shape)
        yield ins, x1, x2, w, C


def _out_slice(ins):
    start = ins["out_offset"]
    return slice(start, start + ins["mul_out"] * (2 * ins["l_out"] + 1))


def tensor_product(in1: torch.Tensor, in2: torch.Tensor, weight: torch.Tensor, plan: List[int],
                   cg: List[float]) -> torch.Tensor:
    batch = in1.shape[0]
    out = in1.new_zeros(batch, _plan.dims(plan)[2])  # [batch, dim_out]
    for ins, x1, x2, w, C in _views(plan, cg, in1, in2, weight, in1.dtype, in1.device):
        if ins["mode"] == _plan.MODES["uvu"]:
            if w is None:
                y = torch.einsum("bui,bvj,ijk->buk", x1, x2, C)
            else:
                y = torch.einsum("buv,bui,bvj,ijk->buk", w, x1, x2, C)
        else:
            y = torch.einsum("buvw,bui,bvj,ijk->bwk", w, x1, x2, C)
        out[:, _out_slice(ins)] += y.reshape(batch, -1)
    return out


def tensor_product_backward(grad_out: torch.Tensor, in1: torch.Tensor, in2: torch.Tensor, weight: torch.Tensor,
                            plan: List[int], cg: List[float], needs: List[bool]):
    """Gradients ``(in1, in2, weight)``; an entry not asked for in ``needs`` is an empty tensor."""
    batch = in1.shape[0]
    g1 = torch.zeros_like(in1) if needs[0] else in1.new_empty(0)
    g2 = torch.zeros_like(in2) if needs[1] else in2.new_empty(0)
    gw = torch.zeros_like(weight) if needs[2] else weight.new_empty(0)
    shared = weight.dim() == 1
    for ins, x1, x2, w, C in _views(plan, cg, in1, in2, weight, in1.dtype, in1.device):
        g = grad_out[:, _out_slice(ins)].reshape(batch, ins["mul_out"], 2 * ins["l_out"] + 1)
        d1, d2 = x1.shape[2], x2.shape[2]
        uvu = ins["mode"] == _plan.MODES["uvu"]
        if needs[0]:
            if uvu:
                y = torch.einsum("bvj,ijk,buk->bui", x2, C, g) if w is None else \
                    torch.einsum("buv,bvj,ijk,buk->bui", w, x2, C, g)
            else:
                y = torch.einsum("buvw,bvj,ijk,bwk->bui", w, x2, C, g)
            g1[:, ins["in1_offset"]: ins["in1_offset"] + x1.shape[1] * d1] += y.reshape(batch, -1)
        if needs[1]:
            if uvu:
                y = torch.einsum("bui,ijk,buk->bvj", x1, C, g).expand(-1, x2.shape[1], -1) if w is None else \
                    torch.einsum("buv,bui,ijk,buk->bvj", w, x1, C, g)
            else:
                y = torch.einsum("buvw,bui,ijk,bwk->bvj", w, x1, C, g)
            g2[:, ins["in2_offset"]: ins["in2_offset"] + x2.shape[1] * d2] += y.reshape(batch, -1)
        if needs[2] and w is not None:
            z = "" if shared else "b"
            y = torch.einsum(f"bui,bvj,ijk,buk->{z}uv", x1, x2, C, g) if uvu else \
                torch.einsum(f"bui,bvj,ijk,bwk->{z}uvw", x1, x2, C, g)
            size = w[0].numel()
            gw[..., ins["weight_offset"]: ins["weight_offset"] + size] += y.reshape(-1) if shared else y.reshape(batch, -1)
    return g1, g2, gw
