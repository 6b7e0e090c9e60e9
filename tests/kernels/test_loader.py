"""The loader on a machine without a GPU: the disable switch, the one-time warning and the torch
path, the toolchain folder of links, the cache key, and (when built) the compiled library."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from lorax_core import kernels
from lorax_core.kernels import _loader, reference


@pytest.fixture(autouse=True)
def fresh_loader(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.delenv(_loader.DISABLE_ENV, raising=False)
    _loader._reset()
    yield
    _loader._reset()


@pytest.mark.parametrize(
    ("value", "off"),
    [("", False), ("0", False), ("false", False), ("OFF", False), ("1", True), ("yes", True)],
)
def test_disable_switch_values(monkeypatch: pytest.MonkeyPatch, value: str, off: bool) -> None:
    monkeypatch.setenv(_loader.DISABLE_ENV, value)
    assert kernels.disabled() is off


def test_disabled_never_loads_nor_warns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(_loader.DISABLE_ENV, "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(_loader, "build", lambda verbose=False: pytest.fail("must not build"))
    _loader._state["loaded"] = True  # even a loaded library is bypassed
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert kernels.load() is False
    assert kernels.status()["disabled"] is True


def test_without_cuda_warns_once_and_uses_the_torch_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.warns(RuntimeWarning, match=r"CUDA kernels unavailable \(CUDA is not available\)"):
        assert kernels.load() is False
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second call is silent
        assert kernels.load() is False
    assert kernels.status() == {
        "disabled": False,
        "loaded": False,
        "reason": "CUDA is not available",
    }


def test_failed_build_warns_once_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(_loader, "toolkit_home", lambda: None)
    with pytest.warns(RuntimeWarning, match="no CUDA compiler"):
        assert kernels.load() is False
    with pytest.raises(RuntimeError, match="nvidia-cuda-nvcc"):
        kernels.build()


def test_cpu_tensors_take_the_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_loader, "load", lambda: pytest.fail("CPU tensors never load kernels"))
    g = torch.Generator().manual_seed(0)
    W, A, B = (torch.randn(s, generator=g) for s in ((6, 5), (2, 5), (6, 2)))
    assert not kernels.uses_kernel(W, A, B)
    torch.testing.assert_close(
        kernels.dora_row_norm(W, A, B, 0.5), reference.dora_row_norm(W, A, B, 0.5)
    )


def test_build_folder_is_keyed_by_sources_and_arch(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(_loader.CACHE_ENV, str(tmp_path))
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "9.0")
    first = _loader.build_dir()
    assert first.parent == tmp_path and first == _loader.build_dir()
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "8.0")
    assert _loader.build_dir() != first


@pytest.mark.skipif(_loader._wheel_toolkit() is None, reason="the nvcc wheel is not installed")
def test_toolkit_folder_links_the_compiler_wheels(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(_loader.CACHE_ENV, str(tmp_path))
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    home = _loader.toolkit_home()
    assert home is not None and home.parent == tmp_path
    assert (home / "bin" / "nvcc").is_file()
    assert (home / "include" / "cuda_runtime.h").is_file()
    assert (home / "lib64" / "libcudart.so").resolve().name.startswith("libcudart.so.")
    assert _loader.toolkit_home() == home  # made once, then reused


def _built_library() -> Path | None:
    folder = _loader.build_dir()
    library = folder / f"lorax_kernels_{folder.name}.so"
    return library if library.is_file() else None


@pytest.mark.skipif(
    _built_library() is None, reason="kernels not built (scripts/compile-kernels.sh)"
)
def test_compiled_library_registers_the_cuda_kernels() -> None:
    torch.ops.load_library(str(_built_library()))
    for op in ("importance_update_", "dora_row_norm"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"lorax_core::{op}", "CUDA")


def test_any_build_error_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(verbose: bool = False) -> Path:
        raise OSError("read-only cache folder")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(_loader, "build", broken)
    with pytest.warns(RuntimeWarning, match="read-only cache folder"):
        assert kernels.load() is False
