"""The generated uvu convolution forward with the radial layer inside (``_uvu_radial_codegen``), compiled as C++ and
run on the CPU one channel at a time, against the reference convolution of ``alpha * hidden @ radial``: MACE's
problems, float32 and float64, edges in CSR order through ``order`` / ``send`` and already sorted, an isolated
node. The GPU runs it in ``tests/cuda/test_cuda_conv_radial.py``. Also the plain forward (``_uvu_codegen``) with the
tuning the GPU compiles it with."""

import ctypes

import pytest
import torch

from batmobile_nn import _uvu, _uvu_codegen, _uvu_radial_codegen, reference
from problems import MACE_PROBLEMS, scaled
from test_sc_compiled_on_cpu import CXX, _call
from test_uvu_compiled_on_cpu import N_EDGES, N_NODES, _graph, _library

pytestmark = pytest.mark.skipif(CXX is None, reason="needs a C++ compiler")

HIDDEN, ALPHA = 5, 0.37


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("uvu_radial_cpu")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("problem", [scaled(MACE_PROBLEMS[1], 3), MACE_PROBLEMS[0]], ids=str)
def test_matches_the_reference(problem, dtype, folder):
    plan = problem.plan()
    spec, reason = _uvu_codegen.uvu_spec(plan.plan_list, plan.cg_list, True, torch.finfo(dtype).bits // 8)
    assert spec is not None, reason
    dim1, dim2, dim_out, wnumel = spec.dims
    ctype = "float" if dtype == torch.float32 else "double"
    library = _library(_uvu_radial_codegen.forward_radial_source(spec, ctype, HIDDEN, ALPHA), folder)
    generator = torch.Generator().manual_seed(4)
    x1, x2, hidden, radial = (torch.randn(shape, generator=generator, dtype=torch.float64)
                              for shape in ((N_NODES, dim1), (N_EDGES, dim2), (N_EDGES, HIDDEN), (HIDDEN, wnumel)))
    sender, receiver, order, send, row_ptr = _graph(5)
    expected = reference.conv(x1, x2, ALPHA * hidden @ radial, sender, receiver, plan.plan_list, plan.cg_list)
    # edges in any order (CSR through order, send the sender at each CSR position), then already in receiver
    # order (order left out: edge e sits at position e)
    for edge_order, edges in ((order, (x2, hidden)), (None, (x2[order], hidden[order]))):
        out = torch.full((N_NODES, dim_out), float("nan"), dtype=dtype)  # every entry must be written
        inputs = [x1.to(dtype), *(t.contiguous().to(dtype) for t in edges), radial.to(dtype)]
        for u in range(spec.threads):
            library.set_thread(ctypes.c_longlong(u))
            _call(library.bm_uvu_fwd_radial, [*inputs, edge_order, send, row_ptr, out], [N_NODES])
        tolerance = 1e-12 if dtype == torch.float64 else 2e-5
        scale = max(expected.abs().max().item(), 1.0)
        assert (out.double() - expected).abs().max().item() <= tolerance * scale, edge_order is None
        assert not out[N_NODES - 1].any(), "the isolated node got a value"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("tuning", ["gpu-default", (1, 0, False), (3, 6, True)], ids=str)
def test_plain_forward_matches_the_reference(tuning, dtype, folder):
    """``bm_uvu_fwd`` as ``_uvu`` compiles it on the GPU (edges per iteration, launch bounds, evict-first weight
    loads) and two other tunings: the same sums, edges in CSR order through ``order`` / ``send``."""
    plan = scaled(MACE_PROBLEMS[1], 3).plan()
    spec, reason = _uvu_codegen.uvu_spec(plan.plan_list, plan.cg_list, True, torch.finfo(dtype).bits // 8)
    assert spec is not None, reason
    if tuning == "gpu-default":
        tuning = (_uvu.FORWARD_UNROLL[dtype], _uvu.FORWARD_MIN_BLOCKS[dtype], _uvu.FORWARD_STREAM_WEIGHTS[dtype])
    ctype = "float" if dtype == torch.float32 else "double"
    library = _library(_uvu_codegen.forward_source(spec, ctype, *tuning), folder)
    dim1, dim2, dim_out, wnumel = spec.dims
    generator = torch.Generator().manual_seed(6)
    x1, x2, weight = (torch.randn(shape, generator=generator, dtype=torch.float64)
                      for shape in ((N_NODES, dim1), (N_EDGES, dim2), (N_EDGES, wnumel)))
    sender, receiver, order, send, row_ptr = _graph(7)
    expected = reference.conv(x1, x2, weight, sender, receiver, plan.plan_list, plan.cg_list)
    out = torch.full((N_NODES, dim_out), float("nan"), dtype=dtype)  # every entry must be written
    for u in range(spec.threads):
        library.set_thread(ctypes.c_longlong(u))
        _call(library.bm_uvu_fwd, [x1.to(dtype), x2.to(dtype), weight.to(dtype), order, send, row_ptr, out], [N_NODES])
    tolerance = 1e-12 if dtype == torch.float64 else 2e-5
    assert (out.double() - expected).abs().max().item() <= tolerance * max(expected.abs().max().item(), 1.0)
    assert not out[N_NODES - 1].any(), "the isolated node got a value"


def test_hidden_size_is_bounded():
    plan = MACE_PROBLEMS[0].plan()
    spec, _ = _uvu_codegen.uvu_spec(plan.plan_list, plan.cg_list, True)
    with pytest.raises(ValueError, match="radial layer's input size must be in 1..128"):
        _uvu_radial_codegen.forward_radial_source(spec, "float", 129, 1.0)
