"""Spherical harmonics in plain PyTorch from the monomial table: value, gradient, Hessian.

Every harmonic is ``Y_k(x) = sum_t coef_t x^a y^b z^c`` (``ops/_sh_table.py``). With the monomials
``M(x)`` of degree ``<= l_max`` as a ``[n, n_monomials]`` matrix, values, first and second
derivatives are ``M @ V``, ``M @ G[d]`` and ``M @ H[d][e]`` for constant coefficient matrices.
With ``normalize=True`` the harmonics are evaluated at ``u = x / max(|x|, eps)`` (e3nn uses
``torch.nn.functional.normalize``), and the chain rule through ``u`` is written out below.
"""

import math
from functools import lru_cache
from typing import List, Tuple

import torch

from ..ops._sh_table import L_MAX, SH_MONOMIALS

EPS = 1e-12  # torch.nn.functional.normalize's default, used by e3nn


def _scale(l: int, normalization: str) -> float:
    if normalization == "component":
        return math.sqrt(2 * l + 1)
    if normalization == "integral":
        return math.sqrt(2 * l + 1) / math.sqrt(4 * math.pi)
    return 1.0  # "norm": the table's own normalization


@lru_cache(maxsize=64)
def _tables(ls: Tuple[int, ...], normalization: str):
    """Coefficient matrices: monomial exponents, V, G[3], H[3][3] (float64, CPU)."""
    l_max = max(ls)
    monomials = [(a, b, n - a - b) for n in range(l_max + 1) for a in range(n, -1, -1) for b in range(n - a, -1, -1)]
    index = {m: i for i, m in enumerate(monomials)}
    offsets, n_out = {}, 0
    for l in ls:
        offsets.setdefault(l, []).append(n_out)
        n_out += 2 * l + 1
    V = torch.zeros(len(monomials), n_out, dtype=torch.float64)
    G = torch.zeros(3, len(monomials), n_out, dtype=torch.float64)
    H = torch.zeros(3, 3, len(monomials), n_out, dtype=torch.float64)
    for l, m, a, b, c, coef in SH_MONOMIALS:
        for offset in offsets.get(l, ()):
            column, value = offset + m, coef * _scale(l, normalization)
            powers = (a, b, c)
            V[index[powers], column] += value
            for d in range(3):
                if powers[d] == 0:
                    continue
                p1 = list(powers)
                p1[d] -= 1
                G[d, index[tuple(p1)], column] += value * powers[d]
                for e in range(3):
                    if p1[e] == 0:
                        continue
                    p2 = list(p1)
                    p2[e] -= 1
                    H[d, e, index[tuple(p2)], column] += value * powers[d] * p1[e]
    exponents = torch.tensor(monomials, dtype=torch.long)  # [n_monomials, 3]
    return exponents, V, G, H


@lru_cache(maxsize=64)
def _tables_on(ls: Tuple[int, ...], normalization: str, dtype: torch.dtype, device: torch.device):
    """``_tables`` in ``dtype`` on ``device``, converted once."""
    exponents, V, G, H = _tables(ls, normalization)
    with torch.inference_mode(False):
        return exponents.to(device), V.to(dtype=dtype, device=device), G.to(dtype=dtype, device=device), \
            H.to(dtype=dtype, device=device)


def _prepare(vectors, ls, normalization):
    return _tables_on(tuple(ls), normalization, vectors.dtype, vectors.device)


def _monomials(u: torch.Tensor, exponents: torch.Tensor) -> torch.Tensor:
    l_max = int(exponents.max()) if exponents.numel() else 0
    powers = torch.stack([u**p for p in range(l_max + 1)], dim=0)  # [l_max+1, n, 3]
    return powers[exponents[:, 0], :, 0].T * powers[exponents[:, 1], :, 1].T * powers[exponents[:, 2], :, 2].T


def _unit(vectors: torch.Tensor, normalize: bool):
    """``u``, ``1/r`` and whether the projection term applies (``r > eps``)."""
    if not normalize:
        return vectors, torch.ones_like(vectors[:, :1]), torch.zeros_like(vectors[:, :1], dtype=torch.bool)
    r = vectors.norm(dim=1, keepdim=True)  # [n, 1]
    inv_r = 1.0 / r.clamp_min(EPS)
    return vectors * inv_r, inv_r, r > EPS


def spherical_harmonics(vectors: torch.Tensor, ls: List[int], normalize: bool, normalization: str) -> torch.Tensor:
    exponents, V, _, _ = _prepare(vectors, ls, normalization)
    u, _, _ = _unit(vectors, normalize)
    return _monomials(u, exponents) @ V  # [n, sum(2l+1)]


def _project(g: torch.Tensor, u: torch.Tensor, inv_r: torch.Tensor, projected: torch.Tensor) -> torch.Tensor:
    """``J g`` with ``J = (I - u u^T) / r`` where ``r > eps``, ``I / eps`` (normalize) or ``I``."""
    return torch.where(projected, g - (g * u).sum(1, keepdim=True) * u, g) * inv_r


def spherical_harmonics_backward(grad_sh: torch.Tensor, vectors: torch.Tensor, ls: List[int], normalize: bool,
                                 normalization: str) -> torch.Tensor:
    exponents, _, G, _ = _prepare(vectors, ls, normalization)
    u, inv_r, projected = _unit(vectors, normalize)
    mono = _monomials(u, exponents)  # [n, n_monomials]
    p = torch.stack([((mono @ G[d]) * grad_sh).sum(1) for d in range(3)], dim=1)  # [n, 3] = dF/du
    return _project(p, u, inv_r, projected)


def spherical_harmonics_double_backward(grad_grad_vectors: torch.Tensor, grad_sh: torch.Tensor, vectors: torch.Tensor,
                                        ls: List[int], normalize: bool, normalization: str):
    """Derivatives of ``<grad_grad_vectors, backward(grad_sh, vectors)>`` w.r.t. grad_sh and vectors."""
    exponents, _, G, H = _prepare(vectors, ls, normalization)
    u, inv_r, projected = _unit(vectors, normalize)
    v = grad_grad_vectors
    mono = _monomials(u, exponents)
    dY = torch.stack([mono @ G[d] for d in range(3)], dim=1)  # [n, 3, n_out] = dY/du
    Jv = _project(v, u, inv_r, projected)  # [n, 3]
    grad_grad_sh = (dY * Jv[:, :, None]).sum(1)  # [n, n_out]
    p = (dY * grad_sh[:, None, :]).sum(2)  # [n, 3]
    hessian = torch.stack([torch.stack([((mono @ H[d, e]) * grad_sh).sum(1) for e in range(3)], 1)
                           for d in range(3)], 1)  # [n, 3, 3]
    grad_vectors = _project((hessian @ Jv[:, :, None])[:, :, 0], u, inv_r, projected)
    # curvature of u(x): sum_i p_i d2u_i/dx dx applied to v, only where the projection applies
    uv, pv, pu = (u * v).sum(1, keepdim=True), (p * v).sum(1, keepdim=True), (p * u).sum(1, keepdim=True)
    curvature = -(p * uv + u * pv + v * pu) + 3 * pu * uv * u
    grad_vectors = grad_vectors + torch.where(projected, curvature * inv_r**2, torch.zeros_like(curvature))
    return grad_grad_sh, grad_vectors


L_MAX_TABLE = L_MAX
