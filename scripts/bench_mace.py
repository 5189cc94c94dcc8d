"""Whole-model MACE benchmark (issue 5, point 5): e3nn, cuEquivariance, OpenEquivariance and batmobile_nn.

Model: mace-torch's MACE-MP architecture, random weights (ScaleShiftMACE, RealAgnosticResidualInteractionBlock, 2
interactions, max_ell 3, correlation 3, 10 Bessel, radial MLP [64, 64, 64], r_max 6 A, 89 elements); hidden irreps
small 64x0e+64x1o, medium 128x0e+128x1o, large 128x0e+128x1o+128x2e. Structures: rattled fcc Cu of n^3 primitive
cells (1,000 / 4,913 / 19,683 atoms; lattice 4.80 A, rattle 0.15 A: ~35 neighbours within 6 A, as in
../shared/PERFORMANCE.md), batched as mace's calculator does (config_from_atoms -> AtomicData.from_config -> Batch).
Backends on the same weights and graph: e3nn (stock), cueq (mace.cli.convert_e3nn_cueq.run, conv fusion on CUDA), oeq
(mace.cli.convert_e3nn_oeq.run), batmobile (batmobile_nn.patch of a copy: its default fusion, "auto"),
batmobile-linear (that with the opt-in linear swaps), batmobile-fused (patch(fuse_interactions=True): every
interaction block as nn.FusedInteraction, always), batmobile-unfused (patch(fuse_interactions=False)),
batmobile-graphs (that, each inference call
replayed from a CUDA graph as MACECalculator(cuda_graphs=True) does; CUDA and inference only); one not importable is
"absent". Parity vs
e3nn: energy and forces (inference), loss and the first step's gradients of same-named parameters (train); beyond
TOLERANCE the status is "failed parity" (still timed). Modes: inference = energy + forces by autograd (parameters
frozen, as mace's calculator); train = energy/atom + force MSE (zero targets), double backward, Adam, on a fresh copy
per backend. Per row: median wall ms (synchronized) after warm-up; kernel ms and count of one step (torch.profiler,
CUDA, with the ten kernels that took the most time; null on the CPU, where the profiled CPU op count is given); peak
memory of one step. Device, versions and git
revision sit at the top of the JSON (rewritten after every row). PNG: grouped bars per row and backend.

Usage: python scripts/bench_mace.py [--models small,medium,large] [--atoms 1000,4913,19683] [--dtypes float32,float64]
  [--backends e3nn,cueq,oeq,batmobile] [--modes inference,train] [--repeats 10] [--out F.json] [--png F.png|none]
  [--quick]   (CPU smoke test of the same path: 8x0e+8x1o, 27 atoms, float64, e3nn + batmobile, 2 repeats)
  [--resume]  (keep --out's rows if the same code, device and versions wrote them; measure the rest: the whole
               grid takes longer than one 10-minute device command, so it runs as several, one run of one code;
               a group of this command's grid that lacks one of its backends is measured again, whole)
"""

import argparse
import contextlib
import copy
import functools
import gc
import itertools
import json
import statistics
import sys
import time
import warnings
from importlib import metadata
from pathlib import Path
from typing import NamedTuple

import batmobile_nn  # noqa: F401  (before e3nn / mace: sets TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD for e3nn 0.4.4)
import numpy as np
import torch
from ase.build import bulk
from batmobile_nn.commands.bench import git_info
from e3nn import o3
from mace import data as mace_data, modules
from mace.tools import AtomicNumberTable, torch_geometric
from torch.autograd import DeviceType
from torch.autograd.profiler_util import _filter_name  # the records prof.events() leaves out
from torch.profiler import ProfilerActivity, profile

ARCHS = {"small": "64x0e+64x1o", "medium": "128x0e+128x1o", "large": "128x0e+128x1o+128x2e", "quick": "8x0e+8x1o"}
BACKENDS, MODES, DTYPES = ("e3nn", "cueq", "oeq", "batmobile", "batmobile-linear", "batmobile-fused",
                          "batmobile-unfused", "batmobile-graphs"), ("inference", "train"), {
    "float32": torch.float32, "float64": torch.float64}
R_MAX, LATTICE, RATTLE, Z_TABLE = 6.0, 4.80, 0.15, list(range(1, 90))  # MACE-MP: 89 elements, H..Ac
TOLERANCE = {torch.float32: 5e-4, torch.float64: 1e-8}  # relative: max |got - e3nn| / max |e3nn|
REPO = Path(__file__).resolve().parents[1]


class Absent(Exception):
    """A backend this run cannot use (library not importable, or needs CUDA)."""


@contextlib.contextmanager
def default_dtype(dtype):
    previous = torch.get_default_dtype()  # e3nn builds constants in it; mace's converters set it globally
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


@contextlib.contextmanager
def seconds(label):
    """Prints ``[seconds] label S`` after the block (where a grid's time goes, beside the rows' ``seconds``)."""
    start = time.perf_counter()
    yield
    print(f"[seconds] {label} {time.perf_counter() - start:.2f}", flush=True)


def build_model(hidden_irreps, dtype, device, seed=0):
    """A random-weight MACE-MP-shaped ScaleShiftMACE (the class mace's converters accept), built in ``dtype``."""
    residual = modules.interaction_classes["RealAgnosticResidualInteractionBlock"]
    with default_dtype(dtype):
        torch.manual_seed(seed)
        model = modules.ScaleShiftMACE(
            r_max=R_MAX, num_bessel=10, num_polynomial_cutoff=5, max_ell=3, interaction_cls=residual,
            interaction_cls_first=residual, num_interactions=2, num_elements=len(Z_TABLE),
            hidden_irreps=o3.Irreps(hidden_irreps), MLP_irreps=o3.Irreps("16x0e"), gate=torch.nn.functional.silu,
            atomic_energies=np.zeros(len(Z_TABLE)), avg_num_neighbors=35.0, atomic_numbers=Z_TABLE,
            correlation=3, radial_MLP=[64, 64, 64], atomic_inter_scale=1.0, atomic_inter_shift=0.0)
    return model.to(device)


def build_batch(n_atoms, dtype, device, seed=0):
    """Rattled fcc Cu of n^3 primitive cells as a mace batch (positions [N, 3], edge_index [2, E], shifts [E, 3],
    node_attrs [N, 89], ...) on ``device``."""
    n = round(n_atoms ** (1 / 3))
    if n ** 3 != n_atoms:
        raise SystemExit(f"--atoms {n_atoms}: not a cube (n^3 primitive fcc cells)")
    atoms = bulk("Cu", "fcc", a=LATTICE).repeat((n, n, n))
    atoms.rattle(RATTLE, seed=seed)
    with default_dtype(dtype):
        graph = mace_data.AtomicData.from_config(mace_data.config_from_atoms(atoms), cutoff=R_MAX,
                                                 z_table=AtomicNumberTable(Z_TABLE))
    return torch_geometric.Batch.from_data_list([graph]).to(device)


def make_backend(name, base, device):
    """A new model of backend ``name`` with ``base``'s weights (``base`` is not changed)."""
    if name == "e3nn":
        return copy.deepcopy(base)
    if name == "batmobile":
        return batmobile_nn.patch(copy.deepcopy(base))
    if name == "batmobile-linear":  # patch() with the opt-in linear swaps (patches.mace.LINEAR_SWAPS) registered too
        from batmobile_nn.patches import mace as mace_patches
        from batmobile_nn.patches._registry import register_swap, unregister_swap
        swaps = [register_swap(swap) for swap in mace_patches.LINEAR_SWAPS]
        try:
            return batmobile_nn.patch(copy.deepcopy(base))
        finally:
            for swap in swaps:
                unregister_swap(swap)
    if name in ("batmobile-fused", "batmobile-unfused"):  # patch's other fusions than its default ("auto")
        return batmobile_nn.patch(copy.deepcopy(base), fuse_interactions=name == "batmobile-fused")
    if name == "batmobile-graphs":  # the calculator's cuda_graphs=True: the whole call replayed from a CUDA graph
        if device.type != "cuda":
            raise Absent("absent: CUDA graphs need CUDA")
        from batmobile_nn.calculators._graphs import CudaGraphStep
        return CudaGraphStep(batmobile_nn.patch(copy.deepcopy(base)))
    try:
        if name == "cueq":
            import cuequivariance_torch  # noqa: F401
            if device.type == "cuda":
                import cuequivariance_ops_torch  # noqa: F401  (without it cuet falls back to PyTorch silently)
            from mace.cli.convert_e3nn_cueq import run
        elif device.type != "cuda":
            raise Absent("absent: OpenEquivariance needs CUDA")
        else:
            import openequivariance  # noqa: F401
            from mace.cli.convert_e3nn_oeq import run
    except ImportError as exc:
        raise Absent(f"absent: {exc}") from exc
    with default_dtype(next(base.parameters()).dtype):
        return run(copy.deepcopy(base), device=device.type, return_model=True).to(device)


def inference_step(model, data):
    """Energy [1] and forces [N, 3] (autograd, no graph kept), as mace's calculator runs the model."""
    out = model(data, training=False, compute_force=True)
    return out["energy"].detach(), out["forces"].detach()


def train_loss(model, data, n_atoms):
    """Energy-per-atom + force MSE against zero targets; training=True keeps the force graph (double backward)."""
    out = model(data, training=True, compute_force=True)
    return (out["energy"] / n_atoms).square().mean() + out["forces"].square().mean()


def make_step(mode: str, model, data: dict, n_atoms: int):
    """The timed step: inference (energy and forces, parameters frozen as in mace's calculator) or a training
    step (force loss, double backward, Adam)."""
    if mode == "inference":
        for p in model.parameters():
            p.requires_grad_(False)
        return lambda: inference_step(model, data)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step():
        optimizer.zero_grad(set_to_none=True)
        train_loss(model, data, n_atoms).backward()
        optimizer.step()
    return step


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free(device):
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def measure(step, device, warmup, repeats):
    """Wall ms of ``repeats`` synchronized calls after ``warmup``; then one profiled call (kernel ms and count on
    CUDA, null on the CPU; profiled CPU ops) and one call for peak memory (CUDA). ``seconds``: the host time of
    the timed calls (warm-up included) and of the profiled call with its events' processing (where a grid's
    time goes)."""
    t_start = time.perf_counter()
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        step()
        sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    cuda = device.type == "cuda"
    t_profile = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        step()
        sync(device)
    events = profiled_events(prof)
    kernels, copies = gpu_work(events)
    on_host = [e for e in events if e.device_type != DeviceType.CUDA]
    row = {"wall_ms": statistics.median(times), "wall_ms_all": [round(t, 4) for t in times],
           "kernel_ms": sum(e.us for e in kernels) / 1e3 if cuda else None,
           "kernel_launches": len(kernels) if cuda else None,
           "memcpy_memset": len(copies) if cuda else None,
           "launch_api_calls": sum("LaunchKernel" in e.name for e in on_host) if cuda else None,
           "profiled_cpu_ops": sum(not e.name.startswith(("cuda", "cu")) for e in on_host),
           "top_kernels": _top(kernels) if cuda else None,
           "peak_memory_bytes": None, "memory_before_bytes": None,
           "seconds": {"timed": round(t_profile - t_start, 3), "profile": round(time.perf_counter() - t_profile, 3)}}
    if cuda:
        sync(device)
        row["memory_before_bytes"] = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        sync(device)
        row["peak_memory_bytes"] = torch.cuda.max_memory_allocated(device)
    return row


class Event(NamedTuple):
    """One event of a profiled step: what ``gpu_work`` and ``_top`` read."""
    name: str
    device_type: DeviceType
    us: float
    is_user_annotation: bool = False


def profiled_events(prof) -> list:
    """The events of ``prof`` as ``Event``s, read from its kineto results. Not ``prof.events()``: that builds a
    FunctionEvent tree, 1.5-2.6 s for the 25k events of a training step on the CPU (``--quick``), against
    0.13-0.16 s here; left out as there: memory records, hidden events and the profiler's own bookkeeping ops.
    The same kernels and times; on the host, an op whose single child has its name counts twice (prof.events()
    merges the two)."""
    kept = []
    for e in prof.profiler.kineto_results.events():
        name = e.name()
        if _filter_name(name) or getattr(e, "is_hidden_event", lambda: False)():
            continue
        kept.append(Event(name, e.device_type(), e.duration_ns() / 1e3,
                          getattr(e, "is_user_annotation", lambda: False)()))
    return kept


def gpu_work(events):
    """``(kernels, copies)`` among a profile's events: what ran on the GPU, memcpy and memset apart. Not the
    GPU-side spans of annotated ranges (``Optimizer.step#Adam.step``, ``record_function``): they cover kernels
    that are counted on their own, and the gaps between them (grid run of 2026-12-02: 0.5-1.2 ms a training step
    in every backend's kernel time)."""
    on_gpu = [e for e in events if e.device_type == DeviceType.CUDA and not e.is_user_annotation]
    copies = [e for e in on_gpu if e.name.startswith(("Memcpy", "Memset"))]
    return [e for e in on_gpu if not e.name.startswith(("Memcpy", "Memset"))], copies


def _top(kernels, count=10):
    """The ``count`` kernels with the most GPU time in the profiled step: ``[name, ms, launches]``, summed by the
    demangled name's first 80 characters (as torch.profiler's tables name them)."""
    by_name = {}
    for e in kernels:
        name = _kernel_name(e.name)
        total, n = by_name.get(name, (0.0, 0))
        by_name[name] = (total + e.us / 1e3, n + 1)
    return [[name, round(ms, 4), n] for name, (ms, n) in sorted(by_name.items(), key=lambda kv: -kv[1][0])[:count]]


@functools.lru_cache(maxsize=None)
def _kernel_name(name: str) -> str:
    return (torch._C._demangle(name) if len(name) > 1 else name)[:80]  # (one letter: a type code, kept)


def errors(got, ref):
    """(max |got - ref|, that over max |ref|); (None, None) without a reference."""
    if ref is None:
        return None, None
    diff = (got.detach().double() - ref.detach().double().reshape(got.shape)).abs().max().item()
    return diff, diff / max(ref.detach().double().abs().max().item(), 1e-300)


def first_outputs(mode, model, data, n_atoms):
    """What parity compares. inference: {energy [1], forces [N, 3]} (parameters frozen, as in mace's calculator);
    train: {loss, grads {name: tensor}} of the first step, before any optimizer step (grads then cleared)."""
    if mode == "inference":
        for p in model.parameters():
            p.requires_grad_(False)
        energy, forces = inference_step(model, data)
        return {"energy": energy, "forces": forces}
    loss = train_loss(model, data, n_atoms)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return {"loss": loss.detach(), "grads": grads}


def out_of_memory(exc: BaseException) -> bool:
    """An allocation failure, also as TorchScript's interpreter re-raises it (a RuntimeError naming it)."""
    return isinstance(exc, torch.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower())


def reference(mode, base, batch, device):
    """e3nn's first outputs on ``batch`` (untimed); {} when e3nn runs out of memory (no parity check then)."""
    try:
        return first_outputs(mode, copy.deepcopy(base), batch.to_dict(), batch.num_nodes)
    except RuntimeError as exc:  # (torch.OutOfMemoryError is one)
        if not out_of_memory(exc):
            raise
        return {}
    finally:
        free(device)


def run_backend(mode, model, batch, ref, device, args):
    """Parity fields and timings of one backend in one mode (``model``: a fresh copy for train)."""
    data, n_atoms = batch.to_dict(), batch.num_nodes
    t_parity = time.perf_counter()
    got, row = first_outputs(mode, model, data, n_atoms), {}
    for key in ("energy", "forces", "loss"):
        if key in got:
            row[f"{key}_abs_err"], row[f"{key}_rel_err"] = errors(got[key], ref.get(key))
    if "grads" in got:  # the parameters with the same name and size as e3nn's (cueq renames some)
        pairs = [(g, ref["grads"][n]) for n, g in got.pop("grads").items() if n in ref.get("grads", {})
                 and g.numel() == ref["grads"][n].numel() and ref["grads"][n].abs().max() > 0]
        row["grad_rel_err"] = max((errors(g, r)[1] for g, r in pairs), default=None)
        row["grad_params_compared"] = len(pairs)
    step = make_step(mode, model, data, n_atoms)
    parity_s = time.perf_counter() - t_parity
    measured = measure(step, device, args.warmup, args.repeats)
    measured["seconds"]["parity"] = round(parity_s, 3)
    return {**row, **measured}


def parity_status(row, dtype, backend):
    keys = ("energy_rel_err", "forces_rel_err") if row["mode"] == "inference" else ("loss_rel_err", "grad_rel_err")
    errs = [row[k] for k in keys if row.get(k) is not None]
    if not errs:
        return "ok" if backend == "e3nn" else "ok (unchecked: no e3nn reference)"
    worst, tol = max(errs), TOLERANCE[dtype]
    return "ok" if worst <= tol else f"failed parity (max rel err {worst:.3g} > {tol:g})"


def environment(device):
    """Device name, library versions and git revision (top level of the JSON: they hold for every row)."""
    names = ("torch", "mace-torch", "e3nn", "batmobile-nn", "openequivariance", "ase", "numpy")
    versions = {}
    for dist in metadata.distributions():  # in sys.path order: the first of two installs is the one imported
        name = (dist.metadata["Name"] or "").lower()
        if name in names or name.startswith("cuequivariance"):
            versions.setdefault(name, dist.version)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    code = git_info(REPO)  # source_digest: the code that ran, where a copied tree's .git is stale
    return {"device": name, "versions": versions, "git_revision": code["revision"], "git_dirty": code["dirty"],
            "source_digest": code["source_digest"]}


def caught_notes(caught):
    """Distinct warnings worth keeping (not deprecation / TorchScript noise), first line each."""
    return sorted({f"{w.category.__name__}: {str(w.message).splitlines()[0][:160]}" for w in caught
                   if not issubclass(w.category, DeprecationWarning) and "TorchScript" not in str(w.message)})[:5]


def short(exc):
    return f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}"


def plot(rows, device, path):
    """Grouped bars, one panel per model and metric (wall and kernel ms): one group per (atoms, dtype, mode), one
    bar per backend."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return print("matplotlib missing: no plot")
    models = list(dict.fromkeys(r["model"] for r in rows))
    backends = list(dict.fromkeys(r["backend"] for r in rows))
    value = {(r["model"], r["atoms"], r["dtype"], r["mode"], r["backend"]): r for r in rows}
    metrics = [("wall_ms", "wall ms / step")] + ([("kernel_ms", "GPU kernel ms / step")]
                                                  if any(r.get("kernel_ms") for r in rows) else [])
    most = max(len({(r["atoms"], r["dtype"], r["mode"]) for r in rows if r["model"] == m}) for m in models)
    fig, axes = plt.subplots(len(models), len(metrics), figsize=(max(6, 0.9 * most + 2) * len(metrics),
                                                                  3.2 * len(models)), squeeze=False)
    width = 0.8 / len(backends)
    for i, model in enumerate(models):
        groups = list(dict.fromkeys((r["atoms"], r["dtype"], r["mode"]) for r in rows if r["model"] == model))
        x = np.arange(len(groups))
        for ax, (key, label) in zip(axes[i], metrics):
            for j, backend in enumerate(backends):
                ys = [value.get((model, *g, backend), {}).get(key) for g in groups]
                ax.bar(x + j * width, [np.nan if y is None else y for y in ys], width, label=backend)
            ax.set(yscale="log", ylabel=label, title=f"{model} ({ARCHS.get(model, '')})",
                   xlim=(-width, len(groups) - 1 + len(backends) * width))  # NaN bars (oom) do not size the axis
            ax.title.set_fontsize(8)
            ax.set_xticks(x + width * (len(backends) - 1) / 2, [f"{a} {d.replace('float', 'f')} {mode[:5]}"
                                                                for a, d, mode in groups], rotation=30, ha="right",
                          fontsize=7)
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(f"MACE energy+forces (inference) and training step: {device}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for flag, choices in (("--models", ARCHS), ("--dtypes", DTYPES), ("--backends", BACKENDS), ("--modes", MODES)):
        p.add_argument(flag, type=lambda s, c=choices: [v for v in s.split(",") if v in c or p.error(f"{v}?")])
    p.add_argument("--atoms", type=lambda s: [int(v) for v in s.split(",")], help="cubes n^3 (default 1000,4913,19683)")
    for flag in ("--repeats", "--warmup", "--threads"):
        p.add_argument(flag, type=int)
    p.add_argument("--device", help="default: cuda when available (cpu with --quick)")
    p.add_argument("--out", default="bench_mace.json")
    p.add_argument("--png", help="default: --out with .png; 'none' for no plot")
    p.add_argument("--quick", action="store_true", help="CPU smoke test of the same code path")
    p.add_argument("--resume", action="store_true",
                   help="keep the rows of --out measured by the same code (source digest) on the same device and "
                        "versions, and measure only the missing ones: one run of the grid over several commands "
                        "(a group of this grid without one of --backends is measured again, whole)")
    args = p.parse_args(argv)
    quick = dict(models=["quick"], atoms=[27], dtypes=["float64"], backends=["e3nn", "batmobile"],
                 modes=list(MODES), repeats=2, warmup=1, threads=1, device="cpu")
    full = dict(models=["small", "medium", "large"], atoms=[1000, 4913, 19683], dtypes=list(DTYPES),
                backends=list(BACKENDS), modes=list(MODES), repeats=10, warmup=3,
                device="cuda" if torch.cuda.is_available() else "cpu")
    for key, default in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, default)
    return args


def bench_row(row, backend, inference_model, base, batch, ref, device, args):
    """Fill ``row`` for one backend and mode: parity, timings, status (oom and errors recorded, not raised)."""
    model, t_start = None, time.perf_counter()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = inference_model if row["mode"] == "inference" else make_backend(backend, base, device)
            built_s = time.perf_counter() - t_start
            row.update(run_backend(row["mode"], model, batch, ref, device, args))
            row["seconds"].update(build=round(built_s, 3), row=round(time.perf_counter() - t_start, 3))
            if backend == "batmobile-graphs":  # a replay allocates nothing: its memory sits in the graph's pool
                row["peak_memory_bytes"] = None
                row["notes"] = row["notes"] + ["peak memory not measured: the CUDA graph's private pool is not "
                                               "counted by max_memory_allocated"]
        row["notes"] = sorted(set(row["notes"] + caught_notes(caught)))
        row["status"] = parity_status(row, DTYPES[row["dtype"]], backend)
    except Exception as exc:  # noqa: BLE001  (a backend that breaks is a row, not a crash)
        row["status"] = "oom" if out_of_memory(exc) else f"error: {short(exc)}"
    finally:
        del model
        free(device)
    return row


def row_key(row) -> tuple:
    return (row["model"], row["atoms"], row["dtype"], row["mode"], row["backend"])


def resumed(out: Path, env: dict):
    """``(rows, invocations)`` of ``out`` when it was written by the same code (source digest), device and versions;
    else nothing (the file is then rewritten from the start)."""
    try:
        previous = json.loads(out.read_text())
    except (OSError, ValueError):
        return [], []
    if not isinstance(previous, dict):
        return [], []
    same = all(previous.get(k) == env[k] for k in ("device", "versions", "source_digest"))
    if not same:  # its rows are kept aside, not overwritten by the first new row
        kept = out.with_name(out.stem + ".prev" + out.suffix)
        out.replace(kept)
        print(f"--resume: {out} comes from other code, device or versions; moved to {kept}, starting again", flush=True)
        return [], []
    return previous.get("rows", []), previous.get("invocations", [previous.get("args")])


def whole_groups(rows: list, args) -> list:
    """``rows`` less the groups (model, atoms, dtype, mode) of this command's grid (``args``) that lack one of its
    backends: a command stopped inside a group, or a backend was added, and this command measures the group
    again, whole, in one process (a group split over two processes compared backends on baselines 83 MB apart:
    grid run of 2026-12-02). Groups outside the grid are kept as they are."""
    grid = set(itertools.product(args.models, args.atoms, args.dtypes, args.modes))
    have = {}
    for r in rows:
        have.setdefault(row_key(r)[:4], set()).add(r["backend"])
    cut = {group for group, names in have.items() if group in grid and not set(args.backends) <= names}
    if cut:
        print(f"--resume: {len(cut)} group(s) without every backend, measured again: {sorted(cut)}", flush=True)
    return [r for r in rows if row_key(r)[:4] not in cut]


def main(argv=None):
    args = parse_args(argv)
    device, out = torch.device(args.device), Path(args.out)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # parity with e3nn
    env, rows = environment(device), []
    invocations = [vars(args)]
    if args.resume:
        rows, invocations = resumed(out, env)
        rows = whole_groups(rows, args)
        invocations.append(vars(args))
    done = {row_key(r) for r in rows}
    print(f"{env['device']} | {env['versions']} | git {env['git_revision']}"
          + (f" | resumed with {len(rows)} rows" if rows else ""), flush=True)
    for model_name, dtype_name in itertools.product(args.models, args.dtypes):
        if all((model_name, n, dtype_name, m, b) in done
               for n, m, b in itertools.product(args.atoms, args.modes, args.backends)):
            continue  # every row of this model and dtype is in the resumed file
        models, notes = {}, {}  # the inference models, built once per architecture and dtype (or why not)
        with seconds(f"{model_name} {dtype_name}: models"):
            base = build_model(ARCHS[model_name], DTYPES[dtype_name], device)
            for backend in args.backends:
                with seconds(f"{model_name} {dtype_name}: {backend} model"):
                    try:
                        with warnings.catch_warnings(record=True) as caught:
                            warnings.simplefilter("always")
                            models[backend] = make_backend(backend, base, device)
                        notes[backend] = caught_notes(caught)
                    except Absent as exc:
                        models[backend] = str(exc)
                    except Exception as exc:  # noqa: BLE001  (a conversion that fails is a row, not a crash)
                        models[backend] = f"error building: {short(exc)}"
        for n_atoms in args.atoms:
            if all((model_name, n_atoms, dtype_name, m, b) in done for m in args.modes for b in args.backends):
                continue
            with seconds(f"{model_name} {dtype_name}: batch of {n_atoms} atoms"):
                batch = build_batch(n_atoms, DTYPES[dtype_name], device)
            edges = int(batch["edge_index"].shape[1])
            for mode in args.modes:
                if all((model_name, n_atoms, dtype_name, mode, b) in done for b in args.backends):
                    continue
                with seconds(f"{model_name} {n_atoms} {dtype_name} {mode}: e3nn reference"):
                    ref = reference(mode, base, batch, device)
                for backend in args.backends:
                    if (model_name, n_atoms, dtype_name, mode, backend) in done:
                        continue
                    row = {"model": model_name, "hidden_irreps": ARCHS[model_name], "atoms": batch.num_nodes,
                           "edges": edges, "neighbours_per_atom": round(edges / batch.num_nodes, 2),
                           "dtype": dtype_name, "mode": mode, "backend": backend, "notes": notes.get(backend, [])}
                    if isinstance(models[backend], str):
                        row["status"] = models[backend]
                    elif backend == "batmobile-graphs" and mode == "train":
                        row["status"] = "absent: inference only (CUDA graphs are for MD)"
                    else:
                        bench_row(row, backend, models[backend], base, batch, ref, device, args)
                    rows.append(row)
                    errs = {k: f"{row[k]:.2g}" for k in ("energy_rel_err", "forces_rel_err", "grad_rel_err")
                            if row.get(k) is not None}
                    print(f"{model_name} {row['atoms']} atoms {dtype_name} {mode} {backend}: {row['status']}; "
                          f"wall {row.get('wall_ms')} ms; kernels {row.get('kernel_ms')} ms "
                          f"x{row.get('kernel_launches')}; peak {row.get('peak_memory_bytes')} B; {errs}; "
                          f"seconds {row.get('seconds')}", flush=True)
                    tmp = out.with_name(out.name + ".tmp")  # then renamed: a run killed mid-write keeps its file
                    tmp.write_text(json.dumps({"benchmark": "bench_mace", "args": vars(args), **env,
                                               "invocations": invocations, "rows": rows}, indent=1))
                    tmp.replace(out)
                del ref
            del batch
            free(device)
        del base, models
        free(device)
    png = args.png or str(out.with_suffix(".png"))
    if png != "none" and any(r.get("wall_ms") is not None for r in rows):
        plot([r for r in rows if r.get("wall_ms") is not None], env["device"], png)
    print(f"wrote {out}" + ("" if png == "none" else f" and {png}"))


if __name__ == "__main__":
    sys.exit(main())
