"""One copy of a folder's (HR, LR) pairs per machine: a memory-mapped cache file.

Decoding a folder and computing its MATLAB-bicubic LR costs seconds to minutes (DIV2K:
800 photos), and a node running four trials used to hold four private copies of the
result. Here the first process to load a folder at a scale writes the pairs, uint8, into
one flat file; every later process (trials, retrains, drivers on the same machine) maps
that file read-only. Mapped pages are shared through the kernel's page cache, so N
trials on a node cost about one copy, and the LR is computed once per machine.

A cache entry is keyed by the images' bytes (a digest of every file's content, in name
order) and the scale, never by path or time: an edited image makes a new entry, a copied
folder finds the old one. Layout of ``<key>.u8`` + ``<key>.json``: the JSON lists each
image's name and the offset and shape of its HR and LR arrays in the flat file. The JSON
is written last (after the data file is in place), so an entry without it is incomplete
and rebuilt.

``SEARCHSR_CACHE`` names searchsr's cache folder (default ``$XDG_CACHE_HOME/searchsr`` or
``~/.cache/searchsr``; images go in its ``images/``); ``SEARCHSR_CACHE=off`` keeps every load
in process memory. A folder that cannot be written is the same as ``off`` (with one warning).
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

import numpy as np

FORMAT = 1  # bump when the layout or the LR computation changes: old entries are then never read
INDEX_SUFFIX, DATA_SUFFIX = ".json", ".u8"


def cache_root() -> Path | None:
    """searchsr's cache folder (shared by the processes of a machine), or None when caching is off."""
    chosen = os.environ.get("SEARCHSR_CACHE", "")
    if chosen.lower() == "off":
        return None
    if chosen:
        return Path(chosen)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "searchsr"


@functools.lru_cache(maxsize=4096)
def file_digest(path: str, size: int, mtime_ns: int) -> str:
    """sha256 of a file's bytes; memoised per (path, size, mtime) within a process."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_identity(paths: list[Path]) -> list[tuple[str, str]]:
    """(name, sha256 of the bytes) of each file: what a cache entry of these files is keyed by."""
    found = []
    for p in paths:
        st = p.stat()
        found.append((p.name, file_digest(str(p.resolve()), st.st_size, st.st_mtime_ns)))
    return found


def content_key(identity: list[tuple[str, str]], scale: int) -> str:
    """The cache key of images named and digested as in ``identity`` (in order) at ``scale``."""
    h = hashlib.sha256(f"searchsr-images {FORMAT} x{scale}".encode())
    for name, digest in identity:
        h.update(f"\0{name}\0{digest}".encode())
    return h.hexdigest()[:32]


Arrays = list[tuple[np.ndarray, np.ndarray]]  # (hr, lr) per image, uint8


def cached_arrays(identity: list[tuple[str, str]], scale: int, compute: Callable[[], Arrays]) -> Arrays:
    """The (HR, LR) arrays of the images ``identity`` names (``file_identity``) at ``scale``: read-only
    views of the machine's cache file, computed with ``compute()`` and written there on a miss (plain
    ``compute()`` with the cache off). Processes missing together wait for one to compute it."""
    root = cache_root()
    if root is None:
        return compute()
    folder = root / "images"
    key = content_key(identity, scale)
    found = _open_entry(folder, key)
    if found is not None:
        return found
    try:
        lock = _build_lock(folder, key)
    except OSError as err:
        _not_writable(folder, err)
        return compute()
    with lock:
        found = _open_entry(folder, key)  # built while this process waited
        if found is not None:
            return found
        arrays = compute()
        try:
            _write_entry(folder, key, arrays)
        except OSError as err:
            _not_writable(folder, err)
            return arrays
    return _open_entry(folder, key) or arrays


def _build_lock(folder: Path, key: str) -> TextIO:
    """An open lock file holding the exclusive right to build entry ``key`` (the kernel releases it if
    the holder dies)."""
    folder.mkdir(parents=True, exist_ok=True)
    lock = open(folder / f".{key}.lock", "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
    except OSError:
        lock.close()
        raise
    return lock


def _not_writable(folder: Path, err: OSError) -> None:
    warnings.warn(f"searchsr: image cache {folder} not writable ({err.strerror or err}); "
                  "each process keeps its own copy", stacklevel=3)


def _write_entry(folder: Path, key: str, arrays: Arrays) -> None:
    """Data first, index last, each renamed into place: readers see a whole entry or none."""
    index, offset = [], 0
    tmp = folder / f".{key}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as f:
            for hr, lr in arrays:
                entry = {}
                for name, array in (("hr", hr), ("lr", lr)):
                    f.write(np.ascontiguousarray(array, dtype=np.uint8).tobytes())
                    entry[name] = [offset, list(array.shape)]
                    offset += array.size
                index.append(entry)
        os.replace(tmp, folder / f"{key}{DATA_SUFFIX}")
        tmp.write_text(json.dumps({"format": FORMAT, "bytes": offset, "images": index}))
        os.replace(tmp, folder / f"{key}{INDEX_SUFFIX}")
    finally:
        tmp.unlink(missing_ok=True)


def _open_entry(folder: Path, key: str) -> Arrays | None:
    """The entry's arrays as views of one read-only memory map, or None when absent or incomplete."""
    try:
        index = json.loads((folder / f"{key}{INDEX_SUFFIX}").read_text())
        data = np.memmap(folder / f"{key}{DATA_SUFFIX}", dtype=np.uint8, mode="r")
    except (OSError, ValueError):
        return None
    if not isinstance(index, dict) or index.get("format") != FORMAT or index.get("bytes") != data.size:
        return None
    arrays = []
    for entry in index["images"]:
        hr, lr = ((data[o : o + int(np.prod(s))].reshape(s)) for o, s in (entry["hr"], entry["lr"]))
        arrays.append((np.asarray(hr), np.asarray(lr)))
    return arrays
