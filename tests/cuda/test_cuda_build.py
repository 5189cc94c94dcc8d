"""The build cache: concurrent builds share one compile, a killed build leaves no half cache and no stale
lock, the key follows the sources, and without nvcc the ops warn once and run the reference."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from batmobile_nn import _build

pytestmark = pytest.mark.cuda

# A build whose compiler is replaced by a sleep that writes a fake library (no nvcc needed).
FAKE_BUILD = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from batmobile_nn import _build

    def fake_compile(arch, build_dir, verbose):
        Path(os.environ["MARKERS"], f"compile-{os.getpid()}").touch()
        time.sleep(float(os.environ["COMPILE_S"]))
        (build_dir / (_build.EXTENSION_NAME + ".so")).write_bytes(b"fake")

    _build._compile = fake_compile
    _build._check_toolchain = lambda: None
    _build.architecture = lambda device=None: "90"
    print(_build.build())
""")


def _start(cache: Path, markers: Path, compile_s: float) -> subprocess.Popen:
    env = dict(os.environ, BATMOBILE_NN_CACHE=str(cache), MARKERS=str(markers), COMPILE_S=str(compile_s))
    return subprocess.Popen([sys.executable, "-c", FAKE_BUILD], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_concurrent_builds_compile_once(tmp_path):
    cache, markers = tmp_path / "cache", tmp_path / "markers"
    markers.mkdir()
    procs = [_start(cache, markers, 3.0) for _ in range(2)]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    paths = {out.strip().splitlines()[-1] for out, _ in outputs}
    assert len(paths) == 1 and Path(paths.pop()).read_bytes() == b"fake"
    assert len(list(markers.iterdir())) == 1, "both processes compiled"
    assert not list(cache.glob("*.tmp-*")), "a temporary build folder was left behind"


def test_killed_build_leaves_no_half_cache_and_no_stale_lock(tmp_path):
    cache, markers = tmp_path / "cache", tmp_path / "markers"
    markers.mkdir()
    victim = _start(cache, markers, 60.0)
    deadline = time.monotonic() + 60
    while not list(markers.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert list(markers.iterdir()), "the first build never started compiling"
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert not [p for p in cache.iterdir() if p.is_dir() and ".tmp-" not in p.name], "half a build in the cache"
    start = time.monotonic()
    survivor = _start(cache, markers, 0.5)
    out, err = survivor.communicate(timeout=120)
    assert survivor.returncode == 0, err
    assert time.monotonic() - start < 60, "the second build waited on the dead process's lock"
    assert not list(cache.glob("*.tmp-*")), "the killed build's temporary folder was not cleaned"


def test_cache_key_follows_sources(tmp_path, monkeypatch):
    src = tmp_path / "csrc"
    src.mkdir()
    (src / "registration.cpp").write_text("// v1\n")
    monkeypatch.setattr(_build, "source_dir", lambda: src)
    first = _build.cache_key("90")
    (src / "registration.cpp").write_text("// v2\n")
    second = _build.cache_key("90")
    assert first != second and "sm_90" in first and torch.__version__.split("+")[0] in first


def test_real_build_is_cached():
    library = _build.load(torch.device("cuda"))
    start = time.monotonic()
    assert _build.build(torch.device("cuda")) == library and library.is_file()
    assert time.monotonic() - start < 5, "a cached build was rebuilt"
    assert f"sm_{_build.architecture()}" in str(library)


def test_without_nvcc_one_warning_and_reference(tmp_path):
    script = textwrap.dedent("""
        import warnings, torch, batmobile_nn
        from batmobile_nn import reference
        from batmobile_nn.ops import spherical_harmonics
        x = torch.randn(10, 3, device="cuda", dtype=torch.float64)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            a = spherical_harmonics(x, [0, 1, 2], True, "component")
            b = spherical_harmonics(x, [0, 1, 2], True, "component")
        messages = [str(w.message) for w in caught if issubclass(w.category, batmobile_nn.ReferencePathWarning)]
        assert len(messages) == 1 and "nvcc" in messages[0], messages
        assert torch.equal(a, reference.spherical_harmonics(x, [0, 1, 2], True, "component"))
        print("ok")
    """)
    env = dict(os.environ, CUDA_HOME=str(tmp_path / "no-cuda"), BATMOBILE_NN_CACHE=str(tmp_path / "cache"))
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]
