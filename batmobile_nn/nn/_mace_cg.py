"""MACE's generalized Clebsch-Gordan tensors ``U`` for the symmetric contraction, taken from mace itself.

``batmobile_nn.nn.SymmetricContraction`` mirrors mace's module, so its ``U`` buffers come from
``mace.tools.cg.U_matrix_real`` called exactly as mace's ``Contraction`` calls it (bit for bit the same,
``use_reduced_cg`` included); the op ``torch.ops.batmobile.symmetric_contraction`` itself takes ``U`` as
tensors and needs no mace.
"""

import torch
from e3nn import o3


def u_matrix(irreps_in, irrep_out, correlation: int, dtype: torch.dtype, use_reduced_cg: bool = False) -> torch.Tensor:
    """The ``U_matrix_{correlation}`` buffer of mace's ``Contraction``: ``[D, L, ..., L, P]`` (no ``D`` axis for
    a scalar output)."""
    try:
        from mace.tools.cg import U_matrix_real
    except ImportError as exc:
        raise ImportError("batmobile_nn.nn.SymmetricContraction mirrors mace's module and takes its coupling "
                          "tensors from mace-torch: pip install 'batmobile-nn[mace]'") from exc
    return U_matrix_real(irreps_in=o3.Irreps(irreps_in), irreps_out=o3.Irreps(irrep_out), correlation=correlation,
                         use_cueq_cg=use_reduced_cg, dtype=dtype)[-1]
