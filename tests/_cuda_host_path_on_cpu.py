"""Run by tests/test_cuda_host_path.py in a subprocess: one MACE-MP-medium training step (energy, forces, a force
loss, its double backward) through the package's CUDA host path (``_cuda``, ``_uvu``, ``_sc``, ``_jit``,
``_extension``: checks, caches, launch arguments) on the CPU, with the extension's ops replaced by stubs that return
tensors of the right shapes. Prints the number of calls of each stub op as JSON. The values are meaningless; what is
checked is that the GPU path's Python runs end to end with the ops' schemas (the GPU tests check the values)."""

import json
import sys
from collections import Counter

import torch

import batmobile_nn  # noqa: F401
from batmobile_nn import _backend, _build, _cuda, _jit

STUBS = {
    "cg_pattern(int l1, int l2, int l_out) -> Tensor": None,
    "cg_max_l() -> int[]": lambda: [8, 8],
    "sh_max_l() -> int": lambda: 8,
    "sh_forward(Tensor vectors, int[] ls, bool normalize, str normalization) -> Tensor":
        lambda v, ls, n, s: v.new_zeros(v.shape[0], sum(2 * l + 1 for l in ls)),
    "sh_backward(Tensor grad_sh, Tensor vectors, int[] ls, bool normalize, str normalization) -> Tensor":
        lambda g, v, ls, n, s: torch.zeros_like(v),
    "sh_double_backward(Tensor grad_grad_vectors, Tensor grad_sh, Tensor vectors, int[] ls, bool normalize, "
    "str normalization) -> (Tensor, Tensor)": lambda a, g, v, ls, n, s: (torch.zeros_like(g), torch.zeros_like(v)),
    "segment_sum(Tensor rows, Tensor order, Tensor row_ptr) -> Tensor":
        lambda r, o, p: r.new_zeros(p.shape[0] - 1, r.shape[1]),
    "jit_load(Tensor image, str name) -> int": lambda i, n: 1,
    "uvu_forward(int kernel, int threads, Tensor in1, Tensor in2, Tensor weight, Tensor? order, Tensor? send, "
    "Tensor? row_ptr, int dim1, int dim2, int dim_out, int weight_numel, bool zero_out) -> Tensor":
        lambda k, t, a, b, w, o, s, r, d1, d2, do, wn, z: a.new_zeros(a.shape[0] if r is None else r.shape[0] - 1, do),
    "uvu_backward(int kernel, int threads, Tensor grad_out, Tensor in1, Tensor in2, Tensor weight, Tensor? order, "
    "Tensor? send, Tensor? row_ptr, int dim1, int dim2, int dim_out, int weight_numel, bool[3] needs, bool zero_g1) "
    "-> (Tensor, Tensor, Tensor)": lambda k, t, g, a, b, w, o, s, r, d1, d2, do, wn, needs, z: (
        a.new_zeros(b.shape[0], d1), a.new_zeros(b.shape[0], 4, d2), torch.zeros_like(w)),
    "jit_launch(int kernel, int grid, int threads, Tensor?[] tensors, int[] scalars) -> ()": lambda *a: None,
}
calls = Counter()


def counted(name, fn):
    def run(*args):
        calls[name] += 1
        return fn(*args)
    return run


def main(scripts: str, double_backward: str = "fused"):
    """``double_backward``: "fused" (the defaults) or "composed" (every convolution's double backward composed of its
    forward and backward kernels, as for problems above ``_uvu_codegen.MAX_FUSED_DBL_OUT``)."""
    if double_backward == "composed":
        from batmobile_nn import _uvu_codegen

        _uvu_codegen.MAX_FUSED_DBL_OUT.update({4: 0, 8: 0})
    library = torch.library.Library("batmobile_cuda", "DEF")
    for schema, fn in STUBS.items():
        name = schema.split("(")[0]
        library.define(schema)
        if fn is not None:
            library.impl(name, counted(name, fn), "CompositeExplicitAutograd")
    _build.load = lambda device=None: None  # no extension to build: the stubs are the ops
    _jit.kernel = lambda source, name, device, options=(): 1  # no NVRTC: a handle
    torch.cuda.current_device = lambda: 0
    torch.cuda.get_device_properties = lambda d: type("Properties", (), {
        "multi_processor_count": 132, "shared_memory_per_block_optin": 227 * 1024})()
    _cuda.load(torch.device("cpu"))
    kernels = _backend.KERNELS["cuda"]
    _backend.implementation = lambda name, device: kernels.get(name) or getattr(_backend.reference, name)

    sys.path.insert(0, scripts)
    import bench_mace

    model = bench_mace.make_backend("batmobile", bench_mace.build_model(bench_mace.ARCHS["medium"], torch.float32,
                                                                          torch.device("cpu")), torch.device("cpu"))
    data = bench_mace.build_batch(27, torch.float32, torch.device("cpu")).to_dict()
    bench_mace.train_loss(model, data, 27).backward()
    print(json.dumps(dict(calls)))


if __name__ == "__main__":
    main(*sys.argv[1:3])
