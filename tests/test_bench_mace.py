"""scripts/bench_mace.py --quick: the whole-model benchmark's CPU smoke test (same code path as the GPU run)."""

import collections
import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import pytest

pytest.importorskip("mace")  # the e3nn 0.6 environment of CI has no mace-torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "bench_mace.py"


def _bench_module():
    """scripts/bench_mace.py as a module, loaded afresh (each test may monkeypatch its own)."""
    spec = importlib.util.spec_from_file_location("bench_mace", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_bench_mace_quick(tmp_path):
    out = tmp_path / "bench_mace.json"
    env = dict(os.environ, TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD="1", OMP_NUM_THREADS="1")
    backends = "e3nn,batmobile,batmobile-linear,batmobile-fused,batmobile-unfused,batmobile-graphs"
    done = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out", str(out), "--backends", backends],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["device"].startswith("cpu") and result["versions"]["mace-torch"] and result["versions"]["torch"]
    import e3nn  # the version of the e3nn that ran (with two installs, the one imported, not the last listed)
    assert result["versions"]["e3nn"] == e3nn.__version__
    graphs = [r for r in result["rows"] if r["backend"] == "batmobile-graphs"]
    assert [r["status"] for r in graphs] == ["absent: CUDA graphs need CUDA"] * 2  # a row each mode, not timed
    rows = {(r["backend"], r["mode"]): r for r in result["rows"] if r["backend"] != "batmobile-graphs"}
    assert set(rows) == {(b, m) for b in ("e3nn", "batmobile", "batmobile-linear", "batmobile-fused",
                                                          "batmobile-unfused") for m in ("inference", "train")}
    for (backend, mode), row in rows.items():
        assert row["status"] == "ok", (backend, mode, row["status"])
        assert row["dtype"] == "float64" and row["atoms"] == 27 and 30 < row["neighbours_per_atom"] < 40
        errs = ("energy_rel_err", "forces_rel_err") if mode == "inference" else ("loss_rel_err", "grad_rel_err")
        for key in errs:
            assert row[key] is not None and row[key] < 1e-8, (backend, mode, key, row[key])
        if mode == "train":
            assert row["grad_params_compared"] > 0
        seconds = row["seconds"]  # where a grid's time goes
        parts = seconds["parity"] + seconds["timed"] + seconds["profile"]  # each rounded to 1 ms
        assert seconds["row"] + 0.002 >= parts > 0, seconds
        assert row["wall_ms"] > 0 and len(row["wall_ms_all"]) == 2 and all(t > 0 for t in row["wall_ms_all"])
        assert row["profiled_cpu_ops"] > 0
        # no GPU: kernel time, launches and peak memory are not measured, and recorded as null (not faked)
        assert row["kernel_ms"] is None and row["kernel_launches"] is None and row["peak_memory_bytes"] is None
        assert row["top_kernels"] is None
    if importlib.util.find_spec("matplotlib") is not None:
        assert (tmp_path / "bench_mace.png").stat().st_size > 0


def test_top_kernels_sums_by_name():
    bench = _bench_module()

    cuda = bench.DeviceType.CUDA

    def kernel(name, us):  # a kernel of the profiled step
        return bench.Event(name, cuda, us)

    events = [kernel("gemm", 1000.0), kernel("uvu", 3000.0), kernel("gemm", 2500.0)]
    assert bench._top(events) == [["gemm", 3.5, 2], ["uvu", 3.0, 1]]
    assert bench._top(events, count=1) == [["gemm", 3.5, 2]]
    # kernels named by their mangled symbol are listed demangled, and summed with the same demangled name
    mangled = bench.torch._C._demangle("_Z6kernelPfi")
    assert mangled == "kernel(float*, int)"
    events = [kernel("_Z6kernelPfi", 1000.0), kernel("kernel(float*, int)", 500.0), kernel("x" * 90, 1.0),
              kernel("x" * 85, 2.0)]
    assert bench._top(events) == [["kernel(float*, int)", 1.5, 2], ["x" * 80, 0.003, 2]]


def test_gpu_work_leaves_out_annotated_ranges():
    """An annotated range's GPU-side span (the optimizer step's) is not a kernel: its kernels count on their own."""
    bench = _bench_module()
    cuda, cpu = bench.DeviceType.CUDA, bench.DeviceType.CPU

    def event(name, device_type, is_user_annotation=False):
        return bench.Event(name, device_type, 1.0, is_user_annotation)

    events = [event("bm_uvu_fwd", cuda), event("Optimizer.step#Adam.step", cuda, True), event("Memcpy HtoD", cuda),
              event("multi_tensor_apply_kernel", cuda), event("aten::mm", cpu), event("Memset (Device)", cuda)]
    kernels, copies = bench.gpu_work(events)
    assert [e.name for e in kernels] == ["bm_uvu_fwd", "multi_tensor_apply_kernel"]
    assert [e.name for e in copies] == ["Memcpy HtoD", "Memset (Device)"]


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_profiled_events_are_those_of_torch_profiler(device):
    """``profiled_events`` reads the kineto results directly (``prof.events()`` takes seconds a training step): the
    same events, names (demangled in ``_top``), devices and durations as torch.profiler's own FunctionEvents."""
    bench = _bench_module()
    torch, activities = bench.torch, [bench.ProfilerActivity.CPU]
    if device == "cuda":
        activities.append(bench.ProfilerActivity.CUDA)
    x = torch.randn(64, 64, device=device, requires_grad=True)
    with bench.profile(activities=activities) as prof:
        with torch.profiler.record_function("annotated"):
            (x @ x).sin().sum().backward()
        bench.sync(torch.device(device))
    ours = bench.profiled_events(prof)
    theirs = list(prof.events())

    def counted(events, time):
        return collections.Counter((torch._C._demangle(e.name), e.device_type, round(time(e), 3),
                                    e.is_user_annotation) for e in events)

    ours_counted, theirs_counted = counted(ours, lambda e: e.us), counted(theirs, lambda e: e.time_range.elapsed_us())
    assert len(theirs) > 10 and not theirs_counted - ours_counted
    # the one difference: an op whose single child is an op of its own name is one FunctionEvent (EventList's
    # _remove_dup_nodes), two records here; both on the host (profiled_cpu_ops)
    extra = ours_counted - theirs_counted
    assert all(device_type == bench.DeviceType.CPU and name in {e.name for e in theirs}
               for name, device_type, _, _ in extra), extra
    kernels, _ = bench.gpu_work(ours)
    assert (len(kernels) > 0) == (device == "cuda")
    if device == "cuda":  # the kernels' time as bench_mace recorded it from prof.events() before
        assert sum(e.us for e in kernels) == pytest.approx(sum(
            e.time_range.elapsed_us() for e in bench.gpu_work(theirs)[0]))


def test_out_of_memory_is_a_row_not_a_crash(monkeypatch):
    """An allocation failure, also re-raised by TorchScript's interpreter as a RuntimeError (e3nn's reference at
    MACE-MP-large, 19,683 atoms, float64 on an H200 ended the whole run that way), gives no reference and an "oom"
    row; other errors still raise from the reference and are rows with their message."""
    bench = _bench_module()
    scripted = RuntimeError("The following operation failed in the TorchScript interpreter.\nTraceback of "
                            "TorchScript (most recent call last):\nRuntimeError: CUDA out of memory. Tried to allocate "
                            "22.94 GiB.")
    failure = {"exc": scripted}

    def fails(*args):
        raise failure["exc"]
    monkeypatch.setattr(bench, "first_outputs", fails)
    monkeypatch.setattr(bench, "run_backend", fails)
    device, batch = bench.torch.device("cpu"), type("Batch", (), {"to_dict": dict, "num_nodes": 1})()
    assert bench.reference("inference", bench.torch.nn.Linear(1, 1), batch, device) == {}
    row = {"mode": "inference", "notes": []}
    assert bench.bench_row(row, "e3nn", object(), None, batch, {}, device, None)["status"] == "oom"
    failure["exc"] = RuntimeError("shape mismatch")
    with pytest.raises(RuntimeError, match="shape mismatch"):
        bench.reference("inference", bench.torch.nn.Linear(1, 1), batch, device)
    row = {"mode": "inference", "notes": []}
    assert bench.bench_row(row, "e3nn", object(), None, batch, {}, device, None)["status"] == (
        "error: RuntimeError: shape mismatch")


def test_versions_name_the_first_install_on_the_path(tmp_path, monkeypatch):
    """With two installs of a library (the GPU machine's own e3nn and the carried one), the version recorded
    is the one that imports: the first on sys.path."""
    bench = _bench_module()
    for folder, version in (("first", "9.9.1"), ("second", "9.9.2")):
        info = tmp_path / folder / f"e3nn-{version}.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: e3nn\nVersion: {version}\n")
    monkeypatch.setattr(sys, "path", [str(tmp_path / "first"), str(tmp_path / "second")] + sys.path)
    assert bench.environment(bench.torch.device("cpu"))["versions"]["e3nn"] == "9.9.1"


def test_resume_measures_only_the_missing_rows(tmp_path):
    """``--resume``: the grid over several commands (the device's 10-minute limit) as one run of one code: the rows
    already in --out stay as they were, the missing ones are added, each invocation is recorded."""
    out = tmp_path / "bench_mace.json"
    env = dict(os.environ, TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD="1", OMP_NUM_THREADS="1")
    base = [sys.executable, str(SCRIPT), "--quick", "--out", str(out), "--png", "none", "--backends", "e3nn,batmobile"]
    first = subprocess.run(base + ["--modes", "inference"], cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=240)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    before = json.loads(out.read_text())
    assert {(r["backend"], r["mode"]) for r in before["rows"]} == {("e3nn", "inference"), ("batmobile", "inference")}
    second = subprocess.run(base + ["--resume"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "resumed with 2 rows" in second.stdout
    after = json.loads(out.read_text())
    assert after["rows"][:2] == before["rows"]  # kept, not measured again
    assert [(r["backend"], r["mode"], r["status"]) for r in after["rows"][2:]] == [
        ("e3nn", "train", "ok"), ("batmobile", "train", "ok")]
    assert [i["modes"] for i in after["invocations"]] == [["inference"], ["inference", "train"]]


def test_resume_starts_again_on_other_code(tmp_path):
    bench = _bench_module()
    env = {"device": "cpu (1 threads)", "versions": {"torch": "x"}, "source_digest": "abc"}
    out = tmp_path / "bench_mace.json"
    row = {"model": "quick", "atoms": 27, "dtype": "float64", "mode": "train", "backend": "e3nn"}
    out.write_text(json.dumps({**env, "args": {"modes": ["train"]}, "rows": [row]}))
    written = json.dumps({**env, "args": {"modes": ["train"]}, "rows": [row]})
    assert bench.resumed(out, env) == ([row], [{"modes": ["train"]}])
    for key, other in (("source_digest", "abd"), ("device", "NVIDIA H200"), ("versions", {"torch": "y"})):
        out.write_text(written)
        assert bench.resumed(out, {**env, key: other}) == ([], [])
        # the other run's rows are moved aside, not lost to the first row of the new one
        assert not out.exists() and (tmp_path / "bench_mace.prev.json").read_text() == written
    assert bench.resumed(tmp_path / "absent.json", env) == ([], [])


def test_resume_drops_the_groups_a_command_left_unfinished():
    """A group of the command's grid that lacks one of its backends is measured again, whole; groups outside the
    command's grid stay as they are (another command measures them)."""
    bench = _bench_module()

    def row(model, atoms, mode, backend):
        return {"model": model, "atoms": atoms, "dtype": "float32", "mode": mode, "backend": backend}

    four = ["e3nn", "cueq", "oeq", "batmobile"]
    whole = [row("medium", 1000, "inference", b) for b in four]
    cut = [row("medium", 1000, "train", b) for b in ("e3nn", "cueq")]  # the command stopped inside this group
    elsewhere = [row("small", 1000, "train", "e3nn")]  # cut too, but not in the next command's grid

    def args(models, backends):
        return bench.parse_args(["--models", models, "--atoms", "1000", "--dtypes", "float32", "--backends",
                                 ",".join(backends), "--device", "cpu"])

    rows = whole + cut + elsewhere
    assert bench.whole_groups(rows, args("medium", four)) == whole + elsewhere
    assert bench.whole_groups(rows, args("medium,small", four)) == whole
    assert bench.whole_groups(rows, args("medium", ["e3nn", "cueq"])) == rows
    assert bench.whole_groups(rows, args("large", four)) == rows
    # a backend added to the command: the groups it lacks are measured again with every backend
    assert bench.whole_groups(whole, args("medium", four + ["batmobile-fused"])) == []
    assert bench.whole_groups([], args("medium", four)) == []
