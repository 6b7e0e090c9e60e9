"""Atomic file writes: every file lorax_core writes goes through here.

- :func:`atomic_write` / :func:`atomic_write_bytes` replace one file: the content is written to
  a new file beside the target, flushed to disk, renamed over the target (``os.replace``) and
  the directory entry made durable. A crash at any point leaves the old file or the new one.
- :func:`atomic_folder` replaces several files of a folder *together* (an adapter's weights
  and config): the new files are written into a fresh sibling folder, with the folder's other
  entries hard-linked beside them, flushed to disk, and the two folders are swapped in one
  step (``renameat2(RENAME_EXCHANGE)`` on Linux). A crash at any point leaves the folder with
  every previous file or every new one, never a mixture.

New files and folders get the permissions of an ordinary ``open``/``mkdir``: ``0o666`` /
``0o777`` minus the process umask (a replaced folder keeps its own mode). Errors name the
caller's path, never a temporary one.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import secrets
import shutil
import stat
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

__all__ = ["atomic_folder", "atomic_write", "atomic_write_bytes"]

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _sibling(target: Path, kind: str) -> Path:
    """A fresh hidden name beside ``target`` (``.<name>.<random>.<kind>``)."""
    return target.parent / f".{target.name}.{secrets.token_hex(6)}.{kind}"


def _renamed(err: BaseException, temporary: str, target: Path) -> BaseException:
    """``err`` speaking of ``target`` instead of the temporary path (the same type)."""
    if isinstance(err, OSError) and err.errno is not None:
        return type(err)(err.errno, err.strerror, str(target))
    text = str(err)
    if temporary and temporary in text:
        try:
            return type(err)(text.replace(temporary, str(target)))
        except Exception:  # an exception type that does not take one message
            return err
    return err


def _raise_named(err: BaseException, temporary: str, target: Path) -> None:
    named = _renamed(err, temporary, target)
    if named is err:
        raise err
    raise named from None


def _fsync_dir(directory: Path) -> None:
    """Make the entries of ``directory`` durable (POSIX; a no-op where unsupported)."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _create(path: Path) -> int:
    """Open a new file for writing with mode ``0o666`` minus the umask (fails if it exists)."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)


def atomic_write(path: str | os.PathLike[str], write: Callable[[str], object]) -> Path:
    """Call ``write(tmp_path)`` to fill a new file beside ``path``, then rename it over it.

    Args:
        path: the destination file; its directory must exist.
        write: writes the complete content to the path it is given (e.g. ``save_file``); the
            file already exists (empty, mode ``0o666`` minus the umask) when it is called.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    target = Path(path)
    tmp = _sibling(target, "tmp")
    try:
        os.close(_create(tmp))
        write(str(tmp))
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except BaseException as err:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        _raise_named(err, str(tmp), target)
    return target


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; see :func:`atomic_write`."""
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def _exchange(a: Path, b: Path) -> None:
    """Swap the directory entries ``a`` and ``b`` in one atomic step.

    Raises ``OSError`` (``ENOSYS``/``EINVAL``) where the system or file system cannot.
    """
    if not sys.platform.startswith("linux"):
        raise OSError(errno.ENOSYS, "atomic exchange is not available on this system")
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        raise OSError(errno.ENOSYS, "renameat2 is not available")
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), str(b))


def _write_file(path: Path, data: bytes) -> None:
    fd = _create(path)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def _mirror(source: Path, staging: Path, skip: set[str]) -> None:
    """Hard-link (or copy) every entry of ``source`` except ``skip`` into ``staging``."""
    for entry in os.scandir(source):
        if entry.name in skip:
            continue
        destination = staging / entry.name
        if entry.is_dir(follow_symlinks=False):
            shutil.copytree(entry.path, destination, symlinks=True, copy_function=_link_or_copy)
        else:
            _link_or_copy(entry.path, str(destination))


def _link_or_copy(source: str, destination: str) -> None:
    if os.path.islink(source):
        os.symlink(os.readlink(source), destination)
        return
    try:
        os.link(source, destination)
    except OSError:
        shutil.copy2(source, destination)


def _swap_by_renames(staging: Path, real: Path) -> Path:
    """Move ``real`` aside and ``staging`` into its place; returns where the old one went."""
    aside = _sibling(real, "old")
    os.rename(real, aside)
    try:
        os.rename(staging, real)
    except BaseException:
        os.rename(aside, real)
        raise
    return aside


def atomic_folder(directory: str | os.PathLike[str], files: Mapping[str, bytes]) -> Path:
    """Write ``files`` (name → content) into ``directory`` all at once; returns its path.

    After a crash at any point ``directory`` holds either all its previous entries or all the
    new files (with its other entries kept), never some of each. ``directory`` and its parents
    are created if needed; its other entries are carried over as hard links (copies where the
    file system has none). Where the system cannot swap two folders atomically (not Linux, or
    a file system without ``RENAME_EXCHANGE``) the old folder is moved aside and the new one
    renamed in: a crash between those two renames leaves the old folder under a hidden
    sibling name.

    Raises:
        ValueError: ``directory`` exists and is not a folder, or a name is not a plain file
            name.
        OSError: the files cannot be written (naming ``directory`` or the file).
    """
    target = Path(directory)
    for name in files:
        if not name or Path(name).name != name or name in (".", ".."):
            raise ValueError(f"atomic_folder: file names must be plain names, got {name!r}")
    if target.exists() and not target.is_dir():
        raise ValueError(f"atomic_folder: directory must be a folder, got file {str(target)!r}")
    real = Path(os.path.realpath(target))
    staging = _sibling(real, "new")
    current = ""
    try:
        real.parent.mkdir(parents=True, exist_ok=True)
        current = str(staging)
        os.mkdir(staging, 0o777)
        existed = real.is_dir()
        if existed:
            os.chmod(staging, stat.S_IMODE(real.stat().st_mode))
            _mirror(real, staging, set(files))
        for name, data in files.items():
            current = str(staging / name)
            _write_file(staging / name, data)
        current = str(staging)
        _fsync_dir(staging)
        if not existed:
            os.rename(staging, real)
        else:
            try:
                _exchange(staging, real)
            except OSError as err:
                if err.errno not in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
                    raise
                staging = _swap_by_renames(staging, real)
        _fsync_dir(real.parent)
    except BaseException as err:
        shutil.rmtree(staging, ignore_errors=True)
        inside = current.startswith(str(staging) + os.sep)
        _raise_named(err, current, target / Path(current).name if inside else target)
    shutil.rmtree(staging, ignore_errors=True)  # the previous content
    return target
