"""Markdown tables (and plot links) from a results folder of ``batmobile-nn bench``; optionally into the README.

Usage: python scripts/make_bench_table.py [--results results/latest] [--readme README.md] [--png-dir DIR]

Reads ``manifest.json`` and each benchmark's ``NAME.json`` in the folder and prints, per benchmark, a header
line (device, versions, git revision) and a table: for ``bench_ops`` one row per op, edges and dtype with our
time, each baseline's time and our speedup over it; for ``bench_mace`` one row per model, atoms, dtype and mode
with each backend's wall ms, kernel ms and peak memory, ours against the best other backend, and ours against
issue #5's target (the best of cueq and oeq in wall and kernel time, marked "(vs cueq)" where only that one timed; our
peak against cueq's in percent); for any other benchmark its rows with whatever fields they have.
With ``--png-dir`` the plots are copied there (a folder kept in git, unlike ``results/``) and linked from
there; otherwise they are linked in the results folder. With ``--readme`` the text between the
``<!-- bench:start -->`` and ``<!-- bench:end -->`` lines of that file is replaced by the output.
Standard library only.
"""

import argparse
import json
import os
import pathlib
import shutil
import sys

START, END = "<!-- bench:start -->", "<!-- bench:end -->"
MISSING = "–"
KEY_COLUMNS = ["model", "architecture", "hidden_irreps", "irreps", "atoms", "n_atoms", "edges", "n_edges", "dtype",
               "mode", "backend"]
VALUE_COLUMNS = ["wall_ms", "kernel_ms", "gpu_ms", "launches", "kernel_launches", "peak_memory_bytes",
                 "peak_memory_gb", "peak_memory_mb", "peak_memory", "speedup"]


# ---- reading ----------------------------------------------------------------------------------------------
def resolve_folder(path):
    """A run folder from a path: the folder itself, ``results/latest`` (symlink or ``results/LATEST``) or
    ``results`` (its latest run). Returns None when there is none."""
    path = pathlib.Path(path)
    candidates = [path]
    if path.name == "latest":
        candidates.append(path.parent / "LATEST")
    candidates += [path / "latest", path / "LATEST"]
    for candidate in candidates:
        if candidate.name == "LATEST" and candidate.is_file():
            candidate = candidate.parent / candidate.read_text().strip()
        if candidate.is_dir() and ((candidate / "manifest.json").is_file() or any(candidate.glob("*.json"))):
            return candidate.resolve()
    return None


def load(folder):
    """(manifest or {}, [(name, data or None, manifest record or {})]) in the manifest's order."""
    folder = pathlib.Path(folder)
    manifest = {}
    if (folder / "manifest.json").is_file():
        manifest = json.loads((folder / "manifest.json").read_text())
    records = manifest.get("benchmarks", {})
    names = list(records) + sorted(p.stem for p in folder.glob("*.json")
                                   if p.name != "manifest.json" and p.stem not in records)
    out = []
    for name in names:
        data = None
        path = folder / f"{name}.json"
        if path.is_file():
            try:
                data = json.loads(path.read_text())
            except json.JSONDecodeError:
                data = None
        out.append((name, data, records.get(name, {})))
    return manifest, out


# ---- formatting -------------------------------------------------------------------------------------------
def fmt_ms(v):
    if v is None:
        return MISSING
    v = float(v)
    return f"{v:.0f}" if v >= 100 else f"{v:.1f}" if v >= 10 else f"{v:.2f}" if v >= 1 else f"{v:.3f}"


def fmt_speedup(v):
    return MISSING if v is None else f"×{float(v):.2f}"


def fmt_value(key, v):
    if v is None:
        return MISSING
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        if key.endswith("_bytes"):
            return f"{v / 1e9:.2f}"
        return f"{v:,}"
    if isinstance(v, float):
        if key.endswith("_bytes"):
            return f"{v / 1e9:.2f}"
        if key.endswith("_ms") or key.endswith(".ms") or key == "ms":
            return fmt_ms(v)
        if "speedup" in key:
            return fmt_speedup(v)
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return ", ".join(fmt_value(key, x) for x in v)
    return str(v).replace("|", "\\|").replace("\n", " ")


def label(key):
    if key.endswith("_bytes"):
        key = key[: -len("_bytes")] + "_GB"
    parts = key.split(".")
    parts = parts[1:] + parts[:1] if len(parts) == 2 else parts  # wall_ms.e3nn -> "e3nn wall ms"
    return " ".join(parts).replace("_", " ")


def markdown_table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def flatten(row, prefix="", depth=0):
    flat = {}
    for key, value in row.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            if depth < 1:
                flat.update(flatten(value, name + ".", depth + 1))
        elif isinstance(value, (list, tuple)):
            if len(value) <= 4 and all(not isinstance(x, (dict, list)) for x in value):
                flat[name] = list(value)
        else:
            flat[name] = value
    return flat


def ops_table(data):
    """bench_ops rows: op | edges | dtype | ours ms | <baseline> ms ... | vs <baseline> ..."""
    rows = data.get("rows", [])
    baselines = []
    for row in rows:
        for name in row.get("baselines_ms") or {}:
            if name not in baselines:
                baselines.append(name)
    with_speedup = [b for b in baselines if any((r.get("speedup") or {}).get(b) is not None for r in rows)]
    header = ["op", "edges", "dtype", "ours ms", *(f"{b} ms" for b in baselines), *(f"vs {b}" for b in with_speedup)]
    body = []
    for row in rows:
        times, speedups = row.get("baselines_ms") or {}, row.get("speedup") or {}
        status = row.get("baseline_status") or {}
        cells = [fmt_value("op", row.get("op")), fmt_value("edges", row.get("edges")),
                 fmt_value("dtype", row.get("dtype")), fmt_ms(row.get("ours_ms"))]
        for b in baselines:
            t = times.get(b)
            cells.append(fmt_ms(t) if t is not None else (str(status[b]).split(":")[0] if status.get(b) else MISSING))
        cells += [fmt_speedup(speedups.get(b)) for b in with_speedup]
        body.append(cells)
    return markdown_table(header, body)


UNCHECKED = "parity unchecked"


def timed(row):
    """A row whose timings count: parity passed, or could not be checked because e3nn's reference itself failed
    (bench_mace's "ok (unchecked: no e3nn reference)", e.g. e3nn out of memory); marked in the table."""
    return str(row.get("status", "")).startswith("ok")


TARGET_PEERS, PEAK_PEER = ("cueq", "oeq"), "cueq"  # issue #5's target: faster than the best of these, peak <= cueq's


def _lead(mine, others, key):
    """``min(others) / mine`` in ``key`` as "×1.23", or the missing mark where a side is untimed."""
    values = [r[key] for r in others if r.get(key) is not None and timed(r)]
    ok = mine.get(key) is not None and timed(mine) and values
    return fmt_speedup(min(values) / mine[key]) if ok else MISSING


def _peak_against(mine, peer):
    """Our peak against ``peer``'s as a signed percentage of theirs ("-7.2%": ours is 7.2% lower)."""
    if not (timed(mine) and timed(peer) and mine.get("peak_memory_bytes") and peer.get("peak_memory_bytes")):
        return MISSING
    return f"{(mine['peak_memory_bytes'] / peer['peak_memory_bytes'] - 1) * 100:+.1f}%"


def mace_table(data, ours="batmobile"):
    """bench_mace rows grouped per (model, atoms, dtype, mode): per backend "wall ms / kernel ms / peak GB" (or
    its status when not timed; "(parity unchecked)" after it where no e3nn reference existed), then ours against
    the best other backend in wall and kernel time, and where cueq / oeq ran, against the issue's target: the
    best of them in wall and kernel time, and our peak against cueq's."""
    rows = [r for r in data.get("rows", []) if isinstance(r, dict)]
    backends = list(dict.fromkeys(r.get("backend") for r in rows))
    groups = {}
    for r in rows:
        groups.setdefault((r.get("model"), r.get("atoms"), r.get("edges"), r.get("dtype"), r.get("mode")), {})[
            r.get("backend")] = r
    peers = [b for b in backends if not b.startswith(ours)]  # not our own variants (batmobile-graphs)
    variants = [b for b in backends if b.startswith(ours) and b != ours]  # compared in wall time too
    header = ["model", "atoms", "edges", "dtype", "mode", *(f"{b}: wall / kernel ms / peak GB" for b in backends)]
    targets = [b for b in TARGET_PEERS if b in backends] if ours in backends else []
    if ours in backends and peers:
        header += [f"{ours} vs best peer: wall", "kernel", *(f"{v} vs best peer: wall" for v in variants)]
    if targets:
        header += [f"{ours} vs best of {', '.join(targets)}: wall", "kernel"]
        header += [f"{ours} peak vs {PEAK_PEER}"] if PEAK_PEER in targets else []
    body = []
    for (model, atoms, edges, dtype, mode), by_backend in groups.items():
        cells = [fmt_value("model", model), fmt_value("atoms", atoms), fmt_value("edges", edges),
                 fmt_value("dtype", dtype), fmt_value("mode", mode)]
        for b in backends:
            r = by_backend.get(b, {})
            if r.get("wall_ms") is None or not timed(r):
                cells.append(fmt_value("status", r.get("status", MISSING)).split(":")[0])
            else:
                # a CUDA-graph replay allocates from the graph's private pool, which the peak does not count
                peak = None if b.endswith("-graphs") else r.get("peak_memory_bytes")
                cells.append(f"{fmt_ms(r['wall_ms'])} / {fmt_ms(r.get('kernel_ms'))} / "
                             f"{fmt_value('peak_memory_bytes', peak)}"
                             + ("" if r.get("status") == "ok" else f" ({UNCHECKED})"))
        mine = by_backend.get(ours, {})
        if ours in backends and peers:
            others = [by_backend.get(b, {}) for b in peers]
            for name, key in [(ours, "wall_ms"), (ours, "kernel_ms")] + [(v, "wall_ms") for v in variants]:
                cells.append(_lead(by_backend.get(name, {}), others, key))
        if targets:
            for key in ("wall_ms", "kernel_ms"):
                compared = [b for b in targets if by_backend.get(b, {}).get(key) is not None and timed(by_backend[b])]
                lead = _lead(mine, [by_backend[b] for b in compared], key)
                # a peer that did not time (oom, failed parity, absent): the lead is over the others only
                cells.append(lead if lead == MISSING or compared == targets else f"{lead} (vs {', '.join(compared)})")
            cells += [_peak_against(mine, by_backend.get(PEAK_PEER, {}))] if PEAK_PEER in targets else []
        body.append(cells)
    return markdown_table(header, body)


def generic_table(data):
    """Rows of any benchmark (bench_mace): known key and value columns first, then the other fields."""
    rows = data.get("rows", data.get("results", [])) if isinstance(data, dict) else data
    rows = [flatten(r) for r in rows if isinstance(r, dict)] if isinstance(rows, list) else []
    if not rows:
        return []
    seen = []
    for row in rows:
        for key in row:
            if key not in seen:
                seen.append(key)
    first = [k for k in KEY_COLUMNS if k in seen]
    values = [k for k in seen if k in VALUE_COLUMNS or any(k.startswith(v + ".") for v in VALUE_COLUMNS)]
    values.sort(key=lambda k: next(i for i, v in enumerate(VALUE_COLUMNS) if k == v or k.startswith(v + ".")))
    columns = first + values + [k for k in seen if k not in first and k not in values]
    columns = [c for c in columns if any(row.get(c) is not None for row in rows)]
    return markdown_table([label(c) for c in columns], [[fmt_value(c, row.get(c)) for c in columns] for row in rows])


def describe_run(folder, manifest, benchmarks):
    """One line for the run: device, versions, git revision, time."""
    device = manifest.get("device") or next((d.get("device") for _, d, _ in benchmarks
                                             if isinstance(d, dict) and d.get("device")), "unknown")
    bits = [f"device: {device}"]
    versions = dict(manifest.get("versions", {}))
    if "torch" not in versions:
        versions.update({"torch": d["torch"] for _, d, _ in benchmarks if isinstance(d, dict) and d.get("torch")})
    bits += [f"{k} {v}" for k, v in versions.items()]
    git = manifest.get("git") or {}
    if git.get("short"):
        bits.append(f"git {git['short']}{' (dirty)' if git.get('dirty') else ''}")
    if manifest.get("started_utc"):
        bits.append(manifest["started_utc"])
    if manifest.get("quick"):
        bits.append("quick (CPU smoke test)")
    return f"Run `{folder.name}` — " + " · ".join(bits)


def render(folder, link_base=None, png_dir=None):
    """The Markdown of a run folder. PNG links are relative to ``link_base`` (default: cwd); with ``png_dir``
    the PNGs are copied there first."""
    folder = pathlib.Path(folder)
    manifest, benchmarks = load(folder)
    link_base = pathlib.Path(link_base or ".").resolve()
    lines = [f"<!-- generated by scripts/make_bench_table.py from {folder.name}/ (benchmark JSON files); "
             "do not edit by hand -->", "", describe_run(folder, manifest, benchmarks), ""]
    for name, data, record in benchmarks:
        device = data.get("device") if isinstance(data, dict) else None
        revision = str(data.get("git_revision") or "")[:7] if isinstance(data, dict) else ""
        notes = [device] if device and device != manifest.get("device") else []
        digest = str(data.get("source_digest") or "") if isinstance(data, dict) else ""
        if revision and revision != (manifest.get("git") or {}).get("short", "")[:7]:
            # a folder may gather the results of several revisions; the source digest names the code that ran
            # where a GPU machine's copied .git was stale (its revision then is not the code's)
            notes.append(f"code {revision}" + (f", source digest {digest}" if digest else ""))
        lines += [f"**{name}**" + (f" ({', '.join(notes)})" if notes else ""), ""]
        status = record.get("status")
        if status and status != "ok":
            log = folder / record.get("log", f"{name}.log")
            lines += [f"{status} (log: `{os.path.relpath(log, link_base)}`)", ""]
        if data is None:
            if not status:
                lines += ["no results", ""]
            continue
        is_ops = isinstance(data, dict) and any("ours_ms" in r and "baselines_ms" in r for r in data.get("rows", []))
        is_mace = isinstance(data, dict) and data.get("benchmark") == "bench_mace"
        table = ops_table(data) if is_ops else mace_table(data) if is_mace else generic_table(data)
        lines += (table or ["no rows"]) + [""]
        png = folder / (record.get("png") or f"{name}.png")
        if png.is_file():
            if png_dir is not None:
                pathlib.Path(png_dir).mkdir(parents=True, exist_ok=True)
                target = pathlib.Path(png_dir) / f"{name}.png"
                if not (target.exists() and target.samefile(png)):  # --png-dir may be the results folder itself
                    png = pathlib.Path(shutil.copyfile(png, target))
            lines += [f"![{name}]({pathlib.Path(os.path.relpath(png.resolve(), link_base)).as_posix()})", ""]
    return "\n".join(lines).rstrip() + "\n"


def replace_block(text, block):
    """``text`` with the lines between the markers replaced by ``block``; None when the markers are absent."""
    start = text.find(START)
    end = text.find(END, start + len(START)) if start >= 0 else -1
    if start < 0 or end < 0:
        return None
    return text[: start + len(START)] + "\n" + block.rstrip("\n") + "\n" + text[end:]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default="results/latest",
                        help="a run folder, results/latest, or the results folder (default: results/latest)")
    parser.add_argument("--readme", default=None, help="replace the text between the bench markers of this file")
    parser.add_argument("--png-dir", default=None, help="copy the plots here and link them from here")
    args = parser.parse_args(argv)
    folder = resolve_folder(args.results)
    if folder is None:
        print(f"make_bench_table: no results in {args.results} (run `batmobile-nn bench` first)", file=sys.stderr)
        return 2
    readme = pathlib.Path(args.readme) if args.readme else None
    text = render(folder, link_base=readme.resolve().parent if readme else None, png_dir=args.png_dir)
    print(text, end="")
    if readme is not None:
        new = replace_block(readme.read_text(), text)
        if new is None:
            print(f"make_bench_table: {readme} has no '{START}' ... '{END}' lines; nothing replaced "
                  "(add the two lines where the table belongs)", file=sys.stderr)
        else:
            readme.write_text(new)
            print(f"make_bench_table: updated {readme} from {folder}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
