"""Atomic writes: old-or-new after a SIGKILL at every step, umask-respecting modes, user paths.

The crash harness (:func:`kill_at_every_step`) is shared with the adapter and PEFT tests: in a
child process it prepares a folder, forks, and lets the fork SIGKILL itself just before its
k-th file-system step (every ``os.rename``/``replace``/``fsync``/``link``/``write``/``mkdir``/
``unlink``/``rmdir``, ``shutil.rmtree`` and the folder exchange count), for k = 1, 2, … until
one save runs to completion.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from lorax_core import _atomic
from lorax_core._atomic import atomic_folder, atomic_write, atomic_write_bytes

ROOT = Path(__file__).resolve().parents[1]
HOOKED = ("rename", "replace", "fsync", "link", "write", "mkdir", "unlink", "rmdir")


def die_at_call(k: int) -> None:
    """SIGKILL this process just before its k-th (1-based) file-system step from now on."""
    calls = [0]

    def wrap(function: Callable[..., object]) -> Callable[..., object]:
        def hooked(*args: object, **kwargs: object) -> object:
            calls[0] += 1
            if calls[0] == k:
                os.kill(os.getpid(), signal.SIGKILL)
            return function(*args, **kwargs)

        return hooked

    for name in HOOKED:
        setattr(os, name, wrap(getattr(os, name)))
    shutil.rmtree = wrap(shutil.rmtree)  # type: ignore[assignment]
    _atomic._exchange = wrap(_atomic._exchange)  # type: ignore[assignment]


def kill_at_every_step(
    root: Path, prepare: Callable[[Path], object], save: Callable[[Path], object]
) -> int:
    """For k = 1, 2, …: ``prepare(root / str(k))``, then run ``save`` on it in a fork that dies
    at its k-th step. Returns the first k whose save completed (the number of steps + 1).
    Call it in a child process (it forks)."""
    for k in range(1, 10_000):
        folder = root / str(k)
        prepare(folder)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the fork
            code = 1
            try:
                die_at_call(k)
                save(folder)
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        if os.WIFEXITED(status):
            assert os.WEXITSTATUS(status) == 0, f"save raised at step {k}"
            return k
        assert os.WTERMSIG(status) == signal.SIGKILL
    raise AssertionError("the save never completed")


def run_child(script: str, *args: str) -> str:
    """Run ``script`` in a fresh interpreter (repository root importable); its stdout."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


FOLDER_SCRIPT = """
    import sys
    from pathlib import Path
    from lorax_core._atomic import atomic_folder
    from tests.test_atomic import kill_at_every_step

    OLD = {"a.bin": b"old a", "b.json": b"old b"}
    NEW = {"a.bin": b"new a" * 1000, "b.json": b"new b"}

    def prepare(folder):
        if sys.argv[2] == "overwrite":
            atomic_folder(folder, OLD)
            (folder / "README.md").write_text("kept")
            (folder / "sub").mkdir()
            (folder / "sub" / "x.txt").write_text("kept too")

    print(kill_at_every_step(Path(sys.argv[1]), prepare, lambda f: atomic_folder(f, NEW)))
"""


def _contents(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def test_folder_killed_at_every_step_holds_old_or_new(tmp_path: Path) -> None:
    steps = int(run_child(FOLDER_SCRIPT, str(tmp_path), "overwrite"))
    old = {"README.md": b"kept", "a.bin": b"old a", "b.json": b"old b", "sub/x.txt": b"kept too"}
    new = {**old, "a.bin": b"new a" * 1000, "b.json": b"new b"}
    seen = []
    for k in range(1, steps + 1):
        folder = tmp_path / str(k)
        got = _contents(folder)
        assert got in (old, new), (k, sorted(got))
        seen.append("new" if got == new else "old")
    assert seen[0] == "old" and seen[-1] == "new" and steps > 5
    assert "new" not in seen[: seen.index("new")]  # one switch: old … old new … new
    assert all(s == "new" for s in seen[seen.index("new") :])


def test_first_folder_killed_at_every_step_is_absent_or_new(tmp_path: Path) -> None:
    steps = int(run_child(FOLDER_SCRIPT, str(tmp_path), "first"))
    for k in range(1, steps + 1):
        folder = tmp_path / str(k)
        assert not folder.exists() or _contents(folder) == {
            "a.bin": b"new a" * 1000,
            "b.json": b"new b",
        }, k
    assert (tmp_path / str(steps)).is_dir()


@pytest.mark.parametrize(
    ("umask", "file_mode", "dir_mode"), [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)]
)
def test_new_files_respect_the_umask(
    tmp_path: Path, umask: int, file_mode: int, dir_mode: int
) -> None:
    previous = os.umask(umask)
    try:
        atomic_write_bytes(tmp_path / "one.bin", b"1")
        atomic_write(tmp_path / "two.txt", lambda tmp: Path(tmp).write_text("2"))
        atomic_folder(tmp_path / "pair", {"a": b"a", "b": b"b"})
        atomic_folder(tmp_path / "pair", {"a": b"A", "b": b"B"})  # an overwrite too
    finally:
        os.umask(previous)
    for path in (
        tmp_path / "one.bin",
        tmp_path / "two.txt",
        tmp_path / "pair/a",
        tmp_path / "pair/b",
    ):
        assert stat.S_IMODE(path.stat().st_mode) == file_mode, path
    assert stat.S_IMODE((tmp_path / "pair").stat().st_mode) == dir_mode
    assert (tmp_path / "pair/a").read_bytes() == b"A"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.bin", "pair", "two.txt"]


def test_an_overwritten_folder_keeps_its_mode_and_other_entries(tmp_path: Path) -> None:
    folder = tmp_path / "kept"
    folder.mkdir(mode=0o750)
    os.chmod(folder, 0o750)
    (folder / "notes.txt").write_text("mine")
    atomic_folder(folder, {"a": b"1"})
    assert stat.S_IMODE(folder.stat().st_mode) == 0o750
    assert (folder / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept"]  # no temporaries left


def test_errors_name_the_callers_path_not_a_temporary(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    def fail(tmp: str) -> None:
        raise RuntimeError(f"cannot encode into {tmp}")

    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError) as info:
        atomic_write(target, fail)
    assert str(target) in str(info.value) and ".tmp" not in str(info.value)
    missing = tmp_path / "no" / "such" / "dir" / "f.bin"
    with pytest.raises(FileNotFoundError) as info:
        atomic_write_bytes(missing, b"x")
    assert info.value.filename == str(missing)
    a_file = tmp_path / "plain"
    a_file.write_text("x")
    with pytest.raises(OSError) as info:
        atomic_folder(a_file / "adapter", {"a": b"1"})
    assert info.value.filename == str(a_file / "adapter")
    real_write = os.write

    def disk_full(fd: int, data: bytes) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", disk_full)
    with pytest.raises(OSError, match="No space left") as info:
        atomic_folder(tmp_path / "adapter", {"weights.bin": b"1"})
    monkeypatch.setattr(os, "write", real_write)
    assert info.value.filename == str(tmp_path / "adapter" / "weights.bin")
    assert list(tmp_path.glob("**/.*")) == []


def test_folder_rejects_a_file_and_bad_names(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match="directory must be a folder, got file"):
        atomic_folder(tmp_path / "f", {"a": b"1"})
    with pytest.raises(ValueError, match=r"file names must be plain names, got '\.\./a'"):
        atomic_folder(tmp_path / "d", {"../a": b"1"})
    assert json.loads(json.dumps(sorted(p.name for p in tmp_path.iterdir()))) == ["f"]


def test_without_an_atomic_exchange_the_folder_is_swapped_by_two_renames(
    tmp_path: Path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    def unsupported(a: Path, b: Path) -> None:
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(_atomic, "_exchange", unsupported)
    folder = tmp_path / "pair"
    atomic_folder(folder, {"a": b"1", "b": b"2"})
    (folder / "notes").write_text("kept")
    atomic_folder(folder, {"a": b"3", "b": b"4"})
    assert _contents(folder) == {"a": b"3", "b": b"4", "notes": b"kept"}
    real_rename, calls = os.rename, []

    def second_rename_fails(src: str, dst: str) -> None:
        calls.append(dst)
        if len(calls) == 2:
            raise OSError(errno.EIO, "I/O error")
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", second_rename_fails)
    with pytest.raises(OSError, match="I/O error"):
        atomic_folder(folder, {"a": b"5", "b": b"6"})
    monkeypatch.setattr(os, "rename", real_rename)
    assert _contents(folder) == {"a": b"3", "b": b"4", "notes": b"kept"}  # the old one is back
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pair"]
