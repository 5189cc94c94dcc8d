"""Where a MACE step's host time goes, per backend (cProfile): the Python of mace, e3nn, batmobile_nn and torch,
the C++ calls made from Python (ATen ops, the autograd engine), on bench_mace's models and structures.

At 1,000 atoms most GPU steps are host-bound (issue 5's grid, ours: 1.9-21 ms of kernels in 20-86 ms of wall
time), so the launches and the Python around them set the wall time. This attributes that time: per backend and
mode, ``steps`` profiled calls after warm-up, the wall ms per step under the profiler and without it, host
milliseconds per step by where the code lives (``own_ms_per_step_by_package``: each function's own time), and
the functions with the most own time.

Caveats. A Python function's own time includes the tensor operators it applies through Python's operator slots
(``a * b``, ``a @ b``, indexing), which cProfile does not see as calls; named calls (``torch.bmm``,
``x.mul(y)``) count apart. On the GPU the autograd engine runs backward on a worker thread: before Python 3.12
cProfile sees only the main thread, so the Python run there (ours: the ops' backward functions) counts as the
engine's own time; from 3.12 (built on sys.monitoring) it sees both threads on one call stack, so the split
between the engine and that Python is approximate. cProfile slows Python more than C++, so the shares say
where to look; they do not measure the unprofiled step.

Usage: python scripts/profile_host.py [--model small] [--atoms 1000] [--dtype float32]
  [--backends e3nn,batmobile] [--modes inference,train] [--steps 20] [--top 25] [--out F.json]
  [--quick]   (CPU smoke test: bench_mace's quick model, 27 atoms, float64, 2 steps)
"""

import argparse
import cProfile
import importlib.util
import json
import os
import pstats
import sys
import time

import bench_mace  # scripts/ is sys.path[0] when run as a script; imports batmobile_nn first (see there)
import torch

PACKAGES = {"batmobile_nn": "batmobile_nn", "mace": "mace", "e3nn": "e3nn", "torch": "torch",
            "cuequivariance": "cuequivariance", "cuequivariance_torch": "cuequivariance",
            "cuequivariance_ops_torch": "cuequivariance", "openequivariance": "openequivariance"}


def package_folders() -> list:
    """``[(folder, package)]`` of the packages of ``PACKAGES`` that are installed, longest folder first: where
    each one's files live (an editable install, a carried ``--target`` folder or a venv's site-packages)."""
    folders = []
    for module, package in PACKAGES.items():
        spec = importlib.util.find_spec(module)
        for folder in (spec.submodule_search_locations or []) if spec else []:
            folders.append((os.path.realpath(folder) + os.sep, package))
    return sorted(folders, key=lambda fp: -len(fp[0]))


def where(filename: str, function: str, folders: list) -> str:
    """The package a cProfile entry belongs to: the installed package (``folders``) whose folder holds the file;
    for C++ called from Python ("~"), the autograd engine (backward and grad) apart from everything else."""
    if filename == "~":
        return "autograd engine (C++)" if "run_backward" in function else "C++ calls (ATen ops, builtins)"
    path = os.path.realpath(filename)
    return next((f"{package} (Python)" for folder, package in folders if path.startswith(folder)), "other Python")


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
    stats = pstats.Stats(profiler).stats  # {(file, line, function): (prim calls, calls, tottime, cumtime, callers)}
    by_package, functions, folders = {}, [], package_folders()
    for (filename, line, function), (_, calls, own, cumulative, _) in stats.items():
        package = where(filename, function, folders)
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
