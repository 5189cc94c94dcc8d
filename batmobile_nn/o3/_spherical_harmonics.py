"""``SphericalHarmonics`` and ``spherical_harmonics``: e3nn's signatures on our op."""

from typing import Any, List, Union

import torch
from e3nn import o3

from ..ops._sh_table import L_MAX
from ..ops.spherical_harmonics import spherical_harmonics as _sh_op

NORMALIZATIONS = ("integral", "component", "norm")


def _parse(irreps_out, irreps_in):
    """e3nn's rules: ``(degrees, irreps_in)``; odd-l ``e`` outputs imply a pseudovector input ``1e``."""
    if isinstance(irreps_out, str):
        irreps_out = o3.Irreps(irreps_out)
    if isinstance(irreps_out, o3.Irreps) and irreps_in is None:
        if any(ir.l % 2 == 1 and ir.p == 1 for _, ir in irreps_out):
            irreps_in = "1e"
    irreps_in = o3.Irreps("1o" if irreps_in is None else irreps_in)
    if irreps_in not in (o3.Irreps("1x1o"), o3.Irreps("1x1e")):
        raise ValueError(f"irreps_in must be either 1x1o (vector) or 1x1e (pseudovector), not {irreps_in}")
    input_p = irreps_in[0].ir.p
    if isinstance(irreps_out, o3.Irreps):
        for _, ir in irreps_out:
            if ir.p != input_p**ir.l:
                raise ValueError(f"irreps_out {irreps_out} asks for l = {ir.l} with parity {ir.p}, but harmonics "
                                 f"of {irreps_in} have parity {input_p**ir.l}")
        return [ir.l for mul, ir in irreps_out for _ in range(mul)], irreps_in
    if isinstance(irreps_out, int):
        return [irreps_out], irreps_in
    return [int(l) for l in irreps_out], irreps_in


class SphericalHarmonics(torch.nn.Module):
    """e3nn's ``o3.SphericalHarmonics``: the same arguments, attributes and values.

    Args:
        irreps_out: degrees as ``Irreps`` (``"0e+1o+2e"``), an int ``l`` or a list of ints (``l <= 8``).
        normalize: project the input on the sphere first.
        normalization: ``"integral"``, ``"component"`` or ``"norm"``.
        irreps_in: ``"1o"`` or ``"1e"``; by default ``"1e"`` when ``irreps_out`` holds an odd-l ``e`` irrep
            (as in e3nn), else ``"1o"``.

    Shapes: ``x [..., 3]`` -> ``[..., irreps_out.dim]``.

    >>> sh = SphericalHarmonics("0e+1o+2e+3o", normalize=True, normalization="component")
    >>> sh(torch.randn(10, 3)).shape
    torch.Size([10, 16])
    """

    normalize: bool
    normalization: str
    _ls_list: List[int]
    _lmax: int

    def __init__(self, irreps_out: Union[int, List[int], str, o3.Irreps], normalize: bool,
                 normalization: str = "integral", irreps_in: Any = None):
        super().__init__()
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
        ls, irreps_in = _parse(irreps_out, irreps_in)
        if len(ls) == 0 or min(ls) < 0 or max(ls) > L_MAX:
            raise ValueError(f"degrees must be a non-empty list in [0, {L_MAX}], got {ls}")
        self.normalize = normalize
        self.normalization = normalization
        self.irreps_in = irreps_in
        input_p = irreps_in[0].ir.p
        self.irreps_out = o3.Irreps([(1, (l, input_p**l)) for l in ls]).simplify()
        self._ls_list = ls
        self._lmax = max(ls)

    @classmethod
    def from_e3nn(cls, stock: o3.SphericalHarmonics) -> "SphericalHarmonics":
        """The module computing what e3nn's ``stock`` computes (same degrees, input parity and normalization)."""
        return cls(list(stock._ls_list), stock.normalize, stock.normalization, irreps_in=stock.irreps_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 0 or x.shape[-1] != 3:
            raise ValueError("SphericalHarmonics: x must have shape [..., 3], got " + str(list(x.shape)))
        batch = x.shape[:-1]
        if torch.jit.is_scripting():
            sh = torch.ops.batmobile.spherical_harmonics(x.reshape(-1, 3), self._ls_list, self.normalize,
                                                         self.normalization)  # [n, irreps_out.dim]
        else:  # eager: without the custom-op layers (ops/_eager.py)
            sh = _sh_op(x.reshape(-1, 3), self._ls_list, self.normalize, self.normalization)
        return sh.reshape(batch + (sh.shape[-1],))

    def extra_repr(self) -> str:
        return f"{self.irreps_in} -> {self.irreps_out}, normalize={self.normalize}, {self.normalization}"


def spherical_harmonics(l: Union[int, List[int], str, o3.Irreps], x: torch.Tensor, normalize: bool,
                        normalization: str = "integral") -> torch.Tensor:
    """e3nn's ``o3.spherical_harmonics(l, x, normalize, normalization)``.

    Args:
        l: degrees, as for ``SphericalHarmonics``.
        x: ``[..., 3]`` vectors.
        normalize: project ``x`` on the sphere first.
        normalization: ``"integral"``, ``"component"`` or ``"norm"``.

    Returns:
        ``[..., dim]`` with ``dim = sum(2 l + 1)``.

    >>> spherical_harmonics([0, 1, 2, 3], torch.randn(4, 3), normalize=True).shape
    torch.Size([4, 16])
    """
    return SphericalHarmonics(l, normalize, normalization)(x)
