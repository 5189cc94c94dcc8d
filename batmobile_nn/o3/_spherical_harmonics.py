"""``SphericalHarmonics`` and ``spherical_harmonics``: e3nn's signatures on our op."""

from typing import List, Union

import torch
from e3nn import o3

from ..ops.spherical_harmonics import spherical_harmonics as _sh_op


def _degrees(irreps_out) -> List[int]:
    if isinstance(irreps_out, str):
        irreps_out = o3.Irreps(irreps_out)
    if isinstance(irreps_out, o3.Irreps):
        return [ir.l for mul, ir in irreps_out for _ in range(mul)]
    if isinstance(irreps_out, int):
        return [irreps_out]
    return [int(l) for l in irreps_out]


class SphericalHarmonics(torch.nn.Module):
    """e3nn's ``o3.SphericalHarmonics``: the same arguments, attributes and values.

    Args:
        irreps_out: degrees as ``Irreps`` (``"0e+1o+2e"``), an int ``l`` or a list of ints.
        normalize: project the input on the sphere first.
        normalization: ``"integral"``, ``"component"`` or ``"norm"``.
        irreps_in: ``"1o"`` (default) or ``"1e"``.

    Shapes: ``x [..., 3]`` -> ``[..., irreps_out.dim]``.

    >>> sh = SphericalHarmonics("0e+1o+2e+3o", normalize=True, normalization="component")
    >>> sh(torch.randn(10, 3)).shape
    torch.Size([10, 16])
    """

    def __init__(self, irreps_out: Union[int, List[int], str, o3.Irreps], normalize: bool,
                 normalization: str = "integral", irreps_in=None):
        super().__init__()
        self.normalize = normalize
        self.normalization = normalization
        assert normalization in ["integral", "component", "norm"]
        irreps_in = o3.Irreps("1o" if irreps_in is None else irreps_in)
        if irreps_in not in (o3.Irreps("1x1o"), o3.Irreps("1x1e")):
            raise ValueError(f"irreps_in must be either 1x1o or 1x1e, not {irreps_in}")
        self.irreps_in = irreps_in
        input_p = irreps_in[0].ir.p
        ls = _degrees(irreps_out)
        if isinstance(irreps_out, (str, o3.Irreps)):
            irreps_out = o3.Irreps(irreps_out)
            if any(ir.p != input_p**ir.l for _, ir in irreps_out):
                raise ValueError(f"irreps_out {irreps_out} do not have the parity of harmonics of {irreps_in}")
        self.irreps_out = o3.Irreps([(1, (l, input_p**l)) for l in ls]).simplify()
        self._ls_list = ls
        self._lmax = max(ls)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[:-1]
        sh = _sh_op(x.reshape(-1, 3), self._ls_list, self.normalize, self.normalization)
        return sh.reshape(batch + (sh.shape[-1],))


def spherical_harmonics(l: Union[int, List[int], str, o3.Irreps], x: torch.Tensor, normalize: bool,
                        normalization: str = "integral") -> torch.Tensor:
    """e3nn's ``o3.spherical_harmonics(l, x, normalize, normalization)``: ``x [..., 3] -> [..., dim]``.

    >>> spherical_harmonics([0, 1, 2, 3], torch.randn(4, 3), normalize=True).shape
    torch.Size([4, 16])
    """
    return SphericalHarmonics(l, normalize, normalization)(x)
