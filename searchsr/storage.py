"""Where studies live: opening an SQLAlchemy storage (SQLite, PostgreSQL, ...) safely, and finding a
study in it. Every failure is one line, with the URL's password masked.

* A damaged SQLite file is refused before Optuna may write into it (``check_sqlite_file``).
* Commands that only read (``front``, ``export --study``) never create a storage.
* A new SQLite file's folder is created only one level deep: a typo in a path is an error, not a
  new tree of folders (``sqlite:////nonexistdir/x.db``).
* Drivers creating a new storage's tables at the same moment: the losers try again.
* Heartbeats: a driver records one for each trial it owns; ``searchsr.study`` fails (and
  re-queues) the RUNNING trials whose heartbeat is older than ``stale_after``.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from pathlib import Path
from urllib.parse import quote

import optuna
import sqlalchemy.exc
from optuna.storages import RDBStorage
from sqlalchemy.engine import make_url

from searchsr.errors import UsageError

STALE_AFTER_S = 60  # a RUNNING trial without heartbeat this long lost its driver
MAX_STUDY_NAME = 128
OPEN_ATTEMPTS = 8  # drivers creating a new storage's tables at the same moment: the losers try again


def mask_url(url: str) -> str:
    """A storage URL fit for logs and errors: the password replaced by ***."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except sqlalchemy.exc.ArgumentError:
        return "<invalid storage URL>"


def parse_url(url: str) -> sqlalchemy.engine.URL:
    """The parsed URL; a plain file path gets the sqlite URL it probably meant as a hint."""
    try:
        return make_url(url)
    except sqlalchemy.exc.ArgumentError:
        pass
    looks_like_path = url and "@" not in url and "://" not in url
    hint = f" (an SQLite file is sqlite:///{url}, e.g. sqlite:///studies/searchsr.db)" if looks_like_path else ""
    shown = url if looks_like_path else mask_url(url)
    raise UsageError(f"--storage: not an SQLAlchemy URL: {shown}{hint}")


def check_study_name(name: str) -> str:
    """A study name is also a folder name (``--runs-dir/<study>``, Ray's experiment): no path tricks."""
    if (not name or len(name) > MAX_STUDY_NAME or name.startswith(".")
            or not all(c.isalnum() or c in "-_." for c in name)):
        raise UsageError(f"--study must be letters, digits, '-', '_' or '.' (not first), at most "
                         f"{MAX_STUDY_NAME} characters, got {name!r}")
    return name


def check_sqlite_file(path: Path) -> None:
    """Refuse a file that is not a healthy SQLite database (random bytes, truncated, damaged pages)
    before any storage is opened on it; reads only (``mode=ro``), so the file stays byte for byte.
    A file with a hot journal (a writer was killed mid-commit) is left to SQLite's own recovery,
    which needs a writable connection."""
    if any(Path(f"{path}{suffix}").exists() for suffix in ("-journal", "-wal")):
        return
    try:
        with contextlib.closing(sqlite3.connect(f"file:{quote(str(path.resolve()))}?mode=ro", uri=True,
                                                  timeout=30)) as con:  # a live search may be committing
            problems = [row[0] for row in con.execute("PRAGMA quick_check(3)")]
    except sqlite3.Error as err:
        raise UsageError(f"{path}: not a usable SQLite database ({err})") from None
    if problems != ["ok"]:
        raise UsageError(f"{path}: damaged SQLite database ({' '.join('; '.join(problems).split())[:200]})")


def _check_sqlite_target(database: Path, create: bool) -> None:
    if not create and not (database.is_file() and database.stat().st_size):
        raise UsageError(f"no study storage at {database}")
    if database.is_file():
        check_sqlite_file(database)  # never let Optuna write into a damaged file
        return
    folder = database.parent
    if not folder.is_dir():
        if folder.exists() or not folder.parent.is_dir():
            raise UsageError(f"--storage: folder {folder} does not exist (create it first, or fix the path)")
        try:
            folder.mkdir()
        except OSError as err:
            raise UsageError(f"--storage: cannot create folder {folder} ({err.strerror or err})") from None


def open_storage(url: str, stale_after: int = STALE_AFTER_S, create: bool = True) -> RDBStorage:
    """An RDB storage with heartbeats; any failure is one line with the URL masked.

    ``create=False`` (commands that only read a study) refuses a missing SQLite file instead of
    leaving an empty database behind. A RUNNING trial without a heartbeat for ``stale_after``
    seconds counts as lost (``searchsr.study.fail_stale_trials``).
    """
    parsed = parse_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        _check_sqlite_target(Path(parsed.database), create)
    for attempt in range(1, OPEN_ATTEMPTS + 1):
        try:
            return RDBStorage(url, heartbeat_interval=max(1, stale_after // 4), grace_period=stale_after,
                              engine_kwargs={"pool_pre_ping": True})
        except Exception as err:  # sqlalchemy/driver errors name the URL, password included
            if attempt < OPEN_ATTEMPTS and _lost_schema_race(err):
                time.sleep(0.1 * attempt)
                continue
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise UsageError(f"cannot open storage {mask_url(url)}: {first.replace(url, mask_url(url))}") from None
    raise AssertionError("unreachable")


def _lost_schema_race(err: Exception) -> bool:
    """Another driver was creating Optuna's tables in the same new storage at that moment: PostgreSQL
    reports a unique violation in its catalog, SQLite a table that "already exists". Creating them skips
    what exists, so the next attempt succeeds once the winner is done."""
    return isinstance(err, sqlalchemy.exc.IntegrityError) or (
        isinstance(err, sqlalchemy.exc.DBAPIError) and "already exists" in str(err))


def study_names(storage: RDBStorage) -> list[str]:
    return [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]


def load_study(study_name: str, storage: RDBStorage, sampler: optuna.samplers.BaseSampler | None = None
               ) -> optuna.Study:
    """The named study; a wrong name is one line listing the studies the storage has."""
    try:
        return optuna.load_study(study_name=study_name, storage=storage, sampler=sampler)
    except KeyError:
        known = ", ".join(study_names(storage)) or "none"
        raise UsageError(f"no study named {study_name!r} in this storage (studies: {known})") from None
