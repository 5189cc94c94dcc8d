"""``batmobile_nn.o3.SphericalHarmonics`` / ``spherical_harmonics`` against e3nn's."""

import pytest
import torch
from e3nn import o3
from e3nn.util.test import assert_equivariant
from o3_cases import assert_close

from batmobile_nn.o3 import SphericalHarmonics, spherical_harmonics

# (irreps_out, irreps_in) in every form e3nn accepts
CONSTRUCTORS = [
    ("0e+1o+2e+3o", None), (o3.Irreps("0e+1o+2e+3o"), None), (3, None), ([0, 2, 1], None), ([1, 3, 3], None),
    ("2x1o+0e", None), ("0e+1e+2e", None), ("0e+1e+2e+3e", "1e"), ([0, 1, 2, 3], "1e"), ("0e+1o", "1o"),
    (list(range(9)), None),
]
NORMALIZATIONS = ["integral", "component", "norm"]


@pytest.mark.parametrize("irreps_out, irreps_in", CONSTRUCTORS, ids=str)
@pytest.mark.parametrize("normalize", [True, False], ids=["normalize", "raw"])
def test_constructors_and_values_match_e3nn(irreps_out, irreps_in, normalize, default_dtype):
    x = torch.randn(7, 3)
    for normalization in NORMALIZATIONS:
        theirs = o3.SphericalHarmonics(irreps_out, normalize, normalization, irreps_in=irreps_in)
        ours = SphericalHarmonics(irreps_out, normalize, normalization, irreps_in=irreps_in)
        assert ours.irreps_out == theirs.irreps_out and ours.irreps_in == theirs.irreps_in
        assert ours._ls_list == theirs._ls_list
        assert_close(ours(x), theirs(x), normalization)


@pytest.mark.parametrize("irreps_out, irreps_in", [("0e+1o", "1e"), ("0e+1e", "1o"), ("1o", "2x1o"), ("1o", "0e")],
                         ids=str)
def test_parity_mismatch_raises_like_e3nn(irreps_out, irreps_in):
    with pytest.raises(ValueError):
        o3.SphericalHarmonics(irreps_out, True, irreps_in=irreps_in)
    with pytest.raises(ValueError):
        SphericalHarmonics(irreps_out, True, irreps_in=irreps_in)


@pytest.mark.parametrize("shape", [(3,), (2, 5, 3), (0, 3), (4, 1, 3)], ids=str)
def test_batch_dims_match_e3nn(shape, default_dtype):
    x = torch.randn(shape)
    ours, theirs = SphericalHarmonics("0e+1o+2e+3o", True), o3.SphericalHarmonics("0e+1o+2e+3o", True)
    assert_close(ours(x), theirs(x), "module")
    assert_close(spherical_harmonics([1, 2], x, False, "component"),
                 o3.spherical_harmonics([1, 2], x, False, "component"), "function")


def test_zero_vector_matches_e3nn(default_dtype):
    x = torch.tensor([[0.0, 0.0, 0.0], [1.0, 2.0, 2.0]])
    for normalization in NORMALIZATIONS:
        assert_close(spherical_harmonics(list(range(4)), x, True, normalization),
                     o3.spherical_harmonics(list(range(4)), x, True, normalization), normalization)


@pytest.mark.parametrize("normalize", [True, False], ids=["normalize", "raw"])
@pytest.mark.parametrize("normalization", NORMALIZATIONS)
def test_first_and_second_derivatives_match_e3nn(normalize, normalization, default_dtype):
    x = torch.randn(6, 3, requires_grad=True)
    results = []
    for module in (o3.SphericalHarmonics, SphericalHarmonics):
        sh = module([0, 1, 2, 3, 5], normalize, normalization)
        torch.manual_seed(2)
        out = sh(x)  # [6, 1 + 3 + 5 + 7 + 11]
        grad, = torch.autograd.grad((out * torch.randn_like(out)).sum(), x, create_graph=True)
        second, = torch.autograd.grad((grad * torch.randn_like(grad)).sum(), x)
        results.append((out, grad, second))
    for name, theirs, mine in zip(["sh", "d/dx", "d2/dx2"], *results):
        assert_close(mine, theirs, name)


@pytest.mark.parametrize("irreps_in", ["1o", "1e"])
def test_equivariant(irreps_in, default_dtype):
    irreps_out = "0e+1o+2e+3o" if irreps_in == "1o" else "0e+1e+2e+3e"
    assert_equivariant(SphericalHarmonics(irreps_out, True, "component", irreps_in=irreps_in))


def test_bad_arguments_raise_value_errors():
    with pytest.raises(ValueError, match="normalization"):
        SphericalHarmonics(2, True, "unit")
    with pytest.raises(ValueError, match="degrees"):
        SphericalHarmonics(9, True)
    with pytest.raises(ValueError, match="degrees"):
        SphericalHarmonics([], True)
    with pytest.raises(ValueError, match=r"\[\.\.\., 3\]"):
        SphericalHarmonics(2, True)(torch.randn(4, 6))
    with pytest.raises(ValueError, match=r"\[\.\.\., 3\]"):
        spherical_harmonics(2, torch.randn(3, 2), True)
