"""The symmetric-contraction kernels' generator on the CPU: the terms it reads off ``u`` and their symbolic
derivatives reproduce the reference op (forward, backward, double backward), the weight-gradient chunks
cover every node once, and the problem cache never serves the kernels of other ``u`` values.
The generated CUDA itself runs in ``tests/cuda/test_cuda_symmetric_contraction.py``."""

import os

import pytest
import torch

from batmobile_nn import _sc, _sc_codegen as codegen
from batmobile_nn import reference

from ops.test_symmetric_contraction import CASES, Case


def _emulate(spec, x, element, weight, grad_out, v):
    """What the kernels compute, term by term in Python: out, grad_x, grad_w, and along v: d_grad_out, d_x, d_w."""
    n, C, _ = x.shape
    out, d_g = torch.zeros(n, spec.width, dtype=x.dtype), torch.zeros(n, spec.width, dtype=x.dtype)
    gx, dx = torch.zeros_like(x), torch.zeros_like(x)
    gw, dw = torch.zeros_like(weight), torch.zeros_like(weight)
    for k, p, ts in spec.terms:
        terms = [(c, mono, ()) for c, mono in ts]
        along = codegen.merged(codegen.along_v(terms))
        col, D, m = spec.comps[k]
        for b in range(n):
            e = int(element[b])
            for c in range(C):
                w, g, xb, vb = weight[e, p, c], grad_out[b, col + c * D + m], x[b, c], v[b, c]
                out[b, col + c * D + m] += w * codegen.evaluate(terms, xb)
                d_g[b, col + c * D + m] += w * codegen.evaluate(along, xb, vb)
                gw[e, p, c] += g * codegen.evaluate(terms, xb)
                dw[e, p, c] += g * codegen.evaluate(along, xb, vb)
                for i in range(spec.dim):
                    gx[b, c, i] += w * g * codegen.evaluate(codegen.d_dx(terms, i), xb)
                    dx[b, c, i] += w * g * codegen.evaluate(codegen.d_dx(along, i), xb, vb)
    return out, gx, gw, d_g, dx, dw


@pytest.mark.parametrize("case", CASES, ids=str)
def test_terms_reproduce_the_reference(case):
    if not isinstance(case, Case):
        pytest.skip("needs mace-torch for real U tensors")
    x, element, weight, u = case.inputs(torch.float64, seed=5)
    x, element = x[:4], element[:4]  # the emulation is slow Python
    grad_out = torch.randn(4, case.width, dtype=torch.float64)
    v = torch.randn_like(x)
    spec = codegen.sc_spec(u, case.correlations, case.C, case.L)
    assert spec.n_params == weight.shape[1] and spec.width == case.width
    got = _emulate(spec, x, element, weight, grad_out, v)
    expected = (reference.symmetric_contraction(x, element, weight, u, case.correlations),
                *reference.symmetric_contraction_backward(grad_out, x, element, weight, u, case.correlations,
                                                          [True, True]),
                *reference.symmetric_contraction_double_backward(v, torch.empty(0, dtype=x.dtype), grad_out, x,
                                                                 element, weight, u, case.correlations, [True] * 3))
    for name, a, b in zip(["out", "grad_x", "grad_w", "d_grad_out", "d_x", "d_w"], got, expected):
        assert a.shape == b.shape, name
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10 * float(b.abs().max()), msg=name)


def test_sources_name_every_kernel_and_write_every_output():
    case = CASES[-1]  # random U: every shape of term
    x, _, _, u = case.inputs(torch.float64)
    spec = codegen.sc_spec(u, case.correlations, case.C, case.L)
    for ctype in ("float", "double"):
        forward = codegen.forward_source(spec, ctype)
        assert f"typedef {ctype} T;" in forward and "bm_sc_fwd(" in forward
        for col, D, m in spec.comps:
            assert f"orow[{col} + c * {D} + {m}]" in forward
        assert all(f"grad_x[t * DIM + {i}]" in codegen.backward_source(spec, ctype) for i in range(spec.dim))
        assert "bm_sc_dbl(" in codegen.double_backward_source(spec, ctype)
        for along in (False, True):
            source = codegen.weight_grad_source(spec, ctype, along)
            assert all(f"prow[{p} * MUL]" in source for p in range(spec.n_params))


@pytest.mark.parametrize("counts", [[0, 17, 3, 0, 8], [1], [0, 0, 9]])
def test_weight_gradient_chunks_cover_each_node_once(counts):
    element = torch.cat([torch.full((c,), e) for e, c in enumerate(counts)])[torch.randperm(sum(counts))]
    perm, start, end, chunk_ptr = _sc._chunks(element, len(counts))
    assert start.shape[0] == (len(element) + codegen.CHUNK - 1) // codegen.CHUNK + len(counts)
    seen = []
    for e in range(len(counts)):
        for q in range(int(chunk_ptr[e]), int(chunk_ptr[e + 1])):
            assert 0 < end[q] - start[q] <= codegen.CHUNK
            nodes = perm[start[q]:end[q]]
            assert (element[nodes] == e).all()
            seen += nodes.tolist()
    assert sorted(seen) == list(range(len(element)))
    assert (start[int(chunk_ptr[-1]):] == end[int(chunk_ptr[-1]):]).all()  # the chunks past the last are empty


def test_problem_cache_follows_the_values_of_u():
    case = CASES[-1]
    x, _, _, u = case.inputs(torch.float64)
    first = _sc.kernels_for(x, u, case.correlations)
    assert _sc.kernels_for(x, u, case.correlations) is first
    assert _sc.kernels_for(x, [t.clone() for t in u], case.correlations).spec == first.spec  # same values: same spec
    with torch.no_grad():
        u[0].mul_(2.0)  # in place: the version counter moves
    changed = _sc.kernels_for(x, u, case.correlations)
    assert changed.spec != first.spec


@pytest.mark.parametrize("ctype", ["float", "double"])
def test_parts_partition_the_weights_and_add_up(ctype):
    case = CASES[-1]
    _, _, _, u = case.inputs(torch.float64)
    spec = codegen.sc_spec(u, case.correlations, case.C, case.L)
    with_terms = sorted({p for _, p, _ in spec.terms})
    for kind, make in (("fwd", codegen.forward_source), ("bwd", codegen.backward_source),
                       ("dbl", codegen.double_backward_source)):
        parts = codegen.parts(spec, ctype, kind)
        assert sorted(p for part in parts for p in part) == with_terms
        first = "gx0" if kind == "bwd" else "o0"  # the first output a part stores
        assert f"] = {first};" in make(spec, ctype, parts[0], False)
        assert f"] += {first};" in make(spec, ctype, parts[0], True)
    small = dict(codegen.PART_TERMS[ctype])
    try:
        codegen.PART_TERMS[ctype].update(fwd=1)
        assert len(codegen.parts(spec, ctype, "fwd")) == len(with_terms)  # one weight per part at the smallest
    finally:
        codegen.PART_TERMS[ctype].update(small)


def test_large_float64_problems_take_the_reference_path_when_asked(monkeypatch):
    """With ``F64_LARGE_NVRTC_OPTIONS`` None (BATMOBILE_NN_SC_F64_LARGE_OPTIONS=reference) MACE-MP-large's product basis
    (5,911 terms) in float64 runs on the reference, with a warning; in float32, and MACE-MP-medium's (1,909 terms) in
    float64, on the kernels."""
    large, medium = CASES[0], CASES[1]
    if not isinstance(large, Case):
        pytest.skip("needs mace-torch for real U tensors")
    monkeypatch.setattr(_sc, "F64_LARGE_NVRTC_OPTIONS", None)
    monkeypatch.setattr(_sc, "_problems", type(_sc._problems)())
    x, _, _, u = large.inputs(torch.float64)
    with pytest.warns(UserWarning, match="reference path"):
        assert _sc.kernels_for(x, u, large.correlations) is None
    assert _sc.kernels_for(x.float(), [t.float() for t in u], large.correlations) is not None
    x, _, _, u = medium.inputs(torch.float64)
    assert _sc.kernels_for(x, u, medium.correlations) is not None


def test_large_float64_options_default_and_environment():
    """By default the large float64 problems compile with ptxas -O0 (right on an H200, where -O3 was not); the
    environment variable replaces the options, "reference" turns the kernels off for them, and a blank value keeps
    the default (never the optimized compile)."""
    parse = _sc._f64_large_options
    assert parse(None) == parse("") == parse("  ") == _sc.F64_LARGE_DEFAULT_OPTIONS == ("--ptxas-options=-O0",)
    assert parse("--device-debug --fmad=false") == ("--device-debug", "--fmad=false")
    assert parse("reference") is None and parse(" Reference ") is None
    if "BATMOBILE_NN_SC_F64_LARGE_OPTIONS" not in os.environ:  # the module's value is the parser's
        assert _sc.F64_LARGE_NVRTC_OPTIONS == _sc.F64_LARGE_DEFAULT_OPTIONS


def test_large_float64_problems_compile_with_the_options_given(monkeypatch):
    """MACE-MP-large's float64 problem takes its kernels, compiled with ``F64_LARGE_NVRTC_OPTIONS`` (and only its
    kernels: float32 and MACE-MP-medium's keep none)."""
    large, medium = CASES[0], CASES[1]
    if not isinstance(large, Case):
        pytest.skip("needs mace-torch for real U tensors")
    monkeypatch.setattr(_sc, "F64_LARGE_NVRTC_OPTIONS", ("--device-debug",))
    monkeypatch.setattr(_sc, "_problems", type(_sc._problems)())
    x, _, _, u = large.inputs(torch.float64)
    kernels = _sc.kernels_for(x, u, large.correlations)
    assert kernels is not None and kernels.options == ("--device-debug",)
    compiled = []
    monkeypatch.setattr(_sc._jit, "kernel", lambda source, name, device, options=(): compiled.append(options) or 1)
    assert kernels.handles("bm_sc_bwd", torch.device("cpu")) and set(compiled) == {("--device-debug",)}
    assert _sc.kernels_for(x.float(), [t.float() for t in u], large.correlations).options == ()
    x, _, _, u = medium.inputs(torch.float64)
    assert _sc.kernels_for(x, u, medium.correlations).options == ()

