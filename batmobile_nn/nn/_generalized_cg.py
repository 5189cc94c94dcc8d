"""MACE's generalized Clebsch-Gordan tensors ``U`` for the symmetric contraction, without mace.

A port of ``_wigner_nj`` and ``U_matrix_real`` from mace-torch 0.3.16 (``mace/tools/cg.py``, MIT License,
Ilyes Batatia, after e3nn by Mario Geiger), same operations in the same order and dtype, so the tensors
equal mace's bit for bit. The coupling of ``correlation`` copies of the input irreps is computed once per
``(irreps_in, correlation, dtype)`` and shared by every output irrep.
"""

import importlib.util
from functools import lru_cache
from typing import Tuple

import torch
from e3nn import o3


@lru_cache(maxsize=16)
def _wigner_nj(irreps: str, correlation: int, dtype: torch.dtype) -> Tuple[Tuple[o3.Irrep, torch.Tensor], ...]:
    """``(ir_out, E)`` for every coupling path of ``correlation`` copies of ``irreps``, sorted by ``ir_out``
    (mace's ``_wigner_nj`` with ``normalization="component"``, no ``filter_ir_mid``, paths dropped)."""
    irreps_in = o3.Irreps(irreps)
    if correlation == 1:
        e = torch.eye(irreps_in.dim, dtype=dtype)
        ret, i = [], 0
        for mul, ir in irreps_in:
            for _ in range(mul):
                ret.append((ir, e[i:i + ir.dim]))
                i += ir.dim
        return tuple(ret)
    dims_left = [irreps_in.dim] * (correlation - 1)
    ret = []
    for ir_left, C_left in _wigner_nj(irreps, correlation - 1, dtype):
        i = 0
        for mul, ir in irreps_in:
            for ir_out in ir_left * ir:
                C = o3.wigner_3j(ir_out.l, ir_left.l, ir.l, dtype=dtype) * ir_out.dim**0.5
                C = torch.einsum("jk,ijl->ikl", C_left.flatten(1), C)
                C = C.reshape(ir_out.dim, *dims_left, ir.dim)
                for u in range(mul):
                    E = torch.zeros(ir_out.dim, *dims_left, irreps_in.dim, dtype=dtype)
                    E[..., i + u * ir.dim:i + (u + 1) * ir.dim] = C
                    ret.append((ir_out, E))
            i += mul * ir.dim
    return tuple(sorted(ret, key=lambda x: x[0]))


def _u_matrix_real(irreps_in: o3.Irreps, irreps_out: o3.Irreps, correlation: int, dtype: torch.dtype) -> torch.Tensor:
    """mace's ``U_matrix_real(...)[-1]`` without cuequivariance."""
    wigners = _wigner_nj(str(irreps_in), correlation, dtype)
    current_ir, last_ir = wigners[0][0], None
    stack = torch.tensor([], dtype=dtype)
    for ir, base_o3 in wigners:  # mace's loop; mace returns every matched irrep's stack, we need the last
        if ir in irreps_out and ir == current_ir:
            stack = torch.cat((stack, base_o3.squeeze().unsqueeze(-1)), dim=-1)
            last_ir = current_ir
        elif ir in irreps_out and ir != current_ir:
            stack = base_o3.squeeze().unsqueeze(-1)
            current_ir, last_ir = ir, ir
        else:
            current_ir = ir
    if last_ir is not None:
        return stack
    size = [irreps_out.dim] if irreps_out.dim != 1 else []  # no path to irreps_out: zeros, one parameter
    return torch.zeros(size + [irreps_in.dim] * correlation + [1], dtype=dtype)


def u_matrix(irreps_in, irrep_out, correlation: int, dtype: torch.dtype, use_reduced_cg: bool = False) -> torch.Tensor:
    """The ``U_matrix_{correlation}`` buffer of mace's ``Contraction``: ``[D, L, ..., L, P]`` (no ``D`` axis for
    a scalar output), a new tensor (callers may modify it).

    ``use_reduced_cg=True`` changes ``U`` in mace only where cuequivariance is installed (mace then uses
    cuequivariance's reduced symmetric basis, fewer parameters); there the tensor comes from mace itself.
    """
    irreps_in, irreps_out = o3.Irreps(irreps_in), o3.Irreps(irrep_out)
    if use_reduced_cg and importlib.util.find_spec("cuequivariance") is not None:
        try:
            from mace.tools.cg import U_matrix_real
        except ImportError as exc:
            raise ImportError("use_reduced_cg=True with cuequivariance installed takes mace's reduced basis: "
                              "install mace-torch, or pass use_reduced_cg=False") from exc
        return U_matrix_real(irreps_in, irreps_out, correlation, use_cueq_cg=True, dtype=dtype)[-1].clone()
    return _u_matrix_real(irreps_in, irreps_out, correlation, dtype).clone()
