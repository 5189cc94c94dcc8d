"""``torch.ops.batmobile.spherical_harmonics`` against e3nn's ``o3.spherical_harmonics`` (autograd):
values, first and second derivatives, every normalization, normalize on and off, degrees to 8."""

import pytest
import torch
from e3nn import o3

from batmobile_nn.ops import spherical_harmonics

from ._compare import assert_close, assert_derivatives_match, compare_with_e3nn, derivatives, randn

NORMALIZATIONS = ["integral", "component", "norm"]
# random vectors plus the axes, a short vector and a long one
SPECIAL = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, -1.0], [1e-3, -2e-3, 5e-4], [30.0, -20.0, 10.0]],
                       dtype=torch.float64)


def _vectors(n: int = 11, seed: int = 0) -> torch.Tensor:
    return torch.cat([randn([(n, 3)], torch.float64, seed)[0], SPECIAL])  # [n + 5, 3]


def _compare(ls, normalize, normalization, dtype, vectors):
    def ours(x):
        return spherical_harmonics(x, ls, normalize, normalization)

    def e3nn(x):
        return o3.spherical_harmonics(ls, x, normalize, normalization)

    return compare_with_e3nn(ours, e3nn, e3nn, [vectors], dtype, f"ls={ls} normalize={normalize} {normalization}")


@pytest.mark.parametrize("ls", [[0, 1, 2, 3], [1, 3]], ids=str)
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("normalization", NORMALIZATIONS)
def test_matches_e3nn(ls, normalize, normalization, dtype):
    _compare(ls, normalize, normalization, dtype, _vectors())


@pytest.mark.parametrize("ls, normalization", [([0, 1, 2, 3, 4, 5, 6], "component"), ([8], "integral"),
                                               ([3, 0, 1, 1], "norm"), ([5, 7], "component")], ids=str)
@pytest.mark.parametrize("normalize", [True, False])
def test_higher_and_unordered_degrees(ls, normalization, normalize, dtype):
    vectors = _vectors() if normalize else _vectors() / 4  # keep |x|^8 moderate without normalization
    _compare(ls, normalize, normalization, dtype, vectors)


@pytest.mark.parametrize("normalize", [True, False])
def test_zero_length_vector_behaves_like_e3nn(normalize, dtype):
    """At x = 0 e3nn's ``F.normalize`` divides by eps = 1e-12: values and (huge) first derivatives as e3nn."""
    vectors = torch.cat([torch.zeros(2, 3, dtype=torch.float64), _vectors(3)])
    ls = [0, 1, 2, 3]

    def e3nn(x):
        return o3.spherical_harmonics(ls, x, normalize, "component")

    result = derivatives(lambda x: spherical_harmonics(x, ls, normalize, "component"), [vectors.to(dtype)], 7, dtype)
    reference = derivatives(e3nn, [vectors.to(dtype).double()], 7, dtype)
    for key in ("value", "grad0"):
        assert_close(result[key], reference[key], dtype, key)
    assert (result["value"][:2, 1:] == 0).all()  # l >= 1 vanish at the origin
    assert torch.isfinite(result["grad2_0"]).all()


def test_second_derivative_at_zero_length_vector(dtype):
    """e3nn's autograd gives NaN there (the norm's double backward at 0); ours is the derivative of the
    function e3nn defines: within ``|x| <= eps`` it is ``Y(x / eps)``, a polynomial."""
    ls, eps = [0, 1, 2, 3], 1e-12
    zeros = torch.zeros(2, 3, dtype=torch.float64)
    nan = derivatives(lambda x: o3.spherical_harmonics(ls, x, True, "integral"), [zeros], 7)
    assert torch.isnan(nan["grad2_0"]).all()  # if e3nn ever fixes this, compare with it directly

    def inside_ball(x):
        return o3.spherical_harmonics(ls, x / eps, False, "integral")

    result = derivatives(lambda x: spherical_harmonics(x, ls, True, "integral"), [zeros.to(dtype)], 7, dtype)
    reference = derivatives(inside_ball, [zeros], 7, dtype)
    assert_derivatives_match(result, reference, dtype, what="|x| = 0")
    assert float(reference["grad2_0"].abs().max()) > 1e20  # a real (1 / eps^2) second derivative was compared


def test_empty_input(dtype):
    vectors = torch.zeros(0, 3, dtype=dtype, requires_grad=True)
    sh = spherical_harmonics(vectors, [0, 1, 2], True, "component")
    assert sh.shape == (0, 9)
    (grad,) = torch.autograd.grad(sh.sum(), vectors, create_graph=True)
    assert grad.shape == (0, 3)
