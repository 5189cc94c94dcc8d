"""scripts/profile_host.py --quick: the host-time profile's CPU smoke test (same code path as on the GPU)."""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import pytest

pytest.importorskip("mace")  # the e3nn 0.6 environment of CI has no mace-torch

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_profile_host_quick(tmp_path):
    out = tmp_path / "profile_host.json"
    env = dict(os.environ, TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD="1", OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "profile_host.py"), "--quick", "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["device"].startswith("cpu") and result["source_digest"]
    rows = {(r["backend"], r["mode"]): r for r in result["rows"]}
    assert set(rows) == {(b, m) for b in ("e3nn", "batmobile") for m in ("inference", "train")}
    for (backend, mode), row in rows.items():
        shares = row["own_ms_per_step_by_package"]
        # own times, each function's counted once: together at most the profiled step (with a margin for the
        # profiler's clock), and most of it (the rest: the timer loop and the profiler's own overhead)
        assert 0.5 * row["profiled_wall_ms_per_step"] < sum(shares.values()) <= 1.05 * row["profiled_wall_ms_per_step"]
        assert row["wall_ms_per_step"] > 0 and len(row["top_functions"]) == 25
        own = [f["own_ms_per_step"] for f in row["top_functions"]]
        assert own == sorted(own, reverse=True)
        assert "mace (Python)" in shares  # mace's modules ran in every backend
        if mode == "train":
            assert shares["autograd engine (C++)"] > 0
    # the patched model runs our package's code, stock MACE does not (only its import-time hooks, if any)
    assert rows[("batmobile", "inference")]["own_ms_per_step_by_package"].get("batmobile_nn (Python)", 0) > \
        10 * rows[("e3nn", "inference")]["own_ms_per_step_by_package"].get("batmobile_nn (Python)", 0)


def test_host_time_goes_to_the_package_whose_folder_holds_the_file():
    """By installed folder, not by any folder name on the path: numpy in torch's venv is not torch; cueq's
    frontends (cuequivariance_torch, cuequivariance_ops_torch) are cuequivariance."""
    spec = importlib.util.spec_from_file_location("profile_host", ROOT / "scripts" / "profile_host.py")
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        profile_host = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(profile_host)
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    venv = "/opt/torch/.venv/lib/python3.12/site-packages/"
    folders = [(venv + "torch/", "torch"), ("/tmp/site/cuequivariance_torch/", "cuequivariance"),
               ("/work/main/batmobile_nn/", "batmobile_nn")]
    where = profile_host.where
    assert where(venv + "torch/nn/modules/module.py", "_call_impl", folders) == "torch (Python)"
    assert where(venv + "numpy/_core/fromnumeric.py", "sum", folders) == "other Python"
    assert where("/tmp/site/cuequivariance_torch/operations/tp.py", "forward", folders) == "cuequivariance (Python)"
    assert where("/work/main/batmobile_nn/ops/conv.py", "_conv", folders) == "batmobile_nn (Python)"
    assert where("~", "<method 'run_backward' of 'torch._C._EngineBase' objects>", folders) == "autograd engine (C++)"
    assert where("~", "<built-in method torch.bmm>", folders) == "C++ calls (ATen ops, builtins)"
    found = dict((package, folder) for folder, package in profile_host.package_folders())
    assert {"batmobile_nn", "mace", "e3nn", "torch"} <= set(found)  # the installed ones, here
