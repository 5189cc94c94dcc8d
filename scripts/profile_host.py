"""Where a MACE step's host time goes, per backend (cProfile): the Python of mace, e3nn, batmobile_nn and torch,
the C++ calls made from Python (ATen ops, the autograd engine), on bench_mace's models and structures.

At 1,000 atoms every backend's GPU step is host-bound (issue 5's grid: ours 1.9-6.3 ms of kernels in 20-60 ms
of wall time), so the launches and the Python around them set the wall time. This attributes that time: per
backend and mode, ``steps`` profiled calls after warm-up, the wall ms per step under the profiler and without
it, host seconds per step by where the code lives (``by_package``: tottime, each function's own time), and the
functions with the most own time. A Python function's own time includes the tensor operators it applies through
Python's operator slots (``a * b``, ``a @ b``, indexing), which cProfile does not see as calls; named calls
(``torch.bmm``, ``x.mul(y)``) count apart. cProfile slows Python code more than C++ code, so the shares are a
guide to where to look, not a measurement of the unprofiled step.

Usage: python scripts/profile_host.py [--model small] [--atoms 1000] [--dtype float32]
  [--backends e3nn,batmobile] [--modes inference,train] [--steps 20] [--top 25] [--out F.json]
  [--quick]   (CPU smoke test: bench_mace's quick model, 27 atoms, float64, 2 steps)
"""

import argparse
import cProfile
import json
import pstats
import sys
import time

import bench_mace  # scripts/ is sys.path[0] when run as a script; imports batmobile_nn first (see there)
import torch

PACKAGES = ("batmobile_nn", "mace", "e3nn", "torch", "cuequivariance", "openequivariance")


def where(filename: str, function: str) -> str:
    """The package a cProfile entry belongs to: a Python file's package; for C++ called from Python ("~"),
    the autograd engine (backward and grad) apart from everything else."""
    if filename == "~":
        return "autograd engine (C++)" if "run_backward" in function else "C++ calls (ATen ops, builtins)"
    parts = filename.replace("\\", "/").split("/")
    for package in PACKAGES:
        if package in parts:
            return f"{package} (Python)"
    return "other Python"


def profile_steps(step, device, steps: int, top: int) -> dict:
    """``step`` timed ``steps`` times plain, then ``steps`` times under cProfile: wall ms per step both ways,
    own host seconds per step by package, and the ``top`` functions by own time."""
    bench_mace.sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    bench_mace.sync(device)
    plain_ms = (time.perf_counter() - t0) / steps * 1e3
    profiler = cProfile.Profile()
    t0 = time.perf_counter()
    profiler.enable()
    for _ in range(steps):
        step()
    bench_mace.sync(device)
    profiler.disable()
    profiled_ms = (time.perf_counter() - t0) / steps * 1e3
    stats = pstats.Stats(profiler).stats  # {(file, line, function): (calls, prim calls, tottime, cumtime, callers)}
    by_package, functions = {}, []
    for (filename, line, function), (_, calls, own, cumulative, _) in stats.items():
        package = where(filename, function)
        by_package[package] = by_package.get(package, 0.0) + own / steps
        short_file = "/".join(filename.replace("\\", "/").split("/")[-3:])
        functions.append({"function": f"{short_file}:{line}({function})", "package": package,
                          "calls_per_step": calls / steps, "own_ms_per_step": own / steps * 1e3,
                          "cumulative_ms_per_step": cumulative / steps * 1e3})
    functions.sort(key=lambda f: -f["own_ms_per_step"])
    return {"wall_ms_per_step": plain_ms, "profiled_wall_ms_per_step": profiled_ms,
            "own_ms_per_step_by_package": {k: round(v * 1e3, 4) for k, v in
                                           sorted(by_package.items(), key=lambda kv: -kv[1])},
            "top_functions": [{k: round(v, 4) if isinstance(v, float) else v for k, v in f.items()}
                              for f in functions[:top]]}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", choices=bench_mace.ARCHS, default="small")
    p.add_argument("--atoms", type=int, default=1000)
    p.add_argument("--dtype", choices=bench_mace.DTYPES, default="float32")
    p.add_argument("--backends", default="e3nn,batmobile")
    p.add_argument("--modes", default="inference,train")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--device", help="default: cuda when available (cpu with --quick)")
    p.add_argument("--out", default="profile_host.json")
    p.add_argument("--quick", action="store_true", help="CPU smoke test")
    args = p.parse_args(argv)
    if args.quick:
        args.model, args.atoms, args.dtype, args.steps, args.warmup, args.device = "quick", 27, "float64", 2, 1, "cpu"
        torch.set_num_threads(1)
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    for name in args.backends.split(","):
        if name not in bench_mace.BACKENDS:
            p.error(f"--backends: {name}? (one of {', '.join(bench_mace.BACKENDS)})")
    for mode in args.modes.split(","):
        if mode not in bench_mace.MODES:
            p.error(f"--modes: {mode}? (inference or train)")
    return args


def main(argv=None):
    args = parse_args(argv)
    device, dtype = torch.device(args.device), bench_mace.DTYPES[args.dtype]
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # as bench_mace
    base = bench_mace.build_model(bench_mace.ARCHS[args.model], dtype, device)
    batch = bench_mace.build_batch(args.atoms, dtype, device)
    data, n_atoms = batch.to_dict(), batch.num_nodes
    result = {"benchmark": "profile_host", "args": vars(args), **bench_mace.environment(device), "rows": []}
    for backend in args.backends.split(","):
        for mode in args.modes.split(","):
            step = bench_mace.make_step(mode, bench_mace.make_backend(backend, base, device), data, n_atoms)
            for _ in range(args.warmup):
                step()
            row = {"backend": backend, "mode": mode, "model": args.model, "atoms": n_atoms, "dtype": args.dtype,
                   **profile_steps(step, device, args.steps, args.top)}
            result["rows"].append(row)
            shares = ", ".join(f"{k} {v:.2f}" for k, v in row["own_ms_per_step_by_package"].items())
            print(f"{backend} {mode}: {row['wall_ms_per_step']:.2f} ms/step ({row['profiled_wall_ms_per_step']:.2f} "
                  f"profiled); own ms/step: {shares}", flush=True)
            del step
            bench_mace.free(device)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    sys.exit(main())
