"""Compile the CUDA extension (``csrc/``) for the GPU in use, once, into a shared cache.

Nothing here runs at import. ``load(device)`` returns at once when the extension is loaded, loads a
cached build when one matches, and otherwise compiles with ``torch.utils.cpp_extension`` and ninja.

The cache folder is ``$BATMOBILE_NN_CACHE`` (default ``~/.cache/batmobile_nn``), one sub-folder per
key = hash of every source file + torch version + CUDA version + GPU architecture (``sm_90``).
Concurrent builds: an ``fcntl.flock`` lock per key (the kernel drops it when its holder dies, so a
killed build never leaves a stale lock), a build into a private temporary folder, and one
``os.replace`` into the final folder, so the cache never holds half a build.
"""

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import List, Optional

import torch

EXTENSION_NAME = "batmobile_nn_cuda"
LOCK_TIMEOUT_S = float(os.environ.get("BATMOBILE_NN_BUILD_TIMEOUT", "1800"))
_lock = threading.Lock()
_loaded: Optional[Path] = None


class BuildError(RuntimeError):
    """The CUDA extension cannot be built or loaded here (no nvcc, no GPU, compile error, lock timeout)."""


def source_dir() -> Path:
    """``csrc/`` of a source checkout, or the copy packaged as ``batmobile_nn/_csrc``."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "_csrc", here.parent / "csrc"):
        if (candidate / "registration.cpp").is_file():
            return candidate
    raise BuildError(f"the CUDA sources are missing (looked for {here / '_csrc'} and {here.parent / 'csrc'})")


def _source_files(src: Path) -> List[Path]:
    return sorted(p for p in src.rglob("*") if p.suffix in (".cu", ".cuh", ".cpp", ".h") and p.is_file())


def architecture(device: Optional[torch.device] = None) -> str:
    """``"90"`` for compute capability 9.0 (Hopper)."""
    if not torch.cuda.is_available():
        raise BuildError("no CUDA GPU is visible to torch")
    major, minor = torch.cuda.get_device_capability(device)
    return f"{major}{minor}"


def cache_root() -> Path:
    return Path(os.environ.get("BATMOBILE_NN_CACHE") or Path.home() / ".cache" / "batmobile_nn")


def cache_key(arch: str) -> str:
    src = source_dir()
    digest = hashlib.sha256()
    for path in _source_files(src):
        digest.update(str(path.relative_to(src)).encode() + b"\0" + path.read_bytes() + b"\0")
    torch_version = torch.__version__.replace("+", "_")
    return f"torch{torch_version}-cuda{torch.version.cuda}-sm_{arch}-{digest.hexdigest()[:16]}"


def library_path(arch: str) -> Path:
    return cache_root() / cache_key(arch) / f"{EXTENSION_NAME}.so"


def _check_toolchain():
    from torch.utils import cpp_extension

    if torch.version.cuda is None:
        raise BuildError("this torch build has no CUDA support")
    home = cpp_extension.CUDA_HOME
    if home is None or not (Path(home) / "bin" / "nvcc").exists():
        raise BuildError("nvcc (the CUDA compiler) was not found; install the CUDA toolkit or set CUDA_HOME")
    try:
        cpp_extension.verify_ninja_availability()
    except RuntimeError as exc:
        raise BuildError("ninja is required to build the CUDA kernels (pip install ninja)") from exc


def _compile_here(arch: str, build_dir: Path, verbose: bool):
    from torch.utils import cpp_extension

    src = source_dir()
    sources = [str(p) for p in sorted(src.glob("*.cu")) + sorted(src.glob("*.cpp"))]
    cpp_extension.load(
        name=EXTENSION_NAME, sources=sources, build_directory=str(build_dir), verbose=verbose,
        extra_include_paths=[str(src / "include"), str(src)],
        extra_cflags=["-O3"],
        # only the device's own architecture; no --use_fast_math (float32/float64 parity with e3nn)
        extra_cuda_cflags=["-O3", f"-gencode=arch=compute_{arch},code=sm_{arch}", "-lineinfo"],
        is_python_module=False)


def _compile(arch: str, build_dir: Path, verbose: bool):
    """Compile in a child process: cpp_extension.load also loads the library, and this process must
    load it once only, from the final cache folder."""
    script = ("import runpy, sys; del sys.path[0]; "  # no cwd on the path
              f"runpy.run_path({str(Path(__file__).resolve())!r}, run_name='__main__')")
    command = [sys.executable, "-c", script, "--compile", arch, str(build_dir)]
    if verbose:
        command.append("--verbose")
    result = subprocess.run(command, capture_output=not verbose, text=True)
    if result.returncode != 0:
        output = ((result.stdout or "") + (result.stderr or "")).strip().splitlines()
        raise BuildError("compiler output (last lines):\n" + "\n".join(output[-40:]))


class _FileLock:
    """Exclusive ``flock`` on ``path`` with a timeout; released when the holder exits or dies."""

    def __init__(self, path: Path, timeout: float):
        self.path, self.timeout, self.fd = path, timeout, None

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        start, told = time.monotonic(), False
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except BlockingIOError:
                waited = time.monotonic() - start
                if waited > self.timeout:
                    os.close(self.fd)
                    raise BuildError(f"another process has been building the CUDA kernels for {waited:.0f} s "
                                     f"(lock {self.path}); raise BATMOBILE_NN_BUILD_TIMEOUT or stop that process")
                if not told:
                    print(f"batmobile_nn: waiting for another process that builds the CUDA kernels ({self.path})",
                          file=sys.stderr, flush=True)
                    told = True
                time.sleep(0.5)

    def __exit__(self, *exc):
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


def build(device: Optional[torch.device] = None, verbose: bool = False, force: bool = False) -> Path:
    """Compile (unless cached) for ``device``'s architecture; returns the cached library path.

    Args:
        device: the GPU whose architecture to build for (default: the current one).
        verbose: show the compiler's output.
        force: rebuild even when the cache holds a build.

    Returns:
        Path of the shared library inside the cache.

    >>> path = build()  # doctest: +SKIP
    """
    _check_toolchain()
    arch = architecture(device)
    key = cache_key(arch)
    final = cache_root() / key
    library = final / f"{EXTENSION_NAME}.so"
    if library.is_file() and not force:
        return library
    with _FileLock(cache_root() / f"{key}.lock", LOCK_TIMEOUT_S):
        if library.is_file() and not force:  # built by another process while we waited
            return library
        for stale in cache_root().glob(f"{key}.tmp-*"):  # left by a killed build of this key
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f"{key}.tmp-", dir=cache_root()))
        print(f"batmobile_nn: compiling CUDA kernels for sm_{arch} (first use, cached in {final}) ...",
              file=sys.stderr, flush=True)
        start = time.monotonic()
        try:
            _compile(arch, tmp, verbose)
        except Exception as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise BuildError(f"compiling the CUDA kernels failed: {exc}") from exc
        if final.exists():  # force: replace the old build
            shutil.rmtree(final)
        os.replace(tmp, final)
        print(f"batmobile_nn: CUDA kernels built in {time.monotonic() - start:.0f} s", file=sys.stderr, flush=True)
    return library


def load(device: Optional[torch.device] = None, verbose: bool = False) -> Path:
    """Build if needed and load the extension into this process (once); returns its path."""
    global _loaded
    with _lock:
        if _loaded is None:
            library = build(device, verbose)
            try:
                torch.ops.load_library(str(library))
            except OSError as exc:
                raise BuildError(f"loading {library} failed: {exc}") from exc
            _loaded = library
        return _loaded


if __name__ == "__main__":  # the child process of _compile: python _build.py --compile ARCH BUILD_DIR
    _, flag, arch_arg, build_dir_arg, *rest = sys.argv
    assert flag == "--compile", sys.argv
    _compile_here(arch_arg, Path(build_dir_arg), "--verbose" in rest)
