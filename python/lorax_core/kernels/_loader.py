"""Builds and loads the CUDA kernels on first use (docs/kernels.md).

``torch.utils.cpp_extension.load`` compiles ``csrc/*.cu`` with nvcc and ninja into a build
folder cached per source hash, torch version, CUDA version and architecture list, then loads the
library, whose ``TORCH_LIBRARY_IMPL`` blocks add the CUDA kernels to the ops of
:mod:`lorax_core.kernels.ops`. ``LORAX_DISABLE_CUDA_KERNELS=1`` forces the torch path; when CUDA,
nvcc or the build is missing, one warning is printed (once per process) and the torch path is
used. Without a system CUDA toolkit the compiler wheels (``nvidia-cuda-nvcc``, ``nvidia-nvvm``,
``nvidia-cuda-crt`` matching ``torch.version.cuda``) are found through a folder of links.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import sysconfig
import tempfile
import warnings
from pathlib import Path

import torch

__all__ = [
    "DISABLE_ENV",
    "SOURCES",
    "build",
    "build_dir",
    "disabled",
    "load",
    "status",
    "toolkit_home",
]

DISABLE_ENV = "LORAX_DISABLE_CUDA_KERNELS"
CACHE_ENV = "LORAX_KERNELS_CACHE"
SOURCE_DIR = Path(__file__).with_name("csrc")
SOURCES = ("importance.cu", "dora_norm.cu")
HEADERS = ("common.cuh",)
# Architectures compiled when no GPU is visible (compile-only builds; Hopper).
DEFAULT_ARCH_LIST = "9.0"

_state: dict[str, object] = {"loaded": None, "reason": None, "warned": False}


def disabled() -> bool:
    """Whether ``LORAX_DISABLE_CUDA_KERNELS`` asks for the torch path (any value but ``""``,
    ``"0"``, ``"false"``, ``"no"``, ``"off"``)."""
    return os.environ.get(DISABLE_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")


def _arch_list() -> str:
    """The architectures a build targets: ``$TORCH_CUDA_ARCH_LIST``, else the visible GPUs'
    (``""``), else :data:`DEFAULT_ARCH_LIST`."""
    chosen = os.environ.get("TORCH_CUDA_ARCH_LIST", "")
    return chosen or ("" if torch.cuda.is_available() else DEFAULT_ARCH_LIST)


def _tag() -> str:
    """Hash of the sources, torch and CUDA versions and the architecture list."""
    h = hashlib.sha256()
    for name in (*SOURCES, *HEADERS):
        h.update((SOURCE_DIR / name).read_bytes())
    h.update(f"{torch.__version__}|{torch.version.cuda}|{_arch_list()}".encode())
    return h.hexdigest()[:16]


def build_dir() -> Path:
    """The cached build folder: ``$LORAX_KERNELS_CACHE`` or ``~/.cache/lorax_core/kernels``,
    one subfolder per :func:`_tag`."""
    root = os.environ.get(CACHE_ENV) or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "lorax_core", "kernels"
    )
    return Path(root) / _tag()


def _wheel_toolkit() -> Path | None:
    """``site-packages/nvidia/cu<major>`` when the nvcc wheel is installed there."""
    major = (torch.version.cuda or "").split(".")[0]
    if not major:
        return None
    for site in {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"], *sys.path}:
        root = Path(site) / "nvidia" / f"cu{major}"
        if (root / "bin" / "nvcc").is_file():
            return root
    return None


def toolkit_home() -> Path | None:
    """A CUDA toolkit folder for the build: ``$CUDA_HOME``/``$CUDA_PATH``, the folder of ``nvcc``
    on ``PATH``, or a folder of links to the compiler wheels (``bin``, ``include`` and
    ``lib64/libcudart.so``, made once in the build cache). ``None`` when there is no nvcc."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        given = os.environ.get(var)
        if given and (Path(given) / "bin" / "nvcc").is_file():
            return Path(given)
    nvcc = shutil.which("nvcc")
    if nvcc:
        return Path(nvcc).resolve().parent.parent
    wheel = _wheel_toolkit()
    if wheel is None:
        return None
    home = build_dir().parent / f"cuda-{torch.version.cuda}"
    if (home / "bin" / "nvcc").is_file():
        return home
    home.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=home.parent, prefix=".cuda-"))
    (staging / "bin").symlink_to(wheel / "bin")
    (staging / "include").symlink_to(wheel / "include")
    (staging / "lib64").mkdir()
    cudart = sorted((wheel / "lib").glob("libcudart.so.*"))
    if cudart:
        (staging / "lib64" / "libcudart.so").symlink_to(cudart[0])
    try:
        staging.rename(home)  # atomic; another process may have won the race
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
    return home


def build(verbose: bool = False) -> Path:
    """Compiles (if not cached) and loads the kernels; returns the library's path.

    Works without a GPU (compile only): the architecture list then defaults to
    ``TORCH_CUDA_ARCH_LIST=9.0``. Raises ``RuntimeError`` saying what is missing (no nvcc, no
    ninja, a compile error).
    """
    from lorax_core.kernels import ops  # the op schemas the library implements

    del ops
    home = toolkit_home()
    if home is None:
        raise RuntimeError(
            "no CUDA compiler: set CUDA_HOME, put nvcc on PATH, or install the compiler wheels "
            f"nvidia-cuda-nvcc, nvidia-nvvm and nvidia-cuda-crt =={torch.version.cuda}.*"
        )
    os.environ["CUDA_HOME"] = str(home)
    if _arch_list():
        os.environ["TORCH_CUDA_ARCH_LIST"] = _arch_list()
    from torch.utils import cpp_extension

    cpp_extension.CUDA_HOME = str(home)  # read once at import; the folder may be new
    if not cpp_extension.is_ninja_available():
        raise RuntimeError("ninja is needed to build the CUDA kernels (pip install ninja)")
    folder = build_dir()
    folder.mkdir(parents=True, exist_ok=True)
    name = f"lorax_kernels_{folder.name}"
    try:
        cpp_extension.load(
            name=name,
            sources=[str(SOURCE_DIR / s) for s in SOURCES],
            extra_cflags=["-O3"],
            extra_cuda_cflags=["-O3", "-lineinfo"],
            extra_include_paths=[str(SOURCE_DIR)],
            build_directory=str(folder),
            is_python_module=False,
            verbose=verbose,
        )
    except Exception as e:  # the compiler's own error text is in the message
        raise RuntimeError(f"building the CUDA kernels failed: {e}") from e
    return folder / f"{name}.so"


def load() -> bool:
    """Whether the CUDA kernels are usable in this process (built and loaded on first call).

    False when disabled by ``LORAX_DISABLE_CUDA_KERNELS``, without CUDA, or when the build
    fails; the last two warn once.
    """
    if disabled():
        return False
    if _state["loaded"] is None:
        if not torch.cuda.is_available():
            _fail("CUDA is not available")
        else:
            try:
                build()
                _state["loaded"] = True
            except Exception as e:  # any failure to build or load means the torch path
                _fail(str(e).splitlines()[0] if str(e) else type(e).__name__)
    return bool(_state["loaded"])


def _fail(reason: str) -> None:
    _state["loaded"] = False
    _state["reason"] = reason
    if not _state["warned"]:
        _state["warned"] = True
        warnings.warn(
            f"lorax_core.kernels: CUDA kernels unavailable ({reason}); using the torch path",
            RuntimeWarning,
            stacklevel=3,
        )


def status() -> dict[str, object]:
    """``{"disabled", "loaded", "reason"}``: what :func:`load` decided (``loaded`` is ``None``
    before the first call)."""
    return {"disabled": disabled(), "loaded": _state["loaded"], "reason": _state["reason"]}


def _reset() -> None:
    """Forget the load decision and the warning (tests)."""
    _state.update(loaded=None, reason=None, warned=False)
