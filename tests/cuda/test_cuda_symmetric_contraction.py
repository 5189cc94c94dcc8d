"""CUDA symmetric contraction (the generated kernels of ``batmobile_nn/_sc.py``) against the einsum oracle:
values, first and second derivatives, the forces-training path (with the cotangent differentiated too),
float32 and float64, int32 elements, an element absent from the batch, no nodes, a MACE-MP-medium-sized
problem against the reference, bitwise reproducibility, gradcheck / gradgradcheck, and a bad element index."""

import pytest
import torch

from batmobile_nn import _sc, reference
from batmobile_nn.ops import symmetric_contraction
from ops._compare import assert_close
from ops.test_symmetric_contraction import CASES, Case, _forces_path, _mace_like, oracle

from cuda_cases import DEVICE, compare, randn

pytestmark = pytest.mark.cuda


def _case(case):
    if not isinstance(case, Case):
        pytest.skip("needs mace-torch for real U tensors")
    return case


def _on_gpu(case, dtype, seed=0, element_dtype=torch.int64):
    x, element, weight, u = case.inputs(torch.float64, seed, element_dtype)
    return x.to(DEVICE), element.to(DEVICE), weight.to(DEVICE), [t.to(DEVICE, dtype) for t in u]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_matches_oracle(case, dtype):
    case = _case(case)
    x, element, weight, u = _on_gpu(case, dtype)
    u64 = [t.double() for t in u]

    def ours(x, weight):
        return symmetric_contraction(x, element, weight, u, case.correlations)

    def ref(x, weight):
        return oracle(x, element, weight, u64 if x.dtype == torch.float64 else u, case.correlations)

    compare(ours, ref, [x, weight], dtype, case.name)
    # ran on the generated kernels (float64 problems above F64_MAX_TERMS with F64_LARGE_NVRTC_OPTIONS)
    assert (_sc.kernels_for(x.to(dtype), u, case.correlations) is not None) == _on_kernels(case, dtype)


def _on_kernels(case, dtype) -> bool:
    n_terms = sum(len(ts) for _, _, ts in _sc._sc_codegen.sc_spec(case.u, case.correlations, case.C, case.L).terms)
    return dtype == torch.float32 or n_terms <= _sc.F64_MAX_TERMS or _sc.F64_LARGE_NVRTC_OPTIONS is not None


@pytest.mark.parametrize("case", CASES, ids=str)
def test_forces_path(case, dtype):
    """grad_x with create_graph, then d/dx, d/dweight and d/dcotangent of a projection of it."""
    case = _case(case)
    x, element, weight, u = _on_gpu(case, dtype, seed=3)
    cotangent, projection = randn([(case.n, case.width), x.shape], torch.float64, 4)
    ours = _forces_path(lambda a, w: symmetric_contraction(a, element, w, u, case.correlations), x.to(dtype),
                        weight.to(dtype), cotangent.to(dtype), projection.to(dtype))
    u64 = [t.double() for t in u]
    expected = _forces_path(lambda a, w: oracle(a, element, w, u64, case.correlations), x, weight, cotangent,
                            projection)
    for what, a, b in zip(["grad_x", "d2/dx2", "d2/dxdw", "d2/dxdcotangent"], ours, expected):
        assert_close(a, b, dtype, f"{case.name} {what}")


def test_int32_elements_and_no_nodes(dtype):
    case = _case(CASES[0])
    x, element, weight, u = _on_gpu(case, dtype)
    x, weight = x.to(dtype), weight.to(dtype)
    a = symmetric_contraction(x, element, weight, u, case.correlations)
    b = symmetric_contraction(x, element.int(), weight, u, case.correlations)
    assert torch.equal(a, b)
    x0 = x[:0].clone().requires_grad_()
    out = symmetric_contraction(x0, element[:0], weight, u, case.correlations)
    assert out.shape == (0, case.width)
    w = weight.clone().requires_grad_()
    (gw,) = torch.autograd.grad(symmetric_contraction(x0, element[:0], w, u, case.correlations).sum(), w)
    assert torch.equal(gw, torch.zeros_like(w))


def _medium(C, n, dtype, seed=0):
    """MACE-MP-medium's product basis (0e+1o out of 0e+1o+2e+3o, correlation 3) with ``C`` channels, ``n`` nodes."""
    case = _case(_mace_like("mp-medium-corr3", "0e+1o+2e+3o", [("0e", 1), ("1o", 3)], 3))
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, C, case.L, generator=generator, dtype=torch.float64).to(DEVICE, dtype)
    weight = torch.randn(10, case.n_params, C, generator=generator, dtype=torch.float64).to(DEVICE, dtype)
    element = torch.randint(0, 9, (n,), generator=generator).to(DEVICE)
    return case, x, element, weight, [t.to(DEVICE, dtype) for t in case.u]


def test_medium_sized_problem_matches_reference(dtype):
    """5,000 nodes x 64 channels against the reference implementation in float64 (on the GPU)."""
    case, x, element, weight, u = _medium(64, 5000, dtype)
    grad_out, v = randn([(5000, 64 * 4), x.shape], dtype, 7)
    u64 = [t.double() for t in u]
    args64 = (x.double(), element, weight.double(), u64, case.correlations)
    out = symmetric_contraction(x, element, weight, u, case.correlations)
    assert_close(out, reference.symmetric_contraction(*args64), dtype, "value")
    got = _sc.symmetric_contraction_backward(grad_out, x, element, weight, u, case.correlations, [True, True])
    expected = reference.symmetric_contraction_backward(grad_out.double(), *args64, [True, True])
    for what, a, b in zip(["grad_x", "grad_weight"], got, expected):
        assert_close(a, b, dtype, what)
    got = _sc.symmetric_contraction_double_backward(v, torch.empty(0, device=DEVICE, dtype=dtype), grad_out, x,
                                                    element, weight, u, case.correlations, [True] * 3)
    empty64 = torch.empty(0, device=DEVICE, dtype=torch.float64)
    expected = reference.symmetric_contraction_double_backward(v.double(), empty64, grad_out.double(), *args64,
                                                               [True] * 3)
    for what, a, b in zip(["d_grad_out", "d_x", "d_weight"], got, expected):
        assert_close(a, b, dtype, what)


def test_grad_grad_weight_terms(dtype):
    """The double backward along grad_grad_weight (the forward and x-gradient with it as weights)."""
    case, x, element, weight, u = _medium(8, 50, dtype)
    grad_out, v, ggw = randn([(50, 8 * 4), x.shape, weight.shape], dtype, 9)
    u64 = [t.double() for t in u]
    got = _sc.symmetric_contraction_double_backward(v, ggw, grad_out, x, element, weight, u, case.correlations,
                                                    [True] * 3)
    expected = reference.symmetric_contraction_double_backward(v.double(), ggw.double(), grad_out.double(),
                                                               x.double(), element, weight.double(), u64,
                                                               case.correlations, [True] * 3)
    for what, a, b in zip(["d_grad_out", "d_x", "d_weight"], got, expected):
        assert_close(a, b, dtype, what)


def test_bitwise_reproducible():
    case, x, element, weight, u = _medium(32, 3000, torch.float32, seed=2)
    grad_out = randn([(3000, 32 * 4)], torch.float32, 3)[0]

    def run():
        out = symmetric_contraction(x, element, weight, u, case.correlations)
        return [out, *_sc.symmetric_contraction_backward(grad_out, x, element, weight, u, case.correlations,
                                                         [True, True])]
    for a, b in zip(run(), run()):
        assert torch.equal(a, b)


def test_gradcheck_and_gradgradcheck():
    case = _case(CASES[1])
    x, element, weight, u = _on_gpu(case, torch.float64)
    x, weight = x[:3].requires_grad_(), weight.requires_grad_()

    def fn(a, w):
        return symmetric_contraction(a, element[:3], w, u, case.correlations)
    assert torch.autograd.gradcheck(fn, (x, weight))
    assert torch.autograd.gradgradcheck(fn, (x, weight))


def test_bad_element_index_is_an_error():
    case = _case(CASES[0])
    x, element, weight, u = _on_gpu(case, torch.float64)
    element = element.clone()
    element[0] = weight.shape[0]
    with pytest.raises(ValueError, match="element"):
        symmetric_contraction(x, element, weight, u, case.correlations)


def test_large_float64_on_the_kernels():
    """MACE-MP-large's problem (5,911 terms) in float64 on its kernels, compiled with ``F64_LARGE_NVRTC_OPTIONS``
    (by default ptxas -O0; under ptxas' default optimization these derivatives were wrong on an H200): the forces
    path against the oracle, on a seed of its own."""
    if _sc.F64_LARGE_NVRTC_OPTIONS is None:
        pytest.skip("BATMOBILE_NN_SC_F64_LARGE_OPTIONS=reference: these problems take the reference path")
    case = _case(CASES[0])
    x, element, weight, u = _on_gpu(case, torch.float64, seed=3)
    kernels = _sc.kernels_for(x, u, case.correlations)
    assert kernels is not None and kernels.options == _sc.F64_LARGE_NVRTC_OPTIONS
    cotangent, projection = randn([(case.n, case.width), x.shape], torch.float64, 4)
    ours = _forces_path(lambda a, w: symmetric_contraction(a, element, w, u, case.correlations), x, weight,
                        cotangent, projection)
    expected = _forces_path(lambda a, w: oracle(a, element, w, u, case.correlations), x, weight, cotangent, projection)
    for what, a, b in zip(["grad_x", "d2/dx2", "d2/dxdw", "d2/dxdcotangent"], ours, expected):
        assert_close(a, b, torch.float64, f"{case.name} {what}")
