"""Atomic file writing: never leave a half-written output behind.

Every writer goes through a temporary file in the *same folder* as the target (so the final
``os.replace`` is a rename on one file system, which is atomic on POSIX and Windows) and only
renames it into place once the write has finished. If the writer raises, the temporary file is
removed and an existing file at the target path is left untouched.

The temporary name keeps the target's extension (``.out.mp4`` → ``.out.mp4.<random>.tmp.mp4``)
so writers that pick a format from the extension (imageio, ffmpeg, trimesh, ``torch.save``)
behave exactly as they would on the real path.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import secrets
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "DISK_FULL_ERRNOS",
    "atomic_path",
    "atomic_paths",
    "atomic_write_bytes",
    "atomic_write_files",
    "atomic_write_json",
    "atomic_write_text",
    "is_disk_full",
    "json_safe",
    "remove_orphaned_temp_files",
]

DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)})
"""``errno`` values that mean the file system is full (or the user's quota is)."""

_TEMP_NAME = re.compile(r"^\..+\.[0-9a-f]{8}\.tmp(\.[^.]*)?$")


def is_disk_full(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or an exception it was raised from) is an ``OSError`` for a full disk."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def remove_orphaned_temp_files(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporary files that a process killed mid-write left in ``folder`` (not recursive).

    Only call this while holding the folder's lock: another live writer's temporary file looks the same.
    """
    removed: list[Path] = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        if _TEMP_NAME.match(entry.name) and entry.is_file():
            _remove_quietly(entry)
            removed.append(entry)
    return removed


def _temp_path_for(path: Path) -> Path:
    """A fresh, empty, hidden file next to ``path`` with the same extension."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp{path.suffix}"
        try:
            # mode 0o666 minus the umask, like a plain open(); unlike mkstemp's 0o600
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:  # pragma: no cover - 32 random bits collided
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"could not create a temporary file next to {path}")  # pragma: no cover


def _fsync_file(path: Path) -> None:
    """Flush a finished temporary file to disk before it is renamed into place."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. the writer replaced it with a directory
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some file systems do not support fsync
        pass
    finally:
        os.close(fd)


def _remove_quietly(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path``, on error it is deleted.

    >>> with atomic_path("out/model.ckpt") as tmp:
    ...     torch.save(state, tmp)

    The parent folder is created if missing. The temporary file exists (empty) when yielded;
    writers may overwrite it.
    """
    target = Path(path)
    tmp = _temp_path_for(target)
    try:
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, target)
    except BaseException as exc:
        _remove_quietly(tmp)
        if is_disk_full(exc):
            from msd3d.errors import DiskFullError

            raise DiskFullError(target) from None
        raise


@contextlib.contextmanager
def atomic_paths(paths: Sequence[str | os.PathLike[str]]) -> Iterator[list[Path]]:
    """Atomic writing of a *set* of files (e.g. ``mesh.obj`` + ``mesh.mtl`` + ``mesh.png``).

    Yields one temporary path per target. Nothing is renamed until the body has finished, so a
    failure while writing leaves none of the targets changed. The renames then happen in the
    given order: put the file that references the others (the ``.obj``) **last**, so a reader
    never sees it pointing at a missing companion.
    """
    targets = [Path(p) for p in paths]
    if len(set(targets)) != len(targets):
        raise ValueError(f"atomic_paths got duplicate targets: {[str(t) for t in targets]}")
    temps: list[Path] = []
    try:
        for target in targets:
            temps.append(_temp_path_for(target))
        yield list(temps)
        for tmp in temps:
            _fsync_file(tmp)
        for tmp, target in zip(temps, targets):
            os.replace(tmp, target)
    except BaseException as exc:
        for tmp in temps:
            _remove_quietly(tmp)
        if is_disk_full(exc):
            from msd3d.errors import DiskFullError

            raise DiskFullError(", ".join(str(t) for t in targets)) from None
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path."""
    target = Path(path)
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
    return target


def atomic_write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically; returns the path."""
    return atomic_write_bytes(path, text.encode(encoding))


def json_safe(value: Any) -> Any:
    """``value`` with NaN/inf as null, paths as strings and keys as strings: strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def atomic_write_json(path: str | os.PathLike[str], data: Any, indent: int | None = 2) -> Path:
    """Write ``data`` as strict JSON (see :func:`json_safe`) to ``path`` atomically."""
    return atomic_write_text(path, json.dumps(json_safe(data), indent=indent) + "\n")


def atomic_write_files(files: Mapping[str | os.PathLike[str], bytes]) -> list[Path]:
    """Write several files as one atomic set (renamed in the mapping's order; see ``atomic_paths``)."""
    targets = [Path(p) for p in files]
    with atomic_paths(targets) as temps:
        for tmp, data in zip(temps, files.values()):
            tmp.write_bytes(data)
    return targets
