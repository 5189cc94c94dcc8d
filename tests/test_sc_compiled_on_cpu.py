"""The generated symmetric-contraction CUDA sources, compiled as C++ and run on the CPU (one "thread" walking
the grid-stride loops), against the reference: forward, backward, double backward, weight gradient by
element chunks and the chunk sum, in float32 and float64, with every kernel cut into several parts (the
first writes, the others add). This checks the sources' logic on any machine with a C++ compiler; the
GPU runs them in ``tests/cuda/test_cuda_symmetric_contraction.py``."""

import ctypes
import hashlib
import shutil
import subprocess

import pytest
import torch

from batmobile_nn import _sc, _sc_codegen as codegen
from batmobile_nn import reference

from ops.test_symmetric_contraction import CASES, Case

CXX = shutil.which("g++") or shutil.which("c++")
pytestmark = pytest.mark.skipif(CXX is None, reason="needs a C++ compiler")

# CUDA built-ins for one thread that walks the whole grid-stride loop
PRELUDE = """#define __global__
#define __launch_bounds__(...)
#define __restrict__
struct Dim { long long x; };
static const Dim blockIdx{0}, threadIdx{0}, blockDim{1}, gridDim{1};
"""


def _function(source: str, name: str, folder):
    digest = hashlib.sha1(source.encode()).hexdigest()[:16]
    cpp, library = folder / f"{digest}.cpp", folder / f"{digest}.so"
    if not library.exists():
        cpp.write_text(PRELUDE + source)
        subprocess.run([CXX, "-O0", "-shared", "-fPIC", "-o", str(library), str(cpp)], check=True)
    return getattr(ctypes.CDLL(str(library)), name)


def _call(function, tensors, scalars):
    """``function(*pointers, *int64s)``; the tensors stay referenced until it returns."""
    args = [ctypes.c_void_p(t.data_ptr() if t is not None else 0) for t in tensors]
    function(*args, *(ctypes.c_longlong(s) for s in scalars))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("sc_cpu")


@pytest.fixture
def small_parts(monkeypatch):
    """Parts of at most 40 terms, so that every kind runs in several parts."""
    monkeypatch.setattr(codegen, "PART_TERMS", {c: dict.fromkeys(("fwd", "bwd", "dbl"), 40)
                                                for c in ("float", "double")})


@pytest.mark.parametrize("case", CASES[1:], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_compiled_sources_match_the_reference(case, dtype, folder, small_parts):
    _check(case, dtype, folder)


def test_large_float64_sources_are_right(folder):
    """MACE-MP-large's product basis in float64, cut into parts as the GPU gets it: right on the CPU, while on
    an H200 these float64 kernels gave wrong derivatives under ptxas' default optimization (why problems above
    _sc.F64_MAX_TERMS compile with _sc.F64_LARGE_NVRTC_OPTIONS)."""
    _check(CASES[0], torch.float64, folder)


def _check(case, dtype, folder):
    if not isinstance(case, Case):
        pytest.skip("needs mace-torch for real U tensors")
    ctype = "float" if dtype == torch.float32 else "double"
    x64, element, w64, u = case.inputs(torch.float64, seed=11)
    generator = torch.Generator().manual_seed(12)
    g64 = torch.randn(case.n, case.width, generator=generator, dtype=torch.float64)
    v64 = torch.randn(x64.shape, generator=generator, dtype=torch.float64)
    x, w, g, v = (t.to(dtype) for t in (x64, w64, g64, v64))
    spec = codegen.sc_spec(u, case.correlations, case.C, case.L)
    n = case.n

    def run_parts(kind, make, tensors):
        parts = codegen.parts(spec, ctype, kind)
        assert len(parts) > 1
        for i, part in enumerate(parts):
            _call(_function(make(spec, ctype, part, i > 0), f"bm_sc_{kind}", folder), tensors, [n])

    out, gx = torch.empty(n, spec.width, dtype=dtype), torch.empty_like(x)
    d_g, d_x = torch.empty(n, spec.width, dtype=dtype), torch.empty_like(x)
    run_parts("fwd", codegen.forward_source, [x, element, w, out])
    run_parts("bwd", codegen.backward_source, [g, x, element, w, gx])
    run_parts("dbl", codegen.double_backward_source, [v, g, x, element, w, d_g, d_x])

    def weight_grad(direction):
        perm, start, end, chunk_ptr = _sc._chunks(element, w.shape[0])
        partial = torch.empty(start.shape[0], spec.n_params, spec.mul, dtype=dtype)
        name = "bm_sc_wgrad_dir" if direction is not None else "bm_sc_wgrad"
        source = codegen.weight_grad_source(spec, ctype, along=direction is not None)
        _call(_function(source, name, folder), [g, x, direction, perm, start, end, partial], [start.shape[0]])
        total = torch.empty_like(w)
        row = spec.n_params * spec.mul
        _call(_function(codegen.chunk_sum_source(ctype), "bm_sc_chunk_sum", folder), [partial, chunk_ptr, total],
              [w.shape[0], row])
        return total

    got = [out, gx, weight_grad(None), d_g, d_x, weight_grad(v)]
    args = (x64, element, w64, u, case.correlations)
    expected = [reference.symmetric_contraction(*args),
                *reference.symmetric_contraction_backward(g64, *args, [True, True]),
                *reference.symmetric_contraction_double_backward(v64, torch.empty(0, dtype=torch.float64), g64,
                                                                 *args, [True] * 3)]
    tolerance = 1e-5 if dtype == torch.float32 else 1e-11
    for name, a, b in zip(["out", "grad_x", "grad_w", "d_grad_out", "d_x", "d_w"], got, expected):
        scale = float(b.abs().max())
        assert float((a.double() - b).abs().max()) <= tolerance * max(scale, 1.0), name
