"""CUDA spherical harmonics against the reference: values, gradients and second derivatives, float32 and
float64, every normalization, with and without normalize, including zero and tiny vectors."""

import pytest
import torch

import batmobile_nn
from batmobile_nn import reference
from batmobile_nn.ops import spherical_harmonics

from cuda_cases import DEVICE, compare, randn

pytestmark = pytest.mark.cuda

N_VECTORS = 20_000


# Vectors at and around F.normalize's eps (1e-12): zero maps to zero, |x| < eps to x / eps with no
# projection, and derivatives scale like 1/|x| (compared one vector at a time: relative to their own size).
SPECIAL_VECTORS = [[0.0, 0.0, 0.0], [3e-13, -1e-13, 2e-13], [1e-6, -2e-6, 0.5e-6], [0.0, 0.0, 2.0]]


def _compare(ls, normalize, normalization, dtype, vectors=None, n=N_VECTORS, seed=0, reference_ops=False):
    """Ours against the reference differentiated by autograd on the GPU or (``reference_ops``) against the
    same ops on the CPU, where they run the reference's explicit backward and double backward."""
    def ours(v):
        return spherical_harmonics(v, ls, normalize, normalization)

    def ref(v):
        if reference_ops:  # autograd through the norm gives NaN second derivatives at the zero vector
            return spherical_harmonics(v.cpu(), ls, normalize, normalization).to(DEVICE)
        return reference.spherical_harmonics(v, ls, normalize, normalization)

    if vectors is None:
        (vectors,) = randn([(n, 3)], torch.float64, seed)
    return compare(ours, ref, [vectors], dtype, f"ls={ls} {normalize} {normalization}")


@pytest.mark.parametrize("ls", [[0, 1, 2, 3], [1, 2], [3, 0, 3], [0, 1, 2, 3, 4, 5, 6]], ids=str)
@pytest.mark.parametrize("normalization", ["integral", "component", "norm"])
def test_matches_reference_normalized(ls, normalization, dtype):
    _compare(ls, True, normalization, dtype)


@pytest.mark.parametrize("ls", [[0, 1, 2, 3], [2, 1]], ids=str)
def test_matches_reference_unnormalized(ls, dtype):
    _compare(ls, False, "component", dtype)


@pytest.mark.parametrize("vector", SPECIAL_VECTORS, ids=str)
def test_zero_and_tiny_vectors(vector, dtype):
    vectors = torch.tensor([vector], dtype=torch.float64, device=DEVICE)
    _compare([0, 1, 2, 3], True, "component", dtype, vectors, reference_ops=True)


def test_runs_cuda_kernels():
    """The CUDA op is registered (a failed build would silently run the reference)."""
    batmobile_nn._backend.implementation("spherical_harmonics", DEVICE)
    assert "spherical_harmonics" in batmobile_nn._backend.KERNELS["cuda"], "the CUDA extension did not load"


def test_degree_above_compiled_maximum_falls_back():
    ls = [int(torch.ops.batmobile_cuda.sh_max_l()) + 1]
    with pytest.warns(batmobile_nn.ReferencePathWarning, match="degree"):
        _compare(ls, True, "component", torch.float64, n=64)


def test_empty():
    out = spherical_harmonics(torch.zeros(0, 3, device=DEVICE), [0, 1], True, "component")
    assert out.shape == (0, 4)


def test_gradcheck_float64():
    (x,) = randn([(7, 3)], torch.float64, 5)
    x.requires_grad_(True)

    def fn(v):
        return spherical_harmonics(v, [0, 1, 2, 3], True, "integral")

    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))
