"""Benchmark the ops against e3nn (and cuEquivariance / OpenEquivariance when installed): median ms.

Cases (issue 3): spherical harmonics l = 3 (20k and 150k edges); the Batmobile seed's tensor product
(34 uvw paths, shared weights, C x (0e+1e+2e+3e), 20k edges C = 32 and 150k edges C = 64) forward and
backward; the MACE-MP-medium convolution (128x0e+128x1o (x) sh l <= 3, MACE's 10 uvu paths; 170k and
700k edges) forward, backward and double backward, float32 and float64. Every baseline computes the same
function. Bandwidth: bytes of the inputs read once and outputs written once, over the time, as a
fraction of the device's measured device-to-device copy rate.

Baselines (scripts/bench_baselines.py): e3nn always; NVIDIA cuEquivariance ("cueq") and OpenEquivariance ("oeq") when
importable on a CUDA run (absent ones are reported, not errors). Each is checked against e3nn's output on the same inputs
before it is timed (row field ``parity``: max |out - e3nn| / max |e3nn|); one that fails is recorded, not timed.
``baseline_status`` says per library: ok, absent, skipped (CPU), n/a, oom, failed parity, error.

Usage: python scripts/bench_ops.py [--out bench.json] [--png bench.png] [--quick] [--only sh,tp,conv]
       [--max-edges N] [--cpu-naive-baselines]
``--quick`` runs tiny shapes on the CPU (smoke test); cuEq/OEq are skipped there unless ``--cpu-naive-baselines``
(cuEquivariance's pure-PyTorch "naive" method: checks construction and parity, its times mean nothing).
"""

import argparse
import json
import os
import pathlib
import statistics
import time

import torch

import bench_baselines as bb  # scripts/ is sys.path[0] when run as a script
import batmobile_nn  # noqa: F401  (before e3nn: TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD for e3nn 0.4.4)
from batmobile_nn.ops import conv, make_plan, spherical_harmonics, tensor_product
from e3nn import o3

WARMUP, REPEATS = 5, 25


def timed(fn, device, repeats=None):
    """Median milliseconds of ``fn()`` over ``repeats`` runs after warm-up (CUDA events on the GPU). The warm-up
    (JIT compiles, allocator, autotuning) is ``WARMUP`` calls, cut to two once it has taken a second: a baseline
    taking seconds per call would otherwise spend the run's device time warming up."""
    start = time.perf_counter()
    for i in range(WARMUP):
        fn()
        if i >= 1 and time.perf_counter() - start > 1.0:
            break
    times = []
    for _ in range(repeats or REPEATS):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def code_revision() -> dict:
    """The git revision and the source digest of the code that runs (the digest names it where a copied tree's
    .git is stale, as on the GPU machine)."""
    from batmobile_nn.commands.bench import git_info  # the harness's record of the code

    info = git_info(pathlib.Path(__file__).resolve().parents[1])
    return {"git_revision": info["revision"], "git_dirty": info["dirty"], "source_digest": info["source_digest"]}


def copy_bandwidth(device) -> float:
    """Bytes per second of a large device-to-device copy, counting bytes read and written."""
    n = (1 << 28) if device.type == "cuda" else (1 << 22)
    a, b = torch.empty(n, device=device), torch.empty(n, device=device)
    a.normal_()
    ms = timed(lambda: b.copy_(a), device)
    return 2 * n * 4 / (ms * 1e-3)


def nbytes(*tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def run_or_oom(fn):
    try:
        return fn()
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        return None


def grad_fn(f, inputs, grad_out):
    return lambda: torch.autograd.grad(f(), inputs, grad_out)


def double_grad_fn(f, inputs, target):
    """Energy-and-forces-like: grad of sum(out^2) w.r.t. inputs with create_graph, then grad of a scalar of
    it w.r.t. ``target`` (what a force loss does)."""
    def run():
        grads = torch.autograd.grad(f().square().sum(), inputs, create_graph=True)
        return torch.autograd.grad(grads[1].square().sum(), target)
    return run


class Baselines:
    """The cuEq / OEq baselines of one case (``built``: {lib: bench_baselines.Baseline or why there is none}),
    checked against ``reference`` (e3nn's output on the same inputs) once, then timed per mode."""

    def __init__(self, built, reference, dtype):
        (reference, reference_name), self.usable, self.status, self.parity = reference, {}, {}, {}
        for lib, b in built.items():
            self.parity[lib] = None
            if isinstance(b, str):
                self.status[lib] = b
                continue
            try:
                with torch.no_grad():
                    self.parity[lib] = bb.parity_error(b.to_e3nn(b.fn()), reference)
            except Exception as exc:  # noqa: BLE001  (an out-of-memory or API error is recorded in the row)
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                self.status[lib] = f"error in parity run: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
                continue
            if self.parity[lib] <= bb.PARITY_TOLERANCE[dtype]:
                self.usable[lib], self.status[lib] = b, "ok"
            else:
                self.status[lib] = f"failed parity vs {reference_name} (tolerance {bb.PARITY_TOLERANCE[dtype]:g})"
        self.notes = {lib: b.note for lib, b in self.usable.items()}
        self.reference_name, self.row_status = reference_name, dict(self.status)

    def time(self, mode, device):
        """{lib: median ms or None} for ``mode`` in forward / backward / double; fills ``row_status``."""
        times, self.row_status = {}, dict(self.status)
        for lib in self.status:
            times[lib] = None
            if lib not in self.usable:
                continue
            b = self.usable[lib]
            fn = (b.fn if mode == "forward" else grad_fn(b.fn, b.inputs, b.grad_out) if mode == "backward"
                  else double_grad_fn(b.fn, b.inputs, b.inputs))
            try:
                with torch.no_grad() if mode == "forward" else torch.enable_grad():
                    times[lib] = run_or_oom(lambda: timed(fn, device))
                if times[lib] is None:
                    self.row_status[lib] = "oom"
            except Exception as exc:  # noqa: BLE001
                self.row_status[lib] = f"error: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        return times

    def fields(self):
        return {"parity": self.parity, "parity_reference": self.reference_name,
                "baseline_status": self.row_status, "baseline_notes": self.notes}


def reference(theirs, ours):
    """The output the baselines are checked against: e3nn's; ours (e3nn-exact) where e3nn runs out of memory."""
    with torch.no_grad():
        out = run_or_oom(theirs)
        return (out, "e3nn") if out is not None else (ours(), "ours (e3nn out of memory)")


# ---- cases ------------------------------------------------------------------------------------------
def bench_sh(device, dtype, n_edges, record, libs):
    vectors = torch.randn(n_edges, 3, device=device, dtype=dtype)

    def theirs():
        return o3.spherical_harmonics([0, 1, 2, 3], vectors, True, normalization="component")

    baselines = Baselines(libs.build(bb.SH, vectors, [0, 1, 2, 3]), reference(theirs, theirs), dtype)
    ours = timed(lambda: spherical_harmonics(vectors, [0, 1, 2, 3], True, "component"), device)
    e3nn = timed(theirs, device)
    record("spherical_harmonics l=3", n_edges, dtype, ours, {"e3nn": e3nn, **baselines.time("forward", device)},
           nbytes(vectors) * (1 + 16 / 3), baselines)


def seed_tp(channels):
    irreps = o3.Irreps([(channels, (l, 1)) for l in range(4)])
    instructions = [(a, b, c, "uvw", True) for a in range(4) for b in range(4) for c in range(4)
                    if abs(a - b) <= c <= a + b]
    return irreps, o3.Irreps("0e+1e+2e+3e"), irreps, instructions


def bench_tp(device, dtype, n_edges, channels, record, libs):
    irreps_in1, irreps_in2, irreps_out, instructions = seed_tp(channels)
    plan = make_plan(irreps_in1, irreps_in2, irreps_out, instructions)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    e3nn_tp = o3.TensorProduct(irreps_in1, irreps_in2, irreps_out, instructions, shared_weights=True,
                               internal_weights=False).to(device)
    torch.set_default_dtype(previous)
    x = torch.randn(n_edges, irreps_in1.dim, device=device, dtype=dtype, requires_grad=True)
    y = torch.randn(n_edges, irreps_in2.dim, device=device, dtype=dtype, requires_grad=True)
    w = torch.randn(plan.weight_numel, device=device, dtype=dtype, requires_grad=True)
    g = torch.randn(n_edges, irreps_out.dim, device=device, dtype=dtype)

    plan_list, cg_list = plan.plan_list, plan.cg_list  # made once, as the modules hold them

    def ours():
        return tensor_product(x, y, w, plan_list, cg_list)

    def theirs():
        return e3nn_tp(x, y, w)

    label = f"tensor_product seed uvw C={channels}"
    baselines = Baselines(libs.build(bb.TP, e3nn_tp, x, y, w, g), reference(theirs, ours), dtype)
    with torch.no_grad():
        t_ours, t_e3nn = timed(ours, device), run_or_oom(lambda: timed(theirs, device))
    record(label, n_edges, dtype, t_ours, {"e3nn": t_e3nn, **baselines.time("forward", device)},
           nbytes(x, y, w, g), baselines)
    t_ours = timed(grad_fn(ours, [x, y, w], g), device)
    t_e3nn = run_or_oom(lambda: timed(grad_fn(theirs, [x, y, w], g), device))
    record(label + " backward", n_edges, dtype, t_ours, {"e3nn": t_e3nn, **baselines.time("backward", device)},
           nbytes(x, y, w, g) * 2, baselines)


def mace_medium_conv():
    irreps_node, irreps_sh = o3.Irreps("128x0e+128x1o"), o3.Irreps.spherical_harmonics(3)
    target = o3.Irreps("128x0e+128x1o+128x2e+128x3o")
    instructions, mid = [], []
    for i, (mul, ir1) in enumerate(irreps_node):
        for j, (_, ir2) in enumerate(irreps_sh):
            for ir in ir1 * ir2:
                if ir in target:
                    instructions.append((i, j, len(mid), "uvu", True))
                    mid.append((mul, ir))
    return irreps_node, irreps_sh, o3.Irreps(mid), instructions


def bench_conv(device, dtype, n_edges, record, libs, neighbours=35):
    irreps_node, irreps_sh, irreps_out, instructions = mace_medium_conv()
    plan = make_plan(irreps_node, irreps_sh, irreps_out, instructions)
    n_nodes = max(1, n_edges // neighbours)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    e3nn_tp = o3.TensorProduct(irreps_node, irreps_sh, irreps_out, instructions, shared_weights=False,
                               internal_weights=False).to(device)
    torch.set_default_dtype(previous)
    receiver = torch.randint(0, n_nodes, (n_edges,), device=device).sort().values
    sender = torch.randint(0, n_nodes, (n_edges,), device=device)
    x = torch.randn(n_nodes, irreps_node.dim, device=device, dtype=dtype, requires_grad=True)
    y = torch.randn(n_edges, irreps_sh.dim, device=device, dtype=dtype, requires_grad=True)
    w = torch.randn(n_edges, plan.weight_numel, device=device, dtype=dtype, requires_grad=True)
    g = torch.randn(n_nodes, irreps_out.dim, device=device, dtype=dtype)

    plan_list, cg_list = plan.plan_list, plan.cg_list  # made once, as the modules hold them

    def ours():
        return conv(x, y, w, sender, receiver, None, plan_list, cg_list, True)

    def theirs():
        messages = e3nn_tp(x[sender], y, w)  # [n_edges, dim_out]
        return torch.zeros(n_nodes, irreps_out.dim, device=device, dtype=dtype).index_add_(0, receiver, messages)

    label = "conv mace-mp-medium"
    forward_bytes = nbytes(x, y, w, g)
    built = libs.build(bb.CONV, e3nn_tp, x, y, w, g, sender, receiver)
    baselines = Baselines(built, reference(theirs, ours), dtype)
    with torch.no_grad():
        t_ours, t_e3nn = timed(ours, device), run_or_oom(lambda: timed(theirs, device))
    record(label + " forward", n_edges, dtype, t_ours, {"e3nn": t_e3nn, **baselines.time("forward", device)},
           forward_bytes, baselines)
    t_ours = timed(grad_fn(ours, [x, y, w], g), device)
    t_e3nn = run_or_oom(lambda: timed(grad_fn(theirs, [x, y, w], g), device))
    record(label + " backward", n_edges, dtype, t_ours, {"e3nn": t_e3nn, **baselines.time("backward", device)},
           forward_bytes + nbytes(x, y, w), baselines)
    t_ours = timed(double_grad_fn(ours, [x, y, w], [x, y, w]), device)
    t_e3nn = run_or_oom(lambda: timed(double_grad_fn(theirs, [x, y, w], [x, y, w]), device))
    record(label + " double backward", n_edges, dtype, t_ours,
           {"e3nn": t_e3nn, **baselines.time("double", device)}, None, baselines)


# ---- driver ---------------------------------------------------------------------------------------
def main():
    global WARMUP, REPEATS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench.json")
    parser.add_argument("--png", default=None, help="bar chart (default: --out with .png)")
    parser.add_argument("--quick", action="store_true", help="tiny shapes on the CPU")
    parser.add_argument("--only", default="sh,tp,conv")
    parser.add_argument("--max-edges", type=int, default=10**9, help="skip the larger shapes")
    parser.add_argument("--dtypes", default="float32,float64")
    parser.add_argument("--repeats", type=int, default=REPEATS, help="timed runs per case (median)")
    parser.add_argument("--cpu-naive-baselines", action="store_true",
                        help="on the CPU, run cuEquivariance's naive PyTorch method (parity check only)")
    args = parser.parse_args()
    device = torch.device("cpu" if args.quick or not torch.cuda.is_available() else "cuda")
    scale = 1000 if args.quick else 1
    REPEATS = args.repeats
    if args.quick:
        WARMUP, REPEATS = 1, 3
    bandwidth = copy_bandwidth(device)
    libs = bb.Libraries(device, cpu_naive=args.cpu_naive_baselines)
    print("baselines:", {lib: libs.status.get(lib) or f"ok {libs.versions.get(lib)}" for lib in bb.LIBS}, flush=True)
    rows, run_start = [], time.perf_counter()
    result = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
              "torch": torch.__version__, **code_revision(), "copy_bandwidth_GBps": bandwidth / 1e9,
              "warmup": WARMUP, "repeats": REPEATS,
              "baseline_libraries": {lib: libs.status.get(lib) or libs.versions.get(lib) for lib in bb.LIBS},
              "rows": rows}

    def write():  # after every row: a run cut short by a time limit keeps what it measured
        tmp = f"{args.out}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(result, f, indent=1)
        os.replace(tmp, args.out)  # a kill mid-write leaves the previous complete file

    def record(op, n_edges, dtype, ours, baselines, bytes_moved, extra=None):
        row = {"op": op, "edges": n_edges, "dtype": str(dtype).replace("torch.", ""), "ours_ms": ours,
               "run_elapsed_s": round(time.perf_counter() - run_start, 1),  # where a time-limited run spends it
               "baselines_ms": baselines,
               "speedup": {k: (v / ours if v else None) for k, v in baselines.items()},
               "bandwidth_fraction": (bytes_moved / (ours * 1e-3) / bandwidth) if bytes_moved else None}
        if extra is not None:
            row.update(extra.fields())
        rows.append(row)
        status = row.get("baseline_status", {})
        base = " ".join(f"{k} {v:.3f}" if v else f"{k} {status.get(k, 'oom').split(':')[0]}"
                        for k, v in baselines.items())
        speed = " ".join(f"{k} x{s:.1f}" for k, s in row["speedup"].items() if s)
        frac = f" {row['bandwidth_fraction']:.0%} of copy bw" if row["bandwidth_fraction"] else ""
        parity = " ".join(f"{k} {p:.1e}" for k, p in row.get("parity", {}).items() if p is not None)
        parity = f" | parity {parity}" if parity else ""
        print(f"{op:40s} {n_edges:>8d} {row['dtype']:8s} ours {ours:8.3f} ms | {base} ms | {speed}{frac}{parity}"
              f" | at {row['run_elapsed_s']:.0f} s", flush=True)
        write()

    only = set(args.only.split(","))

    def guarded(case, *case_args):  # one case running out of memory must not end the run
        try:
            case(*case_args)
        except torch.cuda.OutOfMemoryError as exc:
            print(f"{case.__name__} {case_args[1:3]}: out of memory ({str(exc).splitlines()[0]})", flush=True)
            torch.cuda.empty_cache()

    # the smaller shape of every op first, in every dtype: a run cut short by a time limit keeps those
    dtypes = [getattr(torch, name) for name in args.dtypes.split(",")]
    for size in (0, 1):
        for dtype in dtypes:
            sh_n, (tp_n, tp_c), conv_n = (20_000, 150_000)[size], ((20_000, 32), (150_000, 64))[size], \
                (170_000, 700_000)[size]
            if "sh" in only and dtype == torch.float32 and sh_n <= args.max_edges:
                guarded(bench_sh, device, dtype, sh_n // scale, record, libs)
            if "tp" in only and dtype == torch.float32 and tp_n <= args.max_edges:
                guarded(bench_tp, device, dtype, tp_n // scale, tp_c // (8 if args.quick else 1), record, libs)
            if "conv" in only and conv_n <= args.max_edges:
                guarded(bench_conv, device, dtype, conv_n // scale, record, libs)
    write()
    plot(rows, args.png or os.path.splitext(args.out)[0] + ".png")


def plot(rows, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    labels = [f"{r['op']} {r['edges']} {r['dtype']}" for r in rows]
    names = [k for k in ("e3nn", *bb.LIBS) if any(r["speedup"].get(k) for r in rows)] or ["e3nn"]
    height = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(10, (0.25 + 0.15 * len(names)) * len(rows) + 1))
    for j, name in enumerate(names):  # grouped bars: one per baseline, missing ones left out
        ys = [i - 0.4 + (j + 0.5) * height for i in range(len(rows))]
        ax.barh(ys, [r["speedup"].get(name) or 0.0 for r in rows], height=height, label=f"vs {name}")
    ax.set_yticks(range(len(rows)), labels)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.axvline(1.0, color="k", lw=0.5)
    ax.set_xlabel("speedup of ours over each baseline (median time ratio, log scale)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
