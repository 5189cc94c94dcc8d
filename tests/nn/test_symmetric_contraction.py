"""``batmobile_nn.nn.SymmetricContraction`` against mace-torch's ``SymmetricContraction`` (0.3.16) on MACE-MP-like
product bases (``C x 0e+1o+2e+3o`` in; ``0e`` / ``0e+1o`` / ``0e+1o+2e`` out: small / medium / large): the same
``U`` buffers bit for bit, ``state_dict`` both ways, values, first and second derivatives w.r.t. the features and
the weights in float32 and float64; and the module's own argument checks. The module takes its ``U`` tensors
from mace, so the whole file skips where mace-torch is not installed (CI's e3nn 0.6 environment); the op's
own tests (tests/ops/test_symmetric_contraction.py) run there."""

import doctest
from functools import lru_cache

import pytest
import torch

pytest.importorskip("mace")

from ops._compare import assert_derivatives_match, derivatives, randn

import batmobile_nn.nn._symmetric_contraction
from batmobile_nn.nn import SymmetricContraction

C, N_ELEMENTS, N_NODES = 4, 3, 6
IRREPS_IN = f"{C}x0e+{C}x1o+{C}x2e+{C}x3o"  # num_features x the spherical harmonics up to l = 3
OUT = {"small": f"{C}x0e", "medium": f"{C}x0e+{C}x1o", "large": f"{C}x0e+{C}x1o+{C}x2e"}


@pytest.fixture(scope="module")
def mace_sc():
    pytest.importorskip("mace")
    from mace.modules.symmetric_contraction import SymmetricContraction as MaceSymmetricContraction

    return MaceSymmetricContraction


def _build(cls, irreps_in, irreps_out, correlation, dtype, **kwargs):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # both keep U and the weights in the default dtype
    try:
        return cls(irreps_in, irreps_out, correlation, num_elements=N_ELEMENTS, **kwargs)
    finally:
        torch.set_default_dtype(previous)


@lru_cache(maxsize=None)
def _mace(cls, irreps_out, correlation, dtype, irreps_in=IRREPS_IN):
    return _build(cls, irreps_in, irreps_out, correlation, dtype)


def _inputs(module, dtype, seed=0):
    L = module.irreps_in.dim // C
    (x,) = randn([(N_NODES, C, L)], dtype, seed)
    element = torch.tensor([0, 2, 1, 1, 0, 2])
    return x, torch.nn.functional.one_hot(element, N_ELEMENTS).to(dtype)


def _as_function(module, y):
    """``f(x, *weights)`` through ``torch.func.functional_call``, for the trainable weights."""
    names = [name for name, p in module.named_parameters() if p.requires_grad]
    return names, lambda x, *weights: torch.func.functional_call(module, dict(zip(names, weights)), (x, y))


@pytest.mark.parametrize("size, correlation", [("small", 3), ("medium", 3), ("large", 3), ("medium", 1),
                                               ("medium", 2)], ids=str)
def test_matches_mace(size, correlation, dtype, mace_sc):
    theirs, reference = _mace(mace_sc, OUT[size], correlation, dtype), _mace(mace_sc, OUT[size], correlation,
                                                                           torch.float64)
    ours = _build(SymmetricContraction, IRREPS_IN, OUT[size], correlation, dtype)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    for key, value in theirs.state_dict().items():
        mine = ours.state_dict()[key]
        assert mine.shape == value.shape and mine.dtype == value.dtype, key
        if "weights" not in key or "zeroed" in key:  # U_matrix_*, the flags: computed, bit for bit
            assert torch.equal(mine, value), key
    ours.load_state_dict(theirs.state_dict())
    x, y = _inputs(ours, dtype)
    names, f_ours = _as_function(ours, y)
    names_theirs, f_theirs = _as_function(theirs, y)
    _, f_reference = _as_function(reference, y.double())
    assert names == names_theirs
    weights = [p.detach() for name, p in theirs.named_parameters() if name in names]
    result = derivatives(f_ours, [x, *weights], round_to=dtype)
    expected = derivatives(f_reference, [x.double(), *(w.double() for w in weights)], round_to=dtype)
    same_precision = derivatives(f_theirs, [x, *weights], round_to=dtype) if dtype != torch.float64 else None
    assert_derivatives_match(result, expected, dtype, same_precision, f"{size} correlation={correlation}")


def test_state_dict_round_trip_and_zero_paths(mace_sc):
    """Both directions, and a case where a degree has no path (mace freezes a weight at zero)."""
    for irreps_in, irreps_out in [(IRREPS_IN, OUT["medium"]), (f"{C}x0e+{C}x1o", f"{C}x1e")]:
        theirs = _build(mace_sc, irreps_in, irreps_out, 3, torch.float64)
        ours = _build(SymmetricContraction, irreps_in, irreps_out, 3, torch.float64)
        assert [(n, p.requires_grad) for n, p in ours.named_parameters()] == \
            [(n, p.requires_grad) for n, p in theirs.named_parameters()]
        x, y = _inputs(ours, torch.float64, seed=1)
        ours.load_state_dict(theirs.state_dict())
        torch.testing.assert_close(ours(x, y), theirs(x, y), rtol=0, atol=1e-12)
        with torch.no_grad():
            for p in ours.parameters():
                p.add_(0.5 if p.requires_grad else 0.0)
        theirs.load_state_dict(ours.state_dict())
        torch.testing.assert_close(theirs(x, y), ours(x, y), rtol=0, atol=1e-12)


def test_element_index_equals_one_hot():
    sc = _build(SymmetricContraction, f"{C}x0e+{C}x1o", f"{C}x0e+{C}x1o", 2, torch.float64)
    x, y = _inputs(sc, torch.float64)
    expected = sc(x, y)
    for index in (y.argmax(-1), y.argmax(-1).int()):
        torch.testing.assert_close(sc(x, index), expected, rtol=0, atol=0)


def test_module_bad_inputs():
    sc = _build(SymmetricContraction, f"{C}x0e+{C}x1o", f"{C}x0e+{C}x1o", 2, torch.float64)
    x, y = _inputs(sc, torch.float64)
    with pytest.raises(ValueError, match=r"y \(node_attrs\) must have shape \[n_nodes=\d+, num_elements=3\]"):
        sc(x, y[:, :2])
    with pytest.raises(ValueError, match="x must have last dimension|u\\[0\\] \\(degree 1\\) must have shape"):
        sc(x[:, :, :3], y)
    with pytest.raises(ValueError, match="weight must have shape"):
        sc(x[:, :2], y)
    with pytest.raises(ValueError, match="is torch.float64 but x is torch.float32"):
        sc(x.float(), y)
    with pytest.raises(ValueError, match=r"element holds indices in \[0, 3\] but weight has 3 elements"):
        sc(x, torch.tensor([0, 1, 2, 3, 0, 1]))


@pytest.mark.parametrize("kwargs, match", [
    (dict(irreps_in="4x0e+2x1o"), "irreps_in must be num_features copies of each irrep"),
    (dict(irreps_in="4x1o"), "irreps_in must be num_features copies of each irrep"),
    (dict(irreps_in="4x0e"), "irreps_in must couple more than one scalar"),
    (dict(correlation=4), r"correlation must be an int in \[1, 3\], got 4"),
    (dict(correlation=0), r"correlation must be an int in \[1, 3\], got 0"),
    (dict(correlation={"0e": 2}), "correlation has no entry for output irrep 1o"),
    (dict(num_elements=None), "num_elements must be a positive int"),
    (dict(internal_weights=False), "internal_weights=False / shared_weights=False are not supported"),
    (dict(irrep_normalization="unit"), "irrep_normalization must be"),
    (dict(path_normalization="unit"), "path_normalization must be"),
])
def test_constructor_checks(kwargs, match):
    args = dict(irreps_in=f"{C}x0e+{C}x1o", irreps_out=f"{C}x0e+{C}x1o", correlation=2, num_elements=N_ELEMENTS)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        SymmetricContraction(**args)


def test_per_output_correlation():
    sc = SymmetricContraction(f"{C}x0e+{C}x1o", f"{C}x0e+{C}x1o", {"0e": 3, "1o": 1}, num_elements=N_ELEMENTS)
    assert sc.correlations == [3, 1]
    assert "contractions.1.weights.0" not in sc.state_dict() and "contractions.0.weights.1" in sc.state_dict()


@pytest.mark.parametrize("mode", ["script", "compile"])
def test_script_and_compile(mode):
    """TorchScript (as MACE deploys) and ``torch.compile(fullgraph=True)`` equal eager, value and gradient."""
    torch._dynamo.reset()
    for correlation in ([1, 3] if mode == "script" else [3]):
        sc = _build(SymmetricContraction, f"{C}x0e+{C}x1o+{C}x2e", f"{C}x0e+{C}x1o", correlation, torch.float64)
        compiled = torch.jit.script(sc) if mode == "script" else torch.compile(sc, fullgraph=True, backend="aot_eager")
        x, y = _inputs(sc, torch.float64)
        x.requires_grad_()
        for module in (sc, compiled):
            out = module(x, y)
            (grad,) = torch.autograd.grad(out.square().sum(), x)
            if module is sc:
                expected = (out.detach(), grad)
        torch.testing.assert_close((out.detach(), grad), expected, rtol=0, atol=0)
    torch._dynamo.reset()


def test_docstring_example():
    results = doctest.testmod(batmobile_nn.nn._symmetric_contraction, verbose=False, report=True)
    assert results.attempted > 0 and results.failed == 0
