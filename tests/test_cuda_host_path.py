"""The CUDA host path on the CPU: a MACE training step through ``_cuda`` / ``_uvu`` / ``_sc`` / ``_jit`` /
``_extension`` with the extension's ops stubbed (``tests/_cuda_host_path_on_cpu.py``, in a subprocess: it
registers the ``batmobile_cuda`` namespace). Catches Python errors of the GPU path (arguments, caches, schemas) on
machines without a GPU; the values are checked by the GPU tests."""

import functools
import json
import os
import pathlib
import subprocess
import sys

import pytest

pytest.importorskip("mace")  # the e3nn 0.6 environment of CI has no mace-torch
torch = pytest.importorskip("torch")

ROOT = pathlib.Path(__file__).resolve().parents[1]


@functools.lru_cache(maxsize=None)  # one subprocess per mode for the module's tests
def _training_step(double_backward: str) -> dict:
    env = dict(os.environ, TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD="1", OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, str(ROOT / "tests" / "_cuda_host_path_on_cpu.py"), str(ROOT / "scripts"),
                           double_backward], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(torch.cuda.is_available(), reason="the real extension owns the batmobile_cuda namespace here")
def test_a_training_step_runs_through_the_cuda_host_path():
    calls = _training_step("fused")
    # energy (harmonics, convolutions, symmetric contraction), forces (their backward), the force loss's
    # backward (double backward: the fused convolution kernel and the contraction's, launched through jit_launch)
    for op in ("sh_forward", "sh_backward", "sh_double_backward", "uvu_forward", "uvu_backward", "jit_launch"):
        assert calls.get(op, 0) > 0, (op, calls)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the real extension owns the batmobile_cuda namespace here")
def test_a_training_step_with_composed_double_backwards():
    """The convolutions' double backward composed of their uvu forward and backward kernels (problems above
    ``MAX_FUSED_DBL_OUT``): more forward and backward launches than with the fused kernel."""
    fused, composed = _training_step("fused"), _training_step("composed")
    assert composed["uvu_forward"] > fused["uvu_forward"] and composed["uvu_backward"] > fused["uvu_backward"], (
        fused, composed)


def test_the_stubs_have_the_extensions_schemas():
    """The stubs' schemas are the ones csrc/ registers (a changed schema must change the stub, or this fails)."""
    import re

    import _cuda_host_path_on_cpu as stubbed

    text = "\n".join(path.read_text() for path in sorted((ROOT / "csrc").glob("*.c*")))
    registered = {}
    for match in re.finditer(r'm\.def\(((?:\s*"[^"]*")+)', text):  # adjacent C++ string literals concatenate
        schema = "".join(re.findall(r'"([^"]*)"', match.group(1)))
        registered[schema.split("(")[0]] = schema
    for schema in stubbed.STUBS:
        assert registered.get(schema.split("(")[0]) == schema
