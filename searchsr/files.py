"""What every command that writes files needs: output checks made up front, and atomic writes.

Commands check their output path *before* any work (``check_writable_dir``,
``check_new_or_empty_dir``, ``writable_ancestor``) and create nothing while checking, so a
command that fails later leaves no folder behind. A file is written with ``atomic_write``
(or streamed through ``atomic_output``): into a temporary file in the same folder, then
renamed, so readers see the whole file or none, and a failed write leaves nothing. Files
get the usual ``0o666 & ~umask`` mode (``tempfile`` makes private 0600 files).

Every refusal is a one-line ``UsageError`` naming the path (or the caller's ``label``).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from searchsr.errors import UsageError, first_line


def read_json(path: Path) -> Any:
    """A JSON file searchsr wrote (a run's config, result or card); unreadable or damaged is one line."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UsageError(f"{path}: not readable JSON ({first_line(err)})") from None


def umask() -> int:
    """The process's file-creation mask (reading it means setting it; it is put back at once)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def writable_ancestor(path: Path, start: Path, label: str | None = None) -> Path:
    """The nearest existing folder at or above ``start``, which must be writable to create ``path``."""
    label = str(path) if label is None else label
    ancestor = start
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UsageError(f"{label}: {ancestor} is not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UsageError(f"{label}: {ancestor} is not writable")
    return ancestor


def check_writable_dir(path: Path, label: str | None = None) -> Path:
    """``path`` is a folder, or can be created as one; returns its nearest existing ancestor (or itself)."""
    if path.exists() and not path.is_dir():
        raise UsageError(f"{path if label is None else label}: exists and is not a folder")
    return writable_ancestor(path, path, label)


def check_new_or_empty_dir(path: Path, not_empty: str = "exists and is not empty") -> Path:
    """``path`` is new or an empty folder, and can be created; returns the nearest existing ancestor
    of ``path`` (the folder to make it in). ``not_empty`` is the refusal of a non-empty folder."""
    if path.exists() or path.is_symlink():
        if not path.is_dir():
            raise UsageError(f"{path}: exists and is not a folder")
        if any(path.iterdir()):
            raise UsageError(f"{path}: {not_empty}")
    return writable_ancestor(path, path.parent)


@contextlib.contextmanager
def atomic_output(path: Path) -> Iterator[BinaryIO]:
    """A binary file to write ``path``'s content into; it becomes ``path`` when the block ends
    without an error, and is removed otherwise. The folder must exist."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise UsageError(f"{path}: cannot write ({err.strerror or err})") from None
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
        os.chmod(tmp, 0o666 & ~umask())
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        raise UsageError(f"{path}: cannot write ({err.strerror or err})") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write(path: Path, data: bytes | str) -> None:
    """Write ``data`` (``str`` as UTF-8) to ``path`` atomically: the whole file or nothing."""
    with atomic_output(path) as f:
        f.write(data.encode() if isinstance(data, str) else data)
