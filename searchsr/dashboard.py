"""``searchsr dashboard``: optuna-dashboard on a study's storage, opened read-only.

Watching a live study must not disturb the search writing it (with SQLite, a connection
that writes, or holds a transaction open, blocks the search's commits until its busy
timeout ends in "database is locked"). So the dashboard gets its own connection that
*cannot* write:

* SQLite: the file is opened through SQLite's URI form with ``mode=ro``
  (``sqlite:///file:/abs/path.db?mode=ro&uri=true``). Any write fails at once instead
  of taking the RESERVED/EXCLUSIVE locks a writer needs, and reads run outside
  transactions (pysqlite opens one only before a write), so each holds SHARED for the
  length of one SELECT, which the search's busy timeout absorbs. (``mode=ro`` alone would
  still allow an explicit ``BEGIN EXCLUSIVE``; neither Optuna nor optuna-dashboard issues
  one, and tests/test_dashboard.py checks that every statement the dashboard runs is a
  SELECT or PRAGMA.)
* PostgreSQL / MySQL: every transaction of the session is read-only (MVCC: readers never
  block the writer there).

The dashboard's own editing features (notes, creating or deleting studies, telling
trials) therefore fail instead of touching the study. Objective names: ``searchsr run``
sets them; for an older study without names they are inferred from the trials' user
attributes (each objective value equals one recorded metric), saved when the storage
accepts a write, and otherwise shown through the read-only view alone.
"""

from __future__ import annotations

import signal
import socket
from collections.abc import Callable
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from urllib.parse import quote
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import optuna
import sqlalchemy.exc
from optuna.storages import RDBStorage
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.engine import make_url

from searchsr.errors import UsageError
from searchsr import internals
from searchsr.internals import FrozenStudy
from searchsr.objectives import OBJECTIVES
from searchsr.storage import check_sqlite_file, mask_url

READ_TIMEOUT_S = 10  # how long a dashboard read waits for a writer's commit to finish


def _first_line(err: BaseException, url: str) -> str:
    if isinstance(err, optuna.exceptions.StorageInternalError) and err.__cause__ is not None:
        err = err.__cause__  # Optuna's wrapper only says "an exception is raised during the commit"
    text = str(err).splitlines()[0].strip() if str(err).strip() else type(err).__name__
    return text.replace(url, mask_url(url))


def readonly_engine(url: str) -> tuple[str, dict[str, Any]]:
    """(URL, engine kwargs) that open ``url`` for reading only; ValueError if that is impossible."""
    try:
        parsed = make_url(url)
    except sqlalchemy.exc.ArgumentError:
        raise UsageError(f"--storage: not an SQLAlchemy URL: {mask_url(url)}") from None
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        database = parsed.database or ""
        if database in ("", ":memory:") or database.startswith("file:"):
            raise UsageError(f"--storage: need an SQLite file path, got {mask_url(url)}")
        path = Path(database).expanduser().resolve()
        if not path.is_file():
            raise UsageError(f"no SQLite database at {path}")
        check_sqlite_file(path)
        return (f"sqlite:///file:{quote(str(path))}?mode=ro&uri=true",
                {"connect_args": {"timeout": READ_TIMEOUT_S, "check_same_thread": False}})
    if backend == "postgresql":
        return url, {"connect_args": {"options": "-c default_transaction_read_only=on"}, "pool_pre_ping": True}
    if backend == "mysql":
        return url, {"connect_args": {"init_command": "SET SESSION TRANSACTION READ ONLY"}, "pool_pre_ping": True}
    raise UsageError(f"--storage: cannot open {backend} read-only; use SQLite, PostgreSQL or MySQL")


class ReadOnlyStorage(RDBStorage):
    """An RDB storage on a read-only connection that can show objective names it was given."""

    def __init__(self, url: str) -> None:
        ro_url, engine_kwargs = readonly_engine(url)
        self.extra_names: dict[int, list[str]] = {}
        try:
            super().__init__(ro_url, engine_kwargs=engine_kwargs, skip_compatibility_check=True,
                             skip_table_creation=True)
            self.get_all_studies()  # fail here, not on the first page view, if this is no Optuna storage
        except Exception as err:  # driver errors may quote the URL, password included
            raise UsageError(f"cannot open storage {mask_url(url)} read-only: {_first_line(err, url)}") from None

    def _with_names(self, study_id: int, attrs: dict[str, Any]) -> dict[str, Any]:
        names = self.extra_names.get(study_id)
        key = internals.METRIC_NAMES_ATTR
        return {**attrs, key: names} if names and not attrs.get(key) else attrs

    def get_study_system_attrs(self, study_id: int) -> dict[str, Any]:
        return self._with_names(study_id, super().get_study_system_attrs(study_id))

    def get_all_studies(self) -> list[FrozenStudy]:
        studies = super().get_all_studies()
        for study in studies:
            study.system_attrs = self._with_names(internals.study_id(study), study.system_attrs)
        return studies


def infer_metric_names(directions: list[StudyDirection], trials: list[FrozenTrial]) -> list[str] | None:
    """Objective names of a study that never recorded them: the metric each value equals in every trial."""
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.values is not None]
    if not complete:
        return None
    names = []
    for i, direction in enumerate(directions):
        wanted = "maximize" if direction == StudyDirection.MAXIMIZE else "minimize"
        matches = [name for name, (d, key) in OBJECTIVES.items()
                   if d == wanted and all(key in t.user_attrs and _close(t.user_attrs[key], t.values[i])
                                          for t in complete)]
        if len(matches) != 1:
            return None
        names.append(matches[0])
    return names if len(set(names)) == len(names) else None


def _close(a: Any, b: float) -> bool:
    try:
        return abs(float(a) - b) <= 1e-9 * max(1.0, abs(b))
    except (TypeError, ValueError):
        return False


def name_objectives(url: str, storage: ReadOnlyStorage, studies: list[FrozenStudy], save: bool = True) -> list[str]:
    """Give unnamed studies inferred names, shown through ``storage`` and, with ``save``, written if the
    storage takes a write (one short transaction); returns messages for the user."""
    messages, writable = [], None
    for study in studies:
        if study.system_attrs.get(internals.METRIC_NAMES_ATTR):
            continue
        names = infer_metric_names(study.directions, storage.get_all_trials(internals.study_id(study), deepcopy=False))
        if names is None:
            messages.append(f"study {study.study_name!r} has no objective names and none could be inferred")
            continue
        storage.extra_names[internals.study_id(study)] = names
        if not save:
            messages.append(f"study {study.study_name!r}: objective names inferred as {','.join(names)}")
            continue
        try:
            if writable is None:
                timeout = {"connect_args": {"timeout": 2}} if make_url(url).get_backend_name() == "sqlite" else {}
                writable = RDBStorage(url, engine_kwargs=timeout, skip_compatibility_check=True,
                                      skip_table_creation=True)
            optuna.load_study(study_name=study.study_name, storage=writable).set_metric_names(names)
            messages.append(f"study {study.study_name!r}: saved objective names {','.join(names)}")
        except Exception as err:
            messages.append(f"study {study.study_name!r}: showing objective names {','.join(names)} "
                            f"(not saved: {_first_line(err, url)})")
    return messages


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # one line per request is noise here
        pass


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Stop(Exception):
    """SIGTERM or SIGINT: leave serve_forever."""


def serve(storage: ReadOnlyStorage, host: str, port: int) -> WSGIServer:
    """A threaded WSGI server with optuna-dashboard on ``storage``, bound but not yet serving."""
    from optuna_dashboard import wsgi

    server_class = _Server
    if ":" in host:
        server_class = type("_Server6", (_Server,), {"address_family": socket.AF_INET6})
    try:
        return make_server(host, port, wsgi(storage), server_class=server_class, handler_class=_QuietHandler)
    except OSError as err:
        raise UsageError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None


def run_dashboard(url: str, study_name: str | None, host: str, port: int,
                  say: Callable[[str], None] = print) -> int:
    """Serve until Ctrl-C or SIGTERM; returns 0 after a clean stop."""
    storage = ReadOnlyStorage(url)
    studies = storage.get_all_studies()
    path = "/dashboard"
    if study_name is not None:
        chosen = [s for s in studies if s.study_name == study_name]
        if not chosen:
            known = ", ".join(s.study_name for s in studies) or "none"
            raise UsageError(f"no study named {study_name!r} in {mask_url(url)} (studies: {known})")
        studies = chosen
        path = f"/dashboard/studies/{internals.study_id(chosen[0])}"
    for message in name_objectives(url, storage, studies):
        say(message)
    server = serve(storage, host, port)
    def stop(signum: int, frame: Any) -> None:
        raise _Stop

    # SIGINT too: a parent that ignores SIGINT (some test runners, nohup) passes SIG_IGN on to us
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:  # a signal that arrives while we announce the URL still stops us cleanly
        bound_port = server.server_address[1]
        shown_host = f"[{host}]" if ":" in host else host
        if host not in ("127.0.0.1", "localhost", "::1"):
            say(f"warning: listening on {host}: anyone who can reach this machine can read the study "
                f"(the dashboard has no login)")
        say(f"optuna-dashboard on {mask_url(url)} (read-only) at http://{shown_host}:{bound_port}{path}  "
            f"(Ctrl-C to stop)")
        server.serve_forever(poll_interval=0.2)
    except (KeyboardInterrupt, _Stop):
        pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        server.server_close()
        storage.engine.dispose()
    say("dashboard stopped")
    return 0
