"""``batmobile_nn.o3.TensorProduct`` against ``e3nn.o3.TensorProduct`` built with the same arguments."""

import pytest
import torch
from e3nn import o3
from e3nn.util.test import assert_equivariant
from o3_cases import MACE_MP, PROBLEMS, assert_close, random_inputs

from batmobile_nn.o3 import TensorProduct

# e3nn's three resolved (shared_weights, internal_weights) combinations: (True, True) by default
FLAGS = [dict(), dict(shared_weights=False), dict(internal_weights=False)]


@pytest.fixture(params=sorted(PROBLEMS))
def problem(request):
    return PROBLEMS[request.param]


def _pair(problem, **kwargs):
    """(e3nn module, our module with the e3nn module's state loaded)."""
    e3nn_tp = o3.TensorProduct(*problem, **kwargs)
    ours = TensorProduct(*problem, **kwargs)
    ours.load_state_dict(e3nn_tp.state_dict(), strict=True)
    return e3nn_tp, ours


@pytest.mark.parametrize("flags", FLAGS, ids=lambda f: "-".join(f"{k}={v}" for k, v in f.items()) or "defaults")
def test_attributes_and_state_dict_match_e3nn(problem, flags, default_dtype):
    e3nn_tp = o3.TensorProduct(*problem, **flags)
    ours = TensorProduct(*problem, **flags)
    assert ours.weight_numel == e3nn_tp.weight_numel
    assert ours.instructions == e3nn_tp.instructions
    assert (ours.irreps_in1, ours.irreps_in2, ours.irreps_out) == (
        e3nn_tp.irreps_in1, e3nn_tp.irreps_in2, e3nn_tp.irreps_out)
    assert (ours.shared_weights, ours.internal_weights) == (e3nn_tp.shared_weights, e3nn_tp.internal_weights)
    assert ours.output_mask.dtype == e3nn_tp.output_mask.dtype
    assert torch.equal(ours.output_mask, e3nn_tp.output_mask)
    theirs_state, our_state = e3nn_tp.state_dict(), ours.state_dict()
    assert {k: (v.shape, v.dtype) for k, v in our_state.items()} == {
        k: (v.shape, v.dtype) for k, v in theirs_state.items()}
    # e3nn -> ours, strict, and every entry arrives
    ours.load_state_dict(theirs_state, strict=True)
    for name, value in theirs_state.items():
        assert torch.equal(ours.state_dict()[name], value), name
    # ours -> e3nn, strict, with weights e3nn did not have
    with torch.no_grad():
        if ours.weight.numel():
            ours.weight.copy_(torch.randn_like(ours.weight))
    e3nn_tp.load_state_dict(ours.state_dict(), strict=True)
    for name, value in ours.state_dict().items():
        assert torch.equal(e3nn_tp.state_dict()[name], value), name


def test_values_and_derivatives_match_e3nn(problem, default_dtype):
    """Per-sample weights (MACE's conv_tp): values, first and second derivatives w.r.t. all three inputs."""
    e3nn_tp, ours = _pair(problem, shared_weights=False)
    x, y, w = random_inputs(problem[0], problem[1], ours.weight_numel, (4,), shared=False, requires_grad=True)
    # the output's cotangent depends on a parameter too, as dE/d(out) depends on the layers after it
    scale = torch.randn(ours.irreps_out.dim, requires_grad=True)
    results = []
    for tp in (e3nn_tp, ours):
        torch.manual_seed(1)
        out = tp(x, y, w)  # [4, dim_out]
        grads = torch.autograd.grad((out * torch.randn_like(out) * scale).sum(), (x, y, w), create_graph=True)
        # forces-style: a loss of the first derivatives, differentiated again
        loss = sum((g * torch.randn_like(g)).sum() for g in grads)
        second = torch.autograd.grad(loss, (x, y, w, scale), allow_unused=True, materialize_grads=True)
        results.append((out, *grads, *second))
    names = ["out", "d/dx", "d/dy", "d/dw", "d2/dx", "d2/dy", "d2/dw", "d2/dscale"]
    for name, theirs, mine in zip(names, *results):
        assert_close(mine, theirs, name)


@pytest.mark.parametrize("name", sorted(MACE_MP))
def test_mace_mp_problems_match_e3nn(name, default_dtype):
    """MACE-MP's conv_tp at its real size: values and first derivatives."""
    e3nn_tp, ours = _pair(MACE_MP[name], shared_weights=False)
    x, y, w = random_inputs(*MACE_MP[name][:2], ours.weight_numel, (3,), shared=False, requires_grad=True)
    out_theirs, out_mine = e3nn_tp(x, y, w), ours(x, y, w)  # [3, dim_out]
    assert_close(out_mine, out_theirs, "out")
    cotangent = torch.randn_like(out_theirs)
    for name, theirs, mine in zip(["x", "y", "w"], torch.autograd.grad((out_theirs * cotangent).sum(), (x, y, w)),
                                  torch.autograd.grad((out_mine * cotangent).sum(), (x, y, w))):
        assert_close(mine, theirs, "d/d" + name)


@pytest.mark.parametrize("flags", [dict(), dict(internal_weights=False)], ids=["internal", "external"])
def test_shared_weights_match_e3nn(problem, flags, default_dtype):
    e3nn_tp, ours = _pair(problem, **flags)
    assert ours.shared_weights
    x, y, w = random_inputs(problem[0], problem[1], ours.weight_numel, (5,), shared=True, requires_grad=True)
    weight = None if ours.internal_weights else w
    out_theirs, out_mine = e3nn_tp(x, y, weight), ours(x, y, weight)
    assert_close(out_mine, out_theirs, "out")
    cotangent = torch.randn_like(out_theirs)
    for tp, out, results in ((e3nn_tp, out_theirs, theirs := []), (ours, out_mine, mine := [])):
        inputs = [x, y, tp.weight if ours.internal_weights else w]
        results += torch.autograd.grad((out * cotangent).sum(), inputs)
    for name, g_theirs, g_mine in zip(["x", "y", "weight"], theirs, mine):
        assert_close(g_mine, g_theirs, "d/d" + name)


@pytest.mark.parametrize("shapes", [
    ((2, 1), (1, 3), (3,)), ((3,), (1,), (3,)), ((), (), (1,)), ((2, 3), (2, 3), (1, 3)), ((0,), (0,), (0,))],
    ids=["outer", "y-bcast", "unbatched", "w-bcast", "empty"])
@pytest.mark.parametrize("shared", [False, True], ids=["per-sample", "shared"])
def test_broadcasts_leading_dims_as_e3nn(shapes, shared, default_dtype):
    problem = PROBLEMS["mixed"]
    e3nn_tp, ours = _pair(problem, shared_weights=shared, internal_weights=False)
    x_batch, y_batch, w_batch = shapes
    x = torch.randn(*x_batch, o3.Irreps(problem[0]).dim)
    y = torch.randn(*y_batch, o3.Irreps(problem[1]).dim)
    w = torch.randn(ours.weight_numel) if shared else torch.randn(*w_batch, ours.weight_numel)
    assert_close(ours(x, y, w), e3nn_tp(x, y, w), "out")


@pytest.mark.parametrize("shared_weights", [None, False], ids=["default", "per-sample"])
def test_paths_without_weights_match_e3nn(shared_weights, default_dtype):
    """weight_numel == 0: no weights needed, none internal, an empty per-sample weight accepted."""
    problem = ("2x0e+2x1o", "0e+1o", "2x0e+2x1o+2x1e", [(0, 0, 0, "uvu", False), (1, 1, 0, "uvu", False),
                                                        (1, 0, 1, "uvu", False), (1, 1, 2, "uvu", False)])
    e3nn_tp, ours = _pair(problem, shared_weights=shared_weights)
    assert ours.weight_numel == 0 and (ours.internal_weights, ours.shared_weights) == (
        e3nn_tp.internal_weights, e3nn_tp.shared_weights)
    x, y, _ = random_inputs(problem[0], problem[1], 0, (2, 3), shared=True)
    assert_close(ours(x, y), e3nn_tp(x, y), "no weight")
    if shared_weights is False:
        empty = torch.zeros(3, 0)
        assert_close(ours(x, y, empty), e3nn_tp(x, y, empty), "empty per-sample weight")


@pytest.mark.parametrize("kwargs", [
    dict(irrep_normalization="norm"), dict(irrep_normalization="none"), dict(path_normalization="path"),
    dict(path_normalization="none"), dict(irrep_normalization="norm", path_normalization="path"),
    dict(in1_var=[0.5, 2.0, 1.5], in2_var=[3.0, 0.25], out_var=[1.0, 2.0, 0.5, 4.0, 1.0, 1.0]),
], ids=["irrep-norm", "irrep-none", "path-path", "path-none", "norm-path", "variances"])
def test_normalizations_match_e3nn(kwargs, default_dtype):
    e3nn_tp, ours = _pair(PROBLEMS["mixed"], shared_weights=False, **kwargs)
    assert ours.instructions == e3nn_tp.instructions  # e3nn's path weights
    x, y, w = random_inputs(*PROBLEMS["mixed"][:2], ours.weight_numel, (3,), shared=False)
    assert_close(ours(x, y, w), e3nn_tp(x, y, w), "out")


def test_deprecated_normalization_alias():
    with pytest.warns(DeprecationWarning):
        e3nn_tp = o3.TensorProduct(*PROBLEMS["mixed"], normalization="norm", shared_weights=False)
    ours = TensorProduct(*PROBLEMS["mixed"], normalization="norm", shared_weights=False)
    assert ours.instructions == e3nn_tp.instructions


def test_equivariant(problem, default_dtype):
    tp = TensorProduct(*problem, shared_weights=False)
    x, y, w = random_inputs(problem[0], problem[1], tp.weight_numel, (6,), shared=False)
    assert_equivariant(tp, args_in=[x, y, w], irreps_in=[tp.irreps_in1, tp.irreps_in2, None],
                       irreps_out=[tp.irreps_out])


def test_bad_inputs_raise_value_errors():
    problem = PROBLEMS["mixed"]
    per_sample = TensorProduct(*problem, shared_weights=False)
    shared = TensorProduct(*problem, internal_weights=False)
    x, y, w = random_inputs(problem[0], problem[1], per_sample.weight_numel, (3,), shared=False)
    with pytest.raises(ValueError, match="weights must be given"):
        per_sample(x, y)
    with pytest.raises(ValueError, match="weights must be given"):
        shared(x, y)
    with pytest.raises(ValueError, match="shared weights must have shape"):
        shared(x, y, w)
    with pytest.raises(ValueError, match="weights must have shape"):
        per_sample(x, y, w[:, 1:])
    with pytest.raises(ValueError):
        per_sample(x[:, 1:], y, w)
    with pytest.raises(ValueError):
        per_sample(x, y[:, 1:], w)
    with pytest.raises(ValueError, match="internal_weights=True needs shared_weights=True"):
        TensorProduct(*problem, shared_weights=False, internal_weights=True)
    with pytest.raises(ValueError, match="'uuu' is not supported"):
        TensorProduct("2x0e", "2x0e", "2x0e", [(0, 0, 0, "uuu", True)])
