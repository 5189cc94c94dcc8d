"""The generated fused double backward of the uvu convolution (``_uvu_dbl_codegen``), compiled as C++ and run
on the CPU one channel at a time, against the reference's composed double backward: every combination of
cotangents, the in1 gradient added at the senders (atomic mode) or written per edge, in float32 and
float64. This checks the source's terms on any machine with a C++
compiler; the GPU runs the kernel in ``tests/cuda/test_cuda_conv.py``."""

import ctypes
import hashlib
import itertools
import subprocess

import pytest
import torch

from batmobile_nn import _jit, _uvu, _uvu_codegen, _uvu_dbl_codegen, reference
from problems import MACE_PROBLEMS, scaled
from test_sc_compiled_on_cpu import CXX, _call
from test_uvw_compiled_on_cpu import Emulator

pytestmark = pytest.mark.skipif(CXX is None, reason="needs a C++ compiler")

# one "thread" (channel) per call: the harness sets threadIdx.x and calls the kernel for every lane
PRELUDE = """#define __global__
#define __launch_bounds__(...)
#define __restrict__
struct Dim { long long x; };
static const Dim blockIdx{0}, blockDim{1}, gridDim{1};
static Dim threadIdx{0};
template <typename V> static void atomicAdd(V* p, V v) { *p += v; }
template <typename V> static V __ldcs(const V* p) { return *p; }
extern "C" void set_thread(long long u) { threadIdx.x = u; }
"""

N_NODES, N_EDGES = 7, 23


def _library(source: str, folder):
    digest = hashlib.sha1(source.encode()).hexdigest()[:16]
    cpp, library = folder / f"{digest}.cpp", folder / f"{digest}.so"
    if not library.exists():
        cpp.write_text(PRELUDE + source)
        subprocess.run([CXX, "-O1", "-shared", "-fPIC", "-o", str(library), str(cpp)], check=True)
    return ctypes.CDLL(str(library))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("uvu_cpu")


def _graph(seed):
    generator = torch.Generator().manual_seed(seed)
    sender = torch.randint(0, N_NODES - 1, (N_EDGES,), generator=generator)  # node N_NODES - 1 is isolated
    receiver = torch.randint(0, N_NODES - 1, (N_EDGES,), generator=generator)
    order = torch.argsort(receiver, stable=True)
    row_ptr = torch.searchsorted(receiver[order], torch.arange(N_NODES + 1))
    return sender, receiver, order, sender[order].contiguous(), row_ptr


def _fused(spec, dtype, has, atomic, folder, tensors, graph):
    grad_out, a, b, c, ga, gb, gc = tensors
    sender, _, order, send, row_ptr = graph
    ctype = "float" if dtype == torch.float32 else "double"
    library = _library(_uvu_dbl_codegen.double_backward_source(spec, ctype, has, atomic, serial=True), folder)
    dim1, dim2, dim_out, wnumel = spec.dims
    has_ga, has_gb, has_gc = has

    def output(shape, written):  # NaN where the kernel must write every entry (as torch.empty on the GPU)
        return torch.full(shape, float("nan") if written else 0.0, dtype=dtype)
    # outputs the launcher passes (_uvu.double_backward): d_g always, d_a / d_b / d_c when a cotangent reaches them
    d_g = output((N_NODES, dim_out), spec.out_covered)
    d_a = output((N_NODES if atomic else N_EDGES, dim1), not atomic and spec.in1_covered) if has_gb or has_gc else None
    d_b = output((N_EDGES, spec.warps, dim2), False) if has_ga or has_gc else None  # serial: added into
    d_c = output((N_EDGES, wnumel), True) if has_ga or has_gb else None
    present = [t if h else None for t, h in zip((ga, gb, gc), has)]
    for u in range(spec.threads):
        library.set_thread(ctypes.c_longlong(u))
        _call(library.bm_uvu_dbl, [grad_out, a, b, c, *present, order, send, row_ptr, d_g, d_a, d_b, d_c], [N_NODES])
    if d_a is not None and not atomic:
        d_a = torch.zeros(N_NODES, dim1, dtype=dtype).index_add_(0, sender, d_a)
    zeros = [torch.zeros(N_NODES, dim1, dtype=dtype), torch.zeros(N_EDGES, dim2, dtype=dtype),
             torch.zeros(N_EDGES, wnumel, dtype=dtype)]
    return (d_g, *(z if t is None else t for t, z in zip((d_a, None if d_b is None else d_b.sum(1), d_c), zeros)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("has", list(itertools.product([False, True], repeat=3))[1:],
                         ids=lambda h: "".join(n for n, x in zip(("a", "b", "c"), h) if x))
@pytest.mark.parametrize("problem", [scaled(MACE_PROBLEMS[1], 3), MACE_PROBLEMS[0]], ids=str)
def test_fused_double_backward_matches_the_composed_one(problem, has, dtype, folder):
    plan = problem.plan()
    spec, reason = _uvu_codegen.uvu_spec(plan.plan_list, plan.cg_list, True, torch.finfo(dtype).bits // 8)
    assert spec is not None, reason
    dim1, dim2, dim_out, wnumel = spec.dims
    generator = torch.Generator().manual_seed(sum(has))
    shapes = [(N_NODES, dim_out), (N_NODES, dim1), (N_EDGES, dim2), (N_EDGES, wnumel), (N_NODES, dim1),
              (N_EDGES, dim2), (N_EDGES, wnumel)]
    tensors = [torch.randn(shape, generator=generator, dtype=torch.float64) for shape in shapes]
    graph = _graph(3)
    sender, receiver = graph[0], graph[1]
    grad_out, a, b, c, ga, gb, gc = tensors
    cotangents = [t if h else t.new_empty(0) for t, h in zip((ga, gb, gc), has)]
    expected = reference.conv_double_backward(*cotangents, grad_out, a, b, c, sender, receiver, plan.plan_list,
                                              plan.cg_list, [True] * 4)
    tolerance = 1e-12 if dtype == torch.float64 else 2e-5
    for atomic in (True, False):
        got = _fused(spec, dtype, has, atomic, folder, [t.to(dtype) for t in tensors], graph)
        for name, x, y in zip(("grad_out", "node_feats", "edge_attrs", "weight"), got, expected):
            scale = max(y.abs().max().item(), 1.0)
            assert (x.double() - y).abs().max().item() <= tolerance * scale, (name, atomic)
        assert not got[0][N_NODES - 1].any() and not got[1][N_NODES - 1].any(), "the isolated node got a value"


@pytest.fixture
def nan_filled_empty():
    """``torch.empty`` filled with NaN (deterministic mode's ``fill_uninitialized_memory``) during the test: a buffer
    a kernel adds into without its zeroing then shows, whatever memory the allocator hands back."""
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)


def _emulated_kernels(dtype, tmp_path, monkeypatch):
    """``(plan, UvuKernels)`` of a MACE problem whose kernels compile and launch on the CPU emulator: 40 channels in
    two warps (the harmonics' gradient summed across warps, as MACE's 128 channels in four)."""
    emulator = Emulator(tmp_path)
    monkeypatch.setattr(_uvu, "_compile", emulator.compile)
    monkeypatch.setattr(_jit, "launch", emulator.launch)
    plan = scaled(MACE_PROBLEMS[1], 40).plan()
    spec, reason = _uvu_codegen.uvu_spec(plan.plan_list, plan.cg_list, True, torch.finfo(dtype).bits // 8)
    assert spec is not None and spec.warps > 1, reason
    ctype = "float" if dtype == torch.float32 else "double"
    return plan, _uvu.UvuKernels(spec, 0, 0, ctype, torch.device("cpu"), dtype)


@pytest.mark.parametrize("needs", [[True, False, True], [True, True, True]], ids=["node+weight", "all"])
@pytest.mark.parametrize("g1_atomic", [True, False], ids=["atomic", "per-edge"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_backward_into_adds_the_weight_gradient(needs, g1_atomic, dtype, tmp_path, monkeypatch, nan_filled_empty):
    """``_uvu.backward_into`` (a composed double backward's second weight-gradient term) on its generated kernel,
    emulated on the CPU (the block's threads, warp shuffles, atomics): the weight gradient added to what the buffer
    held, the input gradients as the reference's."""
    plan, kernels = _emulated_kernels(dtype, tmp_path, monkeypatch)
    dim1, dim2, dim_out, wnumel = kernels.spec.dims
    generator = torch.Generator().manual_seed(5)
    grad_out, a, b, c, held = (torch.randn(shape, generator=generator, dtype=torch.float64) for shape in (
        (N_NODES, dim_out), (N_NODES, dim1), (N_EDGES, dim2), (N_EDGES, wnumel), (N_EDGES, wnumel)))
    sender, receiver, order, send, row_ptr = _graph(5)
    weight_grad = held.to(dtype, copy=True)  # [n_edges, wnumel], added into
    g1, g2 = _uvu.backward_into(kernels, weight_grad, *(t.to(dtype) for t in (grad_out, a, b, c)), order, send,
                                row_ptr, needs, g1_atomic)
    expected = reference.conv_backward(grad_out, a, b, c, sender, receiver, plan.plan_list, plan.cg_list, needs)
    if not g1_atomic:  # [n_edges, dim1] per edge -> [n_nodes, dim1]
        g1 = torch.zeros(N_NODES, dim1, dtype=dtype).index_add_(0, sender, g1)
    tolerance = 1e-12 if dtype == torch.float64 else 2e-5
    assert (g2 is None) == (not needs[1])
    for name, got, want in (("node", g1, expected[0]), ("edge", g2, expected[1]),
                            ("weight", weight_grad.double() - held, expected[2])):
        if got is not None:
            scale = max(want.abs().max().item(), 1.0)
            assert (got.double() - want).abs().max().item() <= tolerance * scale, name
    with pytest.raises(ValueError, match="weight_grad must be"):
        _uvu.backward_into(kernels, weight_grad[:, 1:], *(t.to(dtype) for t in (grad_out, a, b, c)), order, send,
                           row_ptr, needs, g1_atomic)


@pytest.mark.parametrize("needs", [[True, False, True], [True, True, False], [True, True, True]],
                         ids=["node+weight", "node+edge", "all"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_backward_atomic_g1_matches_the_reference(needs, dtype, tmp_path, monkeypatch, nan_filled_empty):
    """``_uvu.backward_atomic_g1`` (the convolution's atomic-mode backward) on its generated kernel, emulated: the
    node gradient added at the senders, the weight gradient written, and an empty placeholder where not needed."""
    plan, kernels = _emulated_kernels(dtype, tmp_path, monkeypatch)
    dim1, dim2, dim_out, wnumel = kernels.spec.dims
    generator = torch.Generator().manual_seed(6)
    grad_out, a, b, c = (torch.randn(shape, generator=generator, dtype=torch.float64) for shape in (
        (N_NODES, dim_out), (N_NODES, dim1), (N_EDGES, dim2), (N_EDGES, wnumel)))
    sender, receiver, order, send, row_ptr = _graph(6)
    got = _uvu.backward_atomic_g1(kernels, *(t.to(dtype) for t in (grad_out, a, b, c)), order, send, row_ptr, needs)
    expected = reference.conv_backward(grad_out, a, b, c, sender, receiver, plan.plan_list, plan.cg_list, needs)
    tolerance = 1e-12 if dtype == torch.float64 else 2e-5
    for name, need, x, want in zip(("node", "edge", "weight"), needs, got, expected):
        if not need:
            assert x.numel() == 0, name
            continue
        assert x.dtype == dtype and x.shape == want.shape, name
        scale = max(want.abs().max().item(), 1.0)
        assert (x.double() - want).abs().max().item() <= tolerance * scale, name
