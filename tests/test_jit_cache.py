"""The cubin cache of the run-time compiled kernels (``batmobile_nn/_jit.py``), with NVRTC replaced by a fake:
one compile per source, name and architecture, read back from disk by a later call, one notice per process."""

import torch.cuda._utils

from batmobile_nn import _jit


def test_cubins_are_compiled_once_and_read_back(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("BATMOBILE_NN_CACHE", str(tmp_path))
    monkeypatch.setattr(_jit, "_announced", [])
    calls = []

    def fake_compile(source, name, arch, nvcc_options=None):
        calls.append((name, arch))
        return f"cubin of {name} for {arch}: {source}".encode(), name

    monkeypatch.setattr(torch.cuda._utils, "_nvrtc_compile", fake_compile)
    first = _jit._cubin("source A", "kernel", "90")
    assert _jit._cubin("source A", "kernel", "90") == first == b"cubin of kernel for 90: source A"
    assert calls == [("kernel", "90")]  # the second call read the file
    assert _jit._cubin("source A", "kernel", "100") != first  # another architecture, another entry
    assert _jit._cubin("source B", "kernel", "90") != first
    assert len(calls) == 3 and len(list((tmp_path / "jit").glob("*.cubin"))) == 3
    assert not list((tmp_path / "jit").glob("*.tmp"))
    assert capsys.readouterr().err.count("compiling kernels") == 1


def test_grid_is_capped():
    assert _jit.grid_for(1, 128) == 1 and _jit.grid_for(0, 128) == 1
    assert _jit.grid_for(129, 128) == 2
    assert _jit.grid_for(10**15, 128) == _jit.MAX_GRID


def test_options_are_passed_and_part_of_the_key(tmp_path, monkeypatch):
    monkeypatch.setenv("BATMOBILE_NN_CACHE", str(tmp_path))
    passed = []

    def fake_compile(source, name, arch, nvcc_options=None):
        passed.append(list(nvcc_options))
        return f"{name} {nvcc_options}".encode(), name

    monkeypatch.setattr(torch.cuda._utils, "_nvrtc_compile", fake_compile)
    plain = _jit._cubin("source", "kernel", "90")
    debug = _jit._cubin("source", "kernel", "90", ("--device-debug",))
    assert plain != debug and passed[1][-1] == "--device-debug" and "--device-debug" not in passed[0]
    assert _jit._cubin("source", "kernel", "90", ("--device-debug",)) == debug and len(passed) == 2  # cached

