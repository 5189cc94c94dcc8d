"""The per-problem uvw kernels (``_uvw_codegen``), compiled as C++ and run on the CPU by a small emulation of a
CUDA block (one OS thread per CUDA thread, ``std::barrier`` for ``__syncthreads``, shuffles through a shared
array), launched by ``_uvw``'s own code (grids, transposed weights, weight-gradient slices), against the
reference: forward and every kind of backward, float32 and float64, tiles cut short at the end, a block of
in1 that no path reads, and 64 channels (the backward's sum over warps). The GPU runs them in
``tests/cuda/test_cuda_uvw.py``."""

import ctypes
import hashlib
import re
import subprocess

import pytest
import torch

from batmobile_nn import _uvw, _uvw_codegen, reference
from batmobile_nn.ops import make_plan
from test_sc_compiled_on_cpu import CXX

pytestmark = pytest.mark.skipif(CXX is None, reason="needs a C++ compiler")

PRELUDE = r"""#include <atomic>
#include <barrier>
#include <thread>
#include <vector>
#define __global__
#define __launch_bounds__(...)
#define __shared__ static  /* one block runs at a time: a function's static array is the block's memory */
#define __align__(n) __attribute__((aligned(n)))
struct Dim { long long x; };
static thread_local Dim threadIdx{0};
static Dim blockIdx{0}, gridDim{1};
static std::barrier<>* block_barrier;
static void __syncthreads() { block_barrier->arrive_and_wait(); }
template <typename V> static V __shfl_xor_sync(unsigned, V value, int mask) {
  static V slots[1024];
  slots[threadIdx.x] = value;
  __syncthreads();
  V other = slots[threadIdx.x ^ mask];
  __syncthreads();
  return other;
}
template <typename V> static void atomicAdd(V* p, V v) { std::atomic_ref<V>(*p).fetch_add(v); }
struct AnyPtr { void* p; template <typename P> operator P*() const { return static_cast<P*>(p); } };
"""

RUNNER = r"""
extern "C" void run(long long grid, long long threads, void** p, long long* s) {
  gridDim.x = grid;
  for (long long b = 0; b < grid; ++b) {
    blockIdx.x = b;
    std::barrier<> barrier(threads);
    block_barrier = &barrier;
    std::vector<std::thread> pool;
    for (long long t = 0; t < threads; ++t)
      pool.emplace_back([=] { threadIdx.x = t; KERNEL(ARGS); });
    for (auto& thread : pool) thread.join();
  }
}
"""


class Emulator:
    """``compile`` and ``launch`` for the per-problem kernels (``_uvw.UvwKernels``, ``_uvu.UvuKernels``), on the CPU:
    a thread per CUDA thread, a block at a time."""

    def __init__(self, folder):
        self.folder, self.libraries = folder, []

    def compile(self, source, name, device):
        signature = source[source.index(name + "("):source.index(") {")]
        parameters = signature[len(name) + 1:].split(",")  # pointers, then 64-bit integers (long long / i64)
        n_pointers = sum("*" in parameter for parameter in parameters)
        n_scalars = len(parameters) - n_pointers
        args = [f"AnyPtr{{p[{i}]}}" for i in range(n_pointers)] + [f"s[{i}]" for i in range(n_scalars)]
        code = PRELUDE + source + RUNNER.replace("KERNEL", name).replace("ARGS", ", ".join(args))
        digest = hashlib.sha1(code.encode()).hexdigest()[:16]
        cpp, library = self.folder / f"{digest}.cpp", self.folder / f"{digest}.so"
        if not library.exists():
            cpp.write_text(code)
            subprocess.run([CXX, "-std=c++20", "-O1", "-shared", "-fPIC", "-pthread", "-o", str(library), str(cpp)],
                           check=True)
        self.libraries.append(ctypes.CDLL(str(library)))
        return len(self.libraries) - 1

    def launch(self, handle, grid, threads, tensors, scalars):
        pointers = (ctypes.c_void_p * len(tensors))(*[t.data_ptr() if t is not None else 0 for t in tensors])
        values = (ctypes.c_longlong * max(1, len(scalars)))(*scalars)
        self.libraries[handle].run(ctypes.c_longlong(grid), ctypes.c_longlong(threads), pointers, values)


def _spec_and_ctype(problem, ctype):
    plan = seed_problem(32) if problem == "seed" else wide_problem()
    return _uvw_codegen.uvw_spec(plan.plan_list, plan.cg_list, False)[0], ctype


def seed_problem(channels):
    irreps = [(channels, (l, 1)) for l in range(4)]
    instructions = [(a, b, c, "uvw", True) for a in range(4) for b in range(4) for c in range(4)
                    if abs(a - b) <= c <= a + b]
    return make_plan(irreps, "0e+1e+2e+3e", irreps, instructions)


def wide_problem():
    """64 -> 32 channels, in2 of odd parity, in1's 3o block read by no path (its gradient is zero)."""
    instructions = [(0, 1, 1, "uvw", True), (1, 0, 1, "uvw", True), (1, 1, 0, "uvw", True),
                    (1, 1, 2, "uvw", True), (0, 0, 0, "uvw", True)]
    return make_plan("64x0e+64x1o+64x3o", "0e+1o", "32x0e+32x1o+32x1e", instructions)


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    return Emulator(tmp_path_factory.mktemp("uvw_cpu"))


@pytest.mark.parametrize("problem, dtype, samples, columns", [
    ("seed", torch.float64, 1, 1), ("seed", torch.float32, 2, 1), ("seed", torch.float32, 3, 1),
    ("wide", torch.float64, 2, 1), ("seed", torch.float32, 1, 2), ("wide", torch.float32, 2, 2)])
def test_uvw_kernels_match_reference(problem, dtype, samples, columns, emulator, monkeypatch):
    monkeypatch.setattr(_uvw, "BLOCKS_PER_SM", 100)  # the weight gradient in several slices of samples
    ctype = "float" if dtype == torch.float32 else "double"
    monkeypatch.setitem(_uvw_codegen.SAMPLES_PER_GROUP, ctype, samples)
    monkeypatch.setitem(_uvw_codegen.COLUMNS_PER_THREAD, ctype, columns)
    assert _uvw_codegen._columns(*_spec_and_ctype(problem, ctype))[0] == columns
    plan = seed_problem(32) if problem == "seed" else wide_problem()
    spec, reason = _uvw_codegen.uvw_spec(plan.plan_list, plan.cg_list, False)
    assert spec is not None, reason
    assert spec.in1_covered == (problem == "seed")
    kernels = _uvw.UvwKernels(spec, ctype, torch.device("cpu"), emulator.compile, emulator.launch)
    n = 21  # not a multiple of any tile: the last tile is cut short
    generator = torch.Generator().manual_seed(3)
    x1 = torch.randn(n, spec.dims[0], generator=generator, dtype=dtype)
    x2 = torch.randn(n, spec.dims[1], generator=generator, dtype=dtype)
    w = torch.randn(spec.dims[3], generator=generator, dtype=dtype)
    g = torch.randn(n, spec.dims[2], generator=generator, dtype=dtype)
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=2e-4, atol=2e-4)
    torch.testing.assert_close(_uvw.forward(kernels, x1, x2, w),
                               reference.tensor_product(x1, x2, w, plan.plan_list, plan.cg_list), **tol)
    expected = reference.tensor_product_backward(g, x1, x2, w, plan.plan_list, plan.cg_list, [True] * 3)
    for needs in ([True, True, True], [True, False, False], [False, True, False], [False, False, True]):
        got = _uvw.backward(kernels, g, x1, x2, w, needs)
        for name, value, want, need in zip(("in1", "in2", "weight"), got, expected, needs):
            if need:
                torch.testing.assert_close(value, want, **tol, msg=lambda m: f"{name} {needs}: {m}")
            else:
                assert value.numel() == 0
    empty = torch.zeros(0, spec.dims[0], dtype=dtype)
    assert _uvw.forward(kernels, empty, x2[:0], w).shape == (0, spec.dims[2])
    assert torch.equal(_uvw.backward(kernels, g[:0], empty, x2[:0], w, [True] * 3)[2], torch.zeros_like(w))


def test_uvw_spec_declines_other_problems():
    seed = seed_problem(32)
    assert _uvw_codegen.uvw_spec(seed.plan_list, seed.cg_list, True)[0] is None  # per-sample weights
    assert _uvw_codegen.uvw_spec(seed_problem(8).plan_list, seed_problem(8).cg_list, False)[0] is None
    uvu = make_plan("32x0e+32x1o", "0e+1o", "32x0e+32x1o+32x1e",
                    [(0, 0, 0, "uvu", True), (1, 1, 0, "uvu", True), (1, 1, 2, "uvu", True)])
    assert _uvw_codegen.uvw_spec(uvu.plan_list, uvu.cg_list, False)[0] is None
    # the dispatch declines a plan whose first path is not uvw before hashing it into its cache (a hot path)
    cached = dict(_uvw._cache)
    assert _uvw.kernels_for(uvu.plan_list, uvu.cg_list, torch.float32, torch.device("cuda", 0), False) is None
    assert _uvw._cache == cached
    partial_out = make_plan("32x0e", "0e", "32x0e+32x1o", [(0, 0, 0, "uvw", True)])  # 1o never written
    assert _uvw_codegen.uvw_spec(partial_out.plan_list, partial_out.cg_list, False)[0] is None


def test_uvw_sources_are_specialized():
    """Channel counts, offsets and coefficients are literals: no table is read at run time."""
    plan = seed_problem(32)
    spec, _ = _uvw_codegen.uvw_spec(plan.plan_list, plan.cg_list, False)
    source = _uvw_codegen.forward_source(spec, "float")
    assert source.count("// path ") == 34 and not re.search(r"\bcg\[", source)
