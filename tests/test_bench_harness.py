"""``batmobile-nn bench`` (the registry, the results folder, the latest pointer) and scripts/make_bench_table.py."""

import importlib.util
import json
import os
import pathlib
import re
import subprocess
import sys
import textwrap

ROOT = pathlib.Path(__file__).resolve().parents[1]
TABLE_SCRIPT = ROOT / "scripts" / "make_bench_table.py"


def _table_module():
    spec = importlib.util.spec_from_file_location("make_bench_table", TABLE_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _bench(*args, cwd=ROOT):
    env = dict(os.environ, TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD="1", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "batmobile_nn.cli", "bench", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def _latest(results):
    name = (results / "LATEST").read_text().strip()
    folder = results / name
    assert folder.is_dir()
    if (results / "latest").is_symlink():
        assert (results / "latest").resolve() == folder.resolve()
    return folder


def test_registry_lists_bench_ops_and_bench_mace():
    registry = json.loads((ROOT / "scripts" / "benchmarks.json").read_text())["benchmarks"]
    assert {"bench_ops", "bench_mace"} <= set(registry)
    for entry in registry.values():
        assert entry["script"].startswith("scripts/") and "--quick" in entry["quick_args"]


def test_bench_ops_quick_run_and_table(tmp_path):
    results = tmp_path / "results"
    done = _bench("--quick", "--only", "bench_ops", "--results", str(results),
                  "--extra-args=bench_ops:--only sh --dtypes float32")
    assert done.returncode == 0, done.stdout + done.stderr
    folder = _latest(results)
    assert {"manifest.json", "bench_ops.json", "bench_ops.log", "run.log"} <= {p.name for p in folder.iterdir()}

    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["ok"] is True and manifest["quick"] is True
    assert manifest["device"] == "cpu" or manifest["device"]
    if (ROOT / ".git").exists():  # a source checkout (not an unpacked archive)
        assert len(manifest["git"]["revision"]) == 40 and isinstance(manifest["git"]["dirty"], bool)
    assert folder.name.endswith("-" + manifest["git"]["short"])
    assert manifest["versions"]["torch"] and manifest["versions"]["batmobile_nn"]
    record = manifest["benchmarks"]["bench_ops"]
    assert record["exit_code"] == 0 and record["status"] == "ok" and record["duration_s"] > 0
    assert record["command"][:2] == [sys.executable, str(ROOT / "scripts" / "bench_ops.py")]
    assert record["command"][2:7] == ["--quick", "--only", "sh", "--dtypes", "float32"]

    data = json.loads((folder / "bench_ops.json").read_text())
    assert data["rows"] and {row["op"] for row in data["rows"]} == {"spherical_harmonics l=3"}
    assert data["source_digest"] == manifest["git"]["source_digest"]  # the code that ran, named in the JSON too
    if (ROOT / ".git").exists():
        assert data["git_revision"] == manifest["git"]["revision"]
    assert "spherical_harmonics" in (folder / "bench_ops.log").read_text()

    table = subprocess.run([sys.executable, str(TABLE_SCRIPT), "--results", str(results / "latest")],
                           capture_output=True, text=True, timeout=60)
    assert table.returncode == 0, table.stderr
    assert "| op | edges | dtype | ours ms | e3nn ms" in table.stdout
    edges = data["rows"][0]["edges"]
    assert f"| spherical_harmonics l=3 | {edges:,} | float32 |" in table.stdout
    assert manifest["git"]["short"] in table.stdout


def test_failing_benchmark_does_not_stop_the_others(tmp_path):
    """A registry of two fake benchmarks: one fails, the other still runs; the exit code says so."""
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "fail.py").write_text("import sys\nprint('about to fail')\nsys.exit(3)\n")
    (tmp_path / "scripts" / "fake_mace.py").write_text(textwrap.dedent("""
        import argparse, json
        p = argparse.ArgumentParser()
        p.add_argument("--out"); p.add_argument("--png"); p.add_argument("--quick", action="store_true")
        p.add_argument("--atoms", type=int, default=10)
        a = p.parse_args()
        rows = [{"model": "small", "atoms": a.atoms, "dtype": "float32", "mode": "inference", "backend": b,
                 "wall_ms": 1.5, "kernel_ms": None, "launches": 42, "peak_memory_bytes": 2_500_000_000}
                for b in ("e3nn", "ours")]
        json.dump({"device": "cpu", "rows": rows}, open(a.out, "w"))
        print("done", a.quick, a.atoms)
    """))
    registry = {"benchmarks": {"fail": {"script": "scripts/fail.py", "args": [], "quick_args": ["--quick"]},
                               "fake_mace": {"script": "scripts/fake_mace.py", "args": [], "quick_args": ["--quick"]},
                               "missing": {"script": "scripts/missing.py"}}}
    (tmp_path / "scripts" / "benchmarks.json").write_text(json.dumps(registry))
    results = tmp_path / "results"
    done = _bench("--quick", "--registry", str(tmp_path / "scripts" / "benchmarks.json"), "--results",
                  str(results), "--extra-args", "fake_mace:--atoms 7")
    assert done.returncode == 1, done.stdout + done.stderr
    folder = _latest(results)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["ok"] is False and manifest["failed"] == ["fail", "missing"]
    assert manifest["git"]["short"] == "nogit"
    assert manifest["benchmarks"]["fail"]["exit_code"] == 3
    assert "not found" in manifest["benchmarks"]["missing"]["status"]
    assert manifest["benchmarks"]["fake_mace"]["status"] == "ok"
    assert "about to fail" in (folder / "fail.log").read_text()
    assert "done True 7" in (folder / "fake_mace.log").read_text()

    text = _table_module().render(folder)
    assert "| model | atoms | dtype | mode | backend | wall ms | launches | peak memory GB |" in text
    assert "| small | 7 | float32 | inference | ours | 1.50 | 42 | 2.50 |" in text
    assert "failed: exit code 3" in text


def test_unknown_benchmark_and_missing_registry(tmp_path):
    assert _bench("--only", "nope", "--results", str(tmp_path)).returncode == 2
    done = _bench("--registry", str(tmp_path / "none.json"), "--results", str(tmp_path))
    assert done.returncode == 2 and "source checkout" in done.stderr


def test_readme_marker_replacement(tmp_path):
    table = _table_module()
    text = "intro\n<!-- bench:start -->\nold table\n<!-- bench:end -->\noutro\n"
    new = table.replace_block(text, "| a |\n|---|\n| 1 |\n")
    assert new == "intro\n<!-- bench:start -->\n| a |\n|---|\n| 1 |\n<!-- bench:end -->\noutro\n"
    assert table.replace_block(new, "| a |\n|---|\n| 1 |\n") == new  # idempotent
    assert table.replace_block("no markers here\n", "x") is None

    # through the command line, on a hand-made results folder
    folder = tmp_path / "results" / "20990101T000000Z-abc1234"
    folder.mkdir(parents=True)
    rows = [{"op": "conv", "edges": 170000, "dtype": "float64", "ours_ms": 1.58,
             "baselines_ms": {"e3nn": 25.7, "cueq": 1.87}, "speedup": {"e3nn": 25.7 / 1.58, "cueq": 1.87 / 1.58}}]
    (folder / "bench_ops.json").write_text(json.dumps({"device": "NVIDIA H200", "torch": "2.13", "rows": rows}))
    (tmp_path / "results" / "LATEST").write_text(folder.name + "\n")  # no symlink: the text pointer
    readme = tmp_path / "README.md"
    readme.write_text(text)
    done = subprocess.run([sys.executable, str(TABLE_SCRIPT), "--results", str(tmp_path / "results" / "latest"),
                           "--readme", str(readme)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    out = readme.read_text()
    assert out.startswith("intro\n<!-- bench:start -->\n") and out.endswith("<!-- bench:end -->\noutro\n")
    assert "old table" not in out
    assert "| conv | 170,000 | float64 | 1.58 | 25.7 | 1.87 | ×16.27 | ×1.18 |" in out

    plain = tmp_path / "PLAIN.md"
    plain.write_text("no markers\n")
    done = subprocess.run([sys.executable, str(TABLE_SCRIPT), "--results", str(folder), "--readme", str(plain)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "no '<!-- bench:start -->'" in done.stderr
    assert plain.read_text() == "no markers\n"


def test_mace_table_compares_ours_with_the_best_peer():
    table = _table_module()
    row = dict(model="medium", atoms=1000, edges=35000, dtype="float32", mode="inference", status="ok")
    data = {"benchmark": "bench_mace", "rows": [
        {**row, "backend": "e3nn", "wall_ms": 30.0, "kernel_ms": 20.0, "peak_memory_bytes": 3e9},
        {**row, "backend": "cueq", "wall_ms": 50.0, "kernel_ms": 4.0, "peak_memory_bytes": 7e8},
        {**row, "backend": "oeq", "status": "oom"},
        {**row, "backend": "batmobile", "wall_ms": 20.0, "kernel_ms": 5.0, "peak_memory_bytes": 8e8},
        {**row, "backend": "batmobile-graphs", "wall_ms": 2.0, "kernel_ms": 1.0, "peak_memory_bytes": 8e8}]}
    header, _, line = table.mace_table(data)
    assert "batmobile vs best peer: wall" in header
    cells = [c.strip() for c in line.strip("|").split("|")]
    # our own variant (batmobile-graphs) has its columns (wall against the best peer) but is not a peer
    assert "batmobile-graphs vs best peer: wall" in header
    # then the target: the best of cueq and oeq (oeq out of memory here: cueq alone, and marked so), the
    # peak against cueq's
    assert "batmobile vs best of cueq, oeq: wall" in header and "batmobile peak vs cueq" in header
    assert cells[5:] == ["30.0 / 20.0 / 3.00", "50.0 / 4.00 / 0.70", "oom", "20.0 / 5.00 / 0.80", "2.00 / 1.00 / –",
                         "×1.50", "×0.80", "×15.00", "×2.50 (vs cueq)", "×0.80 (vs cueq)", "+14.3%"]


def test_mace_table_times_rows_without_an_e3nn_reference():
    """Where e3nn's reference itself failed (out of memory), the others' rows are timed and marked, not hidden."""
    table = _table_module()
    row = dict(model="large", atoms=19683, edges=686000, dtype="float64", mode="train")
    unchecked = "ok (unchecked: no e3nn reference)"
    data = {"benchmark": "bench_mace", "rows": [
        {**row, "backend": "e3nn", "status": "oom"},
        {**row, "backend": "cueq", "status": unchecked, "wall_ms": 300.0, "kernel_ms": 240.0,
         "peak_memory_bytes": 6e10},
        {**row, "backend": "oeq", "status": "failed parity (max rel err 1 > 1e-08)", "wall_ms": 1.0, "kernel_ms": 1.0},
        {**row, "backend": "batmobile", "status": unchecked, "wall_ms": 250.0, "kernel_ms": 200.0,
         "peak_memory_bytes": 5e10}]}
    header, _, line = table.mace_table(data)
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[5:] == ["oom", "300 / 240 / 60.00 (parity unchecked)", "failed parity (max rel err 1 > 1e-08)",
                         "250 / 200 / 50.00 (parity unchecked)", "×1.20", "×1.20", "×1.20 (vs cueq)",
                         "×1.20 (vs cueq)", "-16.7%"]


def test_mace_table_target_columns_follow_the_peers_that_ran():
    """Without cueq in the run, no peak column (the target's peak is cueq's); without cueq or oeq, no target
    columns; both timed: the best of the two, unmarked."""
    table = _table_module()
    row = dict(model="medium", atoms=1000, edges=35000, dtype="float32", mode="inference", status="ok")
    ours = {**row, "backend": "batmobile", "wall_ms": 20.0, "kernel_ms": 5.0, "peak_memory_bytes": 8e8}
    oeq = {**row, "backend": "oeq", "wall_ms": 30.0, "kernel_ms": 6.0, "peak_memory_bytes": 9e8}
    cueq = {**row, "backend": "cueq", "wall_ms": 40.0, "kernel_ms": 4.0, "peak_memory_bytes": 1e9}
    header, _, line = table.mace_table({"rows": [oeq, ours]})
    assert "batmobile vs best of oeq: wall" in header and "peak vs" not in header
    assert [c.strip() for c in line.strip("|").split("|")][-2:] == ["×1.50", "×1.20"]
    header, _, line = table.mace_table({"rows": [{**oeq, "backend": "e3nn"}, ours]})
    assert "best of" not in header
    header, _, line = table.mace_table({"rows": [cueq, oeq, ours]})
    assert [c.strip() for c in line.strip("|").split("|")][-3:] == ["×1.50", "×0.80", "-20.0%"]


def test_results_of_other_revisions_name_their_code(tmp_path):
    """A folder gathering several runs' JSON says, per benchmark, which revision made it."""
    table = _table_module()
    row = dict(model="medium", atoms=1000, edges=35000, dtype="float32", mode="inference", status="ok",
               backend="batmobile", wall_ms=20.0, kernel_ms=5.0, peak_memory_bytes=8e8)
    for name, revision, digest in (("bench_mace", "a78a89a0123", None), ("bench_mace_small", "c173e69fff", "d1e2")):
        (tmp_path / f"{name}.json").write_text(json.dumps(
            {"benchmark": "bench_mace", "device": "GPU X", "git_revision": revision, "source_digest": digest,
             "rows": [row]}))
    text = table.render(tmp_path)
    assert "**bench_mace** (GPU X, code a78a89a)" in text
    assert "**bench_mace_small** (GPU X, code c173e69, source digest d1e2)" in text


def test_png_dir_may_be_the_results_folder(tmp_path):
    """Plots kept next to their JSON (docs/bench/<run>/) are linked from there, not copied onto themselves."""
    table = _table_module()
    (tmp_path / "bench_mace.json").write_text(json.dumps({"benchmark": "bench_mace", "device": "GPU X", "rows": []}))
    (tmp_path / "bench_mace.png").write_bytes(b"png")
    text = table.render(tmp_path, link_base=tmp_path, png_dir=tmp_path)
    assert "![bench_mace](bench_mace.png)" in text and (tmp_path / "bench_mace.png").read_bytes() == b"png"


def test_source_digest_names_the_code_on_disk(tmp_path):
    """The digest follows the source files' names and contents, ignores caches, and counts a linked folder once."""
    from batmobile_nn.commands.bench import source_digest

    (tmp_path / "batmobile_nn" / "ops").mkdir(parents=True)
    (tmp_path / "csrc").mkdir()
    (tmp_path / "batmobile_nn" / "ops" / "a.py").write_text("x = 1\n")
    (tmp_path / "csrc" / "k.cu").write_text("// kernel\n")
    first = source_digest(tmp_path)
    (tmp_path / "batmobile_nn" / "__pycache__").mkdir()
    (tmp_path / "batmobile_nn" / "__pycache__" / "a.py").write_text("cached")
    (tmp_path / "batmobile_nn" / "_csrc").symlink_to(tmp_path / "csrc")
    assert source_digest(tmp_path) == first
    (tmp_path / "csrc" / "k.cu").write_text("// kernel, changed\n")
    assert source_digest(tmp_path) != first


def test_readme_table_is_the_rendering_of_the_folder_it_names():
    """The README's bench block is make_bench_table's output for the docs/bench folder it names, unedited."""
    table = _table_module()
    readme = ROOT / "README.md"
    text = readme.read_text()
    block = text[text.index(table.START) + len(table.START): text.index(table.END)].strip("\n")
    named = re.search(r"generated by scripts/make_bench_table.py from (\S+)/ ", block)
    assert named, "the README's bench block does not name its folder"
    folder = ROOT / "docs" / "bench" / named.group(1)
    assert folder.is_dir(), folder
    assert block == table.render(folder, link_base=ROOT).rstrip("\n")
    assert f"![bench_mace_grid](docs/bench/{named.group(1)}/bench_mace_grid.png)" in block  # the plot with the table
