"""MACE's symmetric contraction (the product basis) in plain PyTorch: forward, backward, double backward.

For each output irrep ``o`` (dimension ``D``) and degree ``nu = 1 .. K_o``, with ``U [D, L**nu, P]`` (mace's
``U_matrix_nu``, the generalized Clebsch-Gordan coefficients) and the ``P`` weights ``W [E, P, C]`` of that
block, node ``b`` of element ``e`` and channel ``c`` get::

    out[b, c, m] = sum_nu sum_{i1..inu, k} U[m, i1..inu, k] W[e, k, c] x[b, c, i1] ... x[b, c, inu]

The sum over ``i1..inu`` sees only the symmetric part ``S`` of ``U`` in its ``nu`` input axes (mace's ``U`` is
not symmetric), so the derivatives symmetrize it first; then each is again a contraction of ``S``: ``d/dx``
contracts one axis less with ``x`` and multiplies by ``nu``, the second derivative two axes less by
``nu (nu - 1)``. There are no autograd calls inside: the backward and double backward are formulas a
kernel can implement too.
The weights enter per element, so each element present is one group: ``T_e = S W_e [C, D, L**nu]`` is
built once per group (``E_present * C * D * L**nu * P`` work, no ``P`` per node) and contracted with
its nodes' features, which is how mace's own einsums order it. The weight gradient needs ``P`` back, so
there the nodes' ``g (x)^nu`` products are summed per group first and contracted with ``S`` once.
"""

import itertools
import math
from typing import List, NamedTuple, Optional, Tuple

import torch
from torch import Tensor


class Block(NamedTuple):
    nu: int  # degree
    S: Tensor  # [D * L**nu, P], the symmetrized U (U itself for the forward, which needs no symmetry)
    dim: int  # D, the output irrep's dimension
    p0: int  # this block's weights are weight[:, p0:p1]
    p1: int
    col0: int  # its output irrep's columns are out[:, col0:col1], viewed [n, C, D]
    col1: int


def _symmetrized(U: Tensor, nu: int, L: int) -> Tensor:
    """``U [D, L**nu, P]`` averaged over the permutations of its ``nu`` input axes, as ``[D * L**nu, P]``."""
    D, _, P = U.shape
    if nu == 1:
        return U.reshape(D * L, P)
    Ut = U.reshape(D, *([L] * nu), P)
    if nu == 2:
        return ((Ut + Ut.transpose(1, 2)) / 2).reshape(D * L * L, P)
    if nu == 3:  # S3 = {e, (12), (13)} x {e, (23)}: three passes instead of six
        B = Ut + Ut.transpose(2, 3)
        return ((B + B.transpose(1, 2) + B.transpose(1, 3)) / 6).reshape(D * L**3, P)
    S = sum(Ut.permute(0, *perm, nu + 1) for perm in itertools.permutations(range(1, nu + 1)))
    return (S / math.factorial(nu)).reshape(D * L**nu, P)


def layout(x: Tensor, u: List[Tensor], correlations: List[int], symmetrize: bool = True) -> Tuple[List[Block], int]:
    """The blocks of ``u`` (output irrep after output irrep, degrees ascending) and the output width. The
    forward contracts every input axis with ``x`` and needs no symmetrization (``symmetrize=False``)."""
    C, L = x.shape[1], x.shape[2]
    blocks, j, p, col = [], 0, 0, 0
    for K in correlations:
        D = u[j].shape[0]
        for nu in range(1, K + 1):
            P = u[j].shape[2]
            S = _symmetrized(u[j], nu, L) if symmetrize else u[j].reshape(D * L**nu, P)
            blocks.append(Block(nu, S, D, p, p + P, col, col + C * D))
            j, p = j + 1, p + P
        col += C * D
    return blocks, col


def _groups(element: Tensor, n_elements: int) -> List[Tuple[int, Tensor]]:
    """``(e, indices of the nodes of element e)`` for every element present."""
    order = torch.argsort(element, stable=True)
    counts = torch.bincount(element, minlength=n_elements).tolist()
    groups, start = [], 0
    for e, count in enumerate(counts):
        if count:
            groups.append((e, order[start:start + count]))
            start += count
    return groups


def _element_tensor(block: Block, w: Tensor) -> Tensor:
    """``T[c, m, I] = sum_k S[m, I, k] w[k, c]`` for one element's ``w [P, C]``: ``[C, D, L**nu]``."""
    C = w.shape[1]
    return (block.S @ w).T.reshape(C, block.dim, -1)


def _contract(T: Tensor, vectors: List[Tensor]) -> Tensor:
    """``T [C, D, L**nu]`` contracted along its last ``len(vectors)`` input axes with ``vectors`` (each
    ``[n, C, L]``, channel by channel): ``[n, C, D, L**(nu - r)]`` (``[1, ...]`` when there are none)."""
    if not vectors:
        return T.unsqueeze(0)
    C, D, _ = T.shape
    n, _, L = vectors[0].shape
    # the first contraction is a batched product over channels; the node axis appears here
    y = torch.bmm(T.reshape(C, -1, L), vectors[0].permute(1, 2, 0)).permute(2, 0, 1)  # [n, C, D * L**(nu-1)]
    for v in vectors[1:]:
        y = (y.unflatten(-1, (-1, L)) @ v.unsqueeze(-1)).squeeze(-1)
    return y.reshape(n, C, D, -1)


def _kron(vectors: List[Tensor]) -> Tensor:
    """``v1 (x) v2 (x) ...`` per node and channel: ``[n, C, L**r]``."""
    out = vectors[0]
    for v in vectors[1:]:
        out = (out.unsqueeze(-1) * v.unsqueeze(-2)).flatten(-2)
    return out


def _dot_m(g: Tensor, J: Tensor) -> Tensor:
    """``sum_m g[b, c, m] J[b, c, m, i]``: ``[n, C, L]``."""
    return (g.unsqueeze(-2) @ J).squeeze(-2)


def _weight_term(block: Block, g: Tensor, vectors: List[Tensor]) -> Tensor:
    """``sum_{b, m, I} g[b, c, m] S[m, I, k] (v1 (x) v2 ...)[b, c, I]``: ``[P, C]``."""
    K = _kron(vectors)  # [n, C, L**nu]
    A = torch.bmm(g.permute(1, 2, 0), K.transpose(0, 1))  # [C, D, L**nu]
    return (A.reshape(A.shape[0], -1) @ block.S).T


def _is_given(t: Optional[Tensor]) -> bool:
    return t is not None and t.numel() > 0


def symmetric_contraction(x: Tensor, element: Tensor, weight: Tensor, u: List[Tensor],
                          correlations: List[int]) -> Tensor:
    n, C, _ = x.shape
    blocks, width = layout(x, u, correlations, symmetrize=False)
    out = x.new_zeros(n, width)
    for e, idx in _groups(element, weight.shape[0]):
        xe, out_e = x[idx], x.new_zeros(len(idx), width)
        for block in blocks:
            T = _element_tensor(block, weight[e, block.p0:block.p1])
            out_e[:, block.col0:block.col1] += _contract(T, [xe] * block.nu).reshape(len(idx), -1)
        out[idx] = out_e
    return out


def symmetric_contraction_backward(grad_out: Tensor, x: Tensor, element: Tensor, weight: Tensor, u: List[Tensor],
                                   correlations: List[int], needs: List[bool]) -> Tuple[Tensor, Tensor]:
    """Gradients ``(x, weight)``; one not asked for in ``needs`` is an empty tensor."""
    n, C, L = x.shape
    blocks, _ = layout(x, u, correlations)
    grad_x = torch.zeros_like(x) if needs[0] else x.new_empty(0)
    grad_weight = torch.zeros_like(weight) if needs[1] else weight.new_empty(0)
    for e, idx in _groups(element, weight.shape[0]):
        xe, ge_all = x[idx], grad_out[idx]
        gx_e = torch.zeros_like(xe)
        for block in blocks:
            ge = ge_all[:, block.col0:block.col1].reshape(len(idx), C, block.dim)
            if needs[0]:
                T = _element_tensor(block, weight[e, block.p0:block.p1])
                gx_e += block.nu * _dot_m(ge, _contract(T, [xe] * (block.nu - 1)))
            if needs[1]:
                grad_weight[e, block.p0:block.p1] = _weight_term(block, ge, [xe] * block.nu)
        if needs[0]:
            grad_x[idx] = gx_e
    return grad_x, grad_weight


def symmetric_contraction_double_backward(grad_grad_x: Tensor, grad_grad_weight: Tensor, grad_out: Tensor, x: Tensor,
                                          element: Tensor, weight: Tensor, u: List[Tensor], correlations: List[int],
                                          needs: List[bool]) -> Tuple[Tensor, Tensor, Tensor]:
    """Gradients ``(grad_out, x, weight)`` of ``<grad_grad_x, dx> + <grad_grad_weight, dweight>`` where
    ``(dx, dweight)`` is the backward; an empty cotangent stands for zeros, an output not asked for in
    ``needs`` is an empty tensor."""
    n, C, L = x.shape
    blocks, _ = layout(x, u, correlations)
    has_gx, has_gw = _is_given(grad_grad_x), _is_given(grad_grad_weight)
    d_g = torch.zeros_like(grad_out) if needs[0] else grad_out.new_empty(0)
    d_x = torch.zeros_like(x) if needs[1] else x.new_empty(0)
    d_w = torch.zeros_like(weight) if needs[2] else weight.new_empty(0)
    for e, idx in _groups(element, weight.shape[0]):
        m = len(idx)
        xe, ge_all = x[idx], grad_out[idx]
        gxe = grad_grad_x[idx] if has_gx else None
        dg_e, dx_e = grad_out.new_zeros(m, grad_out.shape[1]), torch.zeros_like(xe)
        for block in blocks:
            nu = block.nu
            ge = ge_all[:, block.col0:block.col1].reshape(m, C, block.dim)
            T = _element_tensor(block, weight[e, block.p0:block.p1])
            Tg = _element_tensor(block, grad_grad_weight[e, block.p0:block.p1]) if has_gw else None
            if needs[0]:
                d = 0
                if gxe is not None:
                    d = d + nu * _contract(T, [gxe] + [xe] * (nu - 1))
                if Tg is not None:
                    d = d + _contract(Tg, [xe] * nu)
                if gxe is not None or Tg is not None:  # the degrees of one output irrep add up
                    dg_e[:, block.col0:block.col1] += d.reshape(m, -1)
            if needs[1]:
                if gxe is not None and nu >= 2:
                    dx_e += nu * (nu - 1) * _dot_m(ge, _contract(T, [gxe] + [xe] * (nu - 2)))
                if Tg is not None:
                    dx_e += nu * _dot_m(ge, _contract(Tg, [xe] * (nu - 1)))
            if needs[2] and gxe is not None:
                d_w[e, block.p0:block.p1] = nu * _weight_term(block, ge, [gxe] + [xe] * (nu - 1))
        if needs[0]:
            d_g[idx] = dg_e
        if needs[1]:
            d_x[idx] = dx_e
    return d_g, d_x, d_w
