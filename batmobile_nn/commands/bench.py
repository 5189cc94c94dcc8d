"""``batmobile-nn bench``: run the benchmarks listed in the registry (``scripts/benchmarks.json``).

Each run makes ``RESULTS/<UTC timestamp>-<git short rev>/`` holding, per benchmark, ``NAME.json`` (the
script's own output), ``NAME.png`` (its plot, when it makes one) and ``NAME.log`` (its output), plus
``run.log`` (this harness's lines) and ``manifest.json`` (device, versions, git revision and dirty flag,
command lines, exit codes, durations). ``RESULTS/latest`` (a symlink) and ``RESULTS/LATEST`` (a text file
with the folder's name, for where symlinks fail) then point at it. ``scripts/make_bench_table.py`` makes the
README's table from these files.

The benchmarks are scripts of a source checkout, run from its root with this Python; the registry entry of
each gives its script, its arguments and its arguments under ``--quick``. This module imports nothing heavy:
the device and versions are read by a short child process of the same Python.
"""

import datetime
import hashlib
import json
import os
import pathlib
import re
import shlex
import subprocess
import sys
import time

REGISTRY = pathlib.Path("scripts") / "benchmarks.json"  # relative to the repository root
MODULES = ["torch", "e3nn", "mace", "cuequivariance", "cuequivariance_torch", "openequivariance", "batmobile_nn"]

# Runs in a child process (same interpreter, repository root as cwd): device and versions as one JSON line.
_PROBE = r"""
import importlib, importlib.util, json, platform, sys
from importlib import metadata
MODULES = %r
out = {"python": sys.version.split()[0], "platform": platform.platform(), "executable": sys.executable,
       "versions": {}}
try:
    dists = metadata.packages_distributions()
except Exception:
    dists = {}
for name in MODULES:
    try:
        if importlib.util.find_spec(name) is None:
            continue
    except Exception:
        continue
    version = None
    for dist in dists.get(name, []):
        try:
            version = metadata.version(dist)
            break
        except Exception:
            pass
    if version is None:
        try:
            version = str(getattr(importlib.import_module(name), "__version__", "unknown"))
        except Exception as exc:
            version = "not importable: %%s" %% type(exc).__name__
    out["versions"][name] = version
try:
    import torch
    out["torch_cuda"] = torch.version.cuda
    if torch.cuda.is_available():
        out["device"] = torch.cuda.get_device_name()
        out["gpu_count"] = torch.cuda.device_count()
        out["compute_capability"] = "%%d.%%d" %% torch.cuda.get_device_capability()
    else:
        out["device"] = "cpu"
        out["gpu_count"] = 0
except Exception as exc:
    out["device"] = "unknown"
    out["probe_error"] = "%%s: %%s" %% (type(exc).__name__, exc)
print("BENCH-PROBE " + json.dumps(out))
""" % (MODULES,)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="run the benchmarks of scripts/benchmarks.json into a results folder (source checkout)",
        description="Run the benchmarks listed in the registry (default: scripts/benchmarks.json of the source "
        "checkout) as child processes from the repository root. Writes RESULTS/<UTC time>-<git rev>/ with each "
        "benchmark's JSON, PNG and log, run.log and manifest.json (device, versions, git revision, commands, exit "
        "codes, durations), and points RESULTS/latest and RESULTS/LATEST at it. Exits nonzero when a benchmark "
        "failed (the others still run). scripts/make_bench_table.py turns the folder into the README's table.",
    )
    parser.add_argument("--only", default=None, help="comma-separated benchmark names (default: all of the registry)")
    parser.add_argument("--quick", action="store_true",
                        help="each benchmark's quick arguments (a small CPU smoke test) instead of its full ones")
    parser.add_argument("--results", default="results", help="folder of the results folders (default: ./results)")
    parser.add_argument("--extra-args", action="append", default=[], metavar="[NAME:]ARGS",
                        help="more arguments for the benchmarks, appended after the registry's (later options win, "
                        "so this also overrides them): 'NAME:ARGS' for benchmark NAME only, 'ARGS' for all; "
                        "repeatable; write it as --extra-args='--only sh' when ARGS is a single option")
    parser.add_argument("--registry", default=None,
                        help="the registry file (default: scripts/benchmarks.json of this source checkout, or of "
                        "the current directory or one above it); script paths in it are relative to the folder "
                        "above the registry's")
    parser.add_argument("--list", action="store_true", help="list the registry's benchmarks and exit")
    parser.set_defaults(func=run)


# ---- registry ----------------------------------------------------------------------------------------
def find_registry(explicit=None):
    """The registry file, or None. Looks in the checkout holding this package, then cwd and its parents."""
    if explicit:
        path = pathlib.Path(explicit).expanduser().resolve()
        return path if path.is_file() else None
    here = pathlib.Path(__file__).resolve().parents[2]  # <checkout>/batmobile_nn/commands/bench.py
    cwd = pathlib.Path.cwd().resolve()
    for folder in (here, cwd, *cwd.parents):
        if (folder / REGISTRY).is_file():
            return folder / REGISTRY
    return None


def load_registry(path):
    data = json.loads(pathlib.Path(path).read_text())
    benchmarks = data.get("benchmarks", data)
    entries = {}
    for name, entry in benchmarks.items():
        if name.startswith("_"):
            continue
        if "script" not in entry:
            raise ValueError(f"{path}: benchmark {name!r} has no 'script'")
        entries[name] = {"script": entry["script"], "args": list(entry.get("args", [])),
                         "quick_args": list(entry.get("quick_args", ["--quick"])),
                         "description": entry.get("description", "")}
    return entries


def parse_extra_args(values, names):
    """``[NAME:]ARGS`` strings -> {name: [args...]}; ``None`` holds those for every benchmark."""
    extra = {None: []}
    for value in values:
        match = re.match(r"^([A-Za-z0-9_.-]+):(.*)$", value, flags=re.S)
        if match and match.group(1) in names:
            extra.setdefault(match.group(1), []).extend(shlex.split(match.group(2)))
        else:
            extra[None].extend(shlex.split(value))
    return extra


# ---- environment ---------------------------------------------------------------------------------------
def _git(root, *args):
    try:
        done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


SOURCE_FOLDERS = ("batmobile_nn", "csrc", "scripts")
SOURCE_SUFFIXES = (".py", ".cu", ".cuh", ".cpp", ".h", ".json", ".sh")


def source_digest(root) -> str:
    """16 hex digits of sha256 over the source files (names and contents) as they are on disk. It names the
    code a result came from where git's metadata does not: a GPU machine that runs a copy of the working
    tree may carry a stale ``.git`` (results of 2026-12-01 recorded an older commit than the one that ran).
    Check a result against a commit by checking the commit out and computing this again."""
    root = pathlib.Path(root)
    digest = hashlib.sha256()
    for folder in SOURCE_FOLDERS:
        paths = [p for p in (root / folder).rglob("*") if p.suffix in SOURCE_SUFFIXES and p.is_file()
                 and not any(part == "__pycache__" or part.startswith(".") for part in p.relative_to(root).parts)]
        for path in sorted(paths):  # (rglob does not enter batmobile_nn/_csrc, a link to csrc/)
            digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def git_info(root):
    revision = _git(root, "rev-parse", "HEAD")
    if revision is None:
        return {"revision": None, "short": "nogit", "dirty": None, "branch": None, "source_digest": source_digest(root)}
    status = _git(root, "status", "--porcelain", "--untracked-files=no")
    return {"revision": revision, "short": _git(root, "rev-parse", "--short", "HEAD") or revision[:7],
            "dirty": bool(status) if status is not None else None,
            "branch": _git(root, "rev-parse", "--abbrev-ref", "HEAD"), "source_digest": source_digest(root)}


def probe_environment(root, env):
    try:
        done = subprocess.run([sys.executable, "-c", _PROBE], cwd=root, env=env, capture_output=True, text=True,
                              timeout=300)
    except (OSError, subprocess.SubprocessError) as exc:
        return {"device": "unknown", "probe_error": f"{type(exc).__name__}: {exc}", "versions": {}}
    for line in done.stdout.splitlines():
        if line.startswith("BENCH-PROBE "):
            return json.loads(line[len("BENCH-PROBE "):])
    return {"device": "unknown", "versions": {}, "probe_error": (done.stderr or done.stdout).strip()[-2000:]}


def _utc(timestamp=None):
    moment = datetime.datetime.fromtimestamp(time.time() if timestamp is None else timestamp, datetime.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def make_run_folder(results, short_rev):
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    results.mkdir(parents=True, exist_ok=True)
    name, n = f"{stamp}-{short_rev}", 1
    while True:
        try:
            (results / name).mkdir()
            return results / name
        except FileExistsError:
            n += 1
            name = f"{stamp}-{short_rev}-{n}"


def update_latest(results, folder_name):
    """Point ``results/latest`` (symlink) and ``results/LATEST`` (text) at the run; returns how ``latest`` was set."""
    (results / "LATEST").write_text(folder_name + "\n")
    link, tmp = results / "latest", results / f".latest-{os.getpid()}"
    try:
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        os.symlink(folder_name, tmp, target_is_directory=True)
        os.replace(tmp, link)
        return "symlink"
    except (OSError, NotImplementedError):
        try:
            if tmp.is_symlink():
                tmp.unlink()
        except OSError:
            pass
        return "LATEST file only"


# ---- running ---------------------------------------------------------------------------------------------
def run_one(command, cwd, env, log_path, echo=True):
    """Run ``command``, teeing its stdout+stderr to ``log_path`` (and our stdout). Returns (exit code, seconds)."""
    start = time.monotonic()
    with open(log_path, "wb") as log:
        log.write(f"$ {shlex.join(command)}\n# cwd {cwd}\n# started {_utc()}\n".encode())
        log.flush()
        try:
            proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        except OSError as exc:
            log.write(f"could not start: {exc}\n".encode())
            return None, time.monotonic() - start
        try:
            for line in iter(proc.stdout.readline, b""):
                log.write(line)
                log.flush()
                if echo:
                    sys.stdout.buffer.write(line)
                    sys.stdout.flush()
            code = proc.wait()
        except KeyboardInterrupt:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.write(b"\ninterrupted\n")
            raise
        seconds = time.monotonic() - start
        log.write(f"# exit code {code} after {seconds:.1f} s\n".encode())
    return code, seconds


def run(args) -> int:
    registry = find_registry(args.registry)
    if registry is None:
        where = args.registry or (f"{REGISTRY} in the checkout of this package "
                                  f"({pathlib.Path(__file__).resolve().parents[2]}) or in {pathlib.Path.cwd()} "
                                  "and the folders above it")
        print(f"batmobile-nn bench: no benchmark registry found (looked for {where}). The benchmarks are the "
              "scripts in scripts/ of a source checkout: run this from a clone of the repository, or pass "
              "--registry PATH.", file=sys.stderr)
        return 2
    try:
        entries = load_registry(registry)
    except (ValueError, json.JSONDecodeError, OSError) as exc:
        print(f"batmobile-nn bench: cannot read the registry {registry}: {exc}", file=sys.stderr)
        return 2
    root = registry.parent.parent

    if args.list:
        for name, entry in entries.items():
            print(f"{name:16s} {entry['script']}  args {shlex.join(entry['args']) or '-'}  "
                  f"quick {shlex.join(entry['quick_args']) or '-'}  {entry['description']}")
        return 0

    names = list(entries)
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in names if n not in entries]
        if unknown:
            print(f"batmobile-nn bench: unknown benchmark(s) {', '.join(unknown)}; the registry {registry} has "
                  f"{', '.join(entries)}", file=sys.stderr)
            return 2
    if not names:
        print(f"batmobile-nn bench: no benchmarks to run (registry {registry})", file=sys.stderr)
        return 2
    extra = parse_extra_args(args.extra_args, set(entries))

    started = _utc()
    env = dict(os.environ, PYTHONUNBUFFERED="1", MPLBACKEND=os.environ.get("MPLBACKEND", "Agg"))
    git = git_info(root)
    results = pathlib.Path(args.results).expanduser().resolve()
    folder = make_run_folder(results, git["short"])
    run_log = open(folder / "run.log", "a")

    def say(message):
        line = f"[bench {_utc()}] {message}"
        print(line, flush=True)
        run_log.write(line + "\n")
        run_log.flush()

    say(f"results in {folder}")
    say(f"registry {registry}; repository {root}; git {git['short']}{' (dirty)' if git['dirty'] else ''}")
    probe = probe_environment(root, env)
    say(f"device {probe.get('device')}; versions {probe.get('versions')}")
    manifest = {
        "format": "batmobile-nn bench 1",
        "folder": folder.name,
        "started_utc": started,
        "finished_utc": None,
        "argv": sys.argv,
        "quick": bool(args.quick),
        "registry": str(registry),
        "repository": str(root),
        "git": git,
        "device": probe.get("device"),
        "environment": {k: v for k, v in probe.items() if k not in ("device", "versions")},
        "versions": probe.get("versions", {}),
        "benchmarks": {},
        "ok": None,
    }

    def write_manifest():
        tmp = folder / "manifest.json.tmp"
        tmp.write_text(json.dumps(manifest, indent=1) + "\n")
        os.replace(tmp, folder / "manifest.json")

    write_manifest()
    failed, interrupted = [], False
    for name in names:
        entry = entries[name]
        script = (root / entry["script"]).resolve()
        out_json, out_png, log = folder / f"{name}.json", folder / f"{name}.png", folder / f"{name}.log"
        bench_args = (entry["quick_args"] if args.quick else entry["args"]) + extra[None] + extra.get(name, [])
        command = [sys.executable, str(script), *bench_args, "--out", str(out_json), "--png", str(out_png)]
        record = {"script": entry["script"], "command": command, "command_line": shlex.join(command),
                  "log": log.name, "started_utc": _utc(), "exit_code": None, "duration_s": None,
                  "json": None, "png": None, "status": None}
        manifest["benchmarks"][name] = record
        write_manifest()
        if not script.is_file():
            record["status"] = f"failed: script {entry['script']} not found in {root}"
            log.write_text(f"$ {shlex.join(command)}\n{record['status']}\n")
            say(f"{name}: {record['status']}")
            failed.append(name)
            write_manifest()
            continue
        say(f"{name}: {shlex.join(command)}")
        try:
            code, seconds = run_one(command, root, env, log)
        except KeyboardInterrupt:
            record["status"] = "interrupted"
            failed.append(name)
            interrupted = True
            say(f"{name}: interrupted")
            break
        finally:
            write_manifest()
        record["exit_code"], record["duration_s"] = code, round(seconds, 3)
        if out_json.is_file():
            try:
                json.loads(out_json.read_text())
                record["json"] = out_json.name
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                record["json_error"] = str(exc)
        if out_png.is_file():
            record["png"] = out_png.name
        if code == 0 and record["json"]:
            record["status"] = "ok"
        elif code == 0:
            record["status"] = "failed: no valid JSON written" + (f" ({record['json_error']})"
                                                                  if "json_error" in record else "")
        else:
            record["status"] = f"failed: exit code {code}"
        if record["status"] != "ok":
            failed.append(name)
        say(f"{name}: {record['status']} in {seconds:.1f} s (log {log})")
        write_manifest()

    manifest["finished_utc"] = _utc()
    manifest["ok"] = not failed
    manifest["failed"] = failed
    write_manifest()
    how = update_latest(results, folder.name)
    say(f"{results / 'latest'} -> {folder.name} ({how})")
    say("all benchmarks ok" if not failed else f"FAILED: {', '.join(failed)}")
    run_log.close()
    if interrupted:
        return 130
    return 1 if failed else 0
