"""`searchsr dashboard`: served over HTTP on loopback, read-only, harmless to a search writing the study."""

from __future__ import annotations

import json
import select
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from wsgiref.util import setup_testing_defaults

import optuna
import pytest
from optuna.distributions import IntDistribution
from optuna.trial import create_trial

from searchsr.cli import main
from searchsr.dashboard import ReadOnlyStorage, infer_metric_names, name_objectives


def make_study(url: str, name: str, n: int, names: bool = True) -> optuna.Study:
    study = optuna.create_study(study_name=name, storage=url, directions=["maximize", "minimize"])
    if names:
        study.set_metric_names(["psnr", "latency"])
    for i in range(n):
        psnr, latency = 20.0 + i, 10.0 + 3 * i
        study.add_trial(create_trial(values=[psnr, latency], params={"nf": 8 + 8 * (i % 2)},
                                     distributions={"nf": IntDistribution(8, 16, step=8)},
                                     user_attrs={"psnr": psnr, "latency_ms": latency, "flops": 1e9 * (i + 1),
                                                 "arch": {"nf": 8 + 8 * (i % 2)}}))
    return study


def get(url: str, timeout: float = 15) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def start_dashboard(*args: str) -> tuple[subprocess.Popen, str, str]:
    """Run `searchsr dashboard --port 0 ...`; returns the process, the server's base URL and the page path."""
    proc = subprocess.Popen([sys.executable, "-m", "searchsr.cli", "dashboard", "--port", "0", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline, seen = time.monotonic() + 60, []
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.5)
        if ready:
            line = proc.stdout.readline()
            if not line:
                break
            seen.append(line)
            if " at http://" in line:
                url = line.split(" at ", 1)[1].split()[0]
                base, path = url.split("/dashboard", 1)
                return proc, base, "/dashboard" + path
    proc.kill()
    raise AssertionError(f"dashboard did not start: {''.join(seen)}{proc.stdout.read()}")


def stop(proc: subprocess.Popen, sig: int) -> str:
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=90)  # generous: CI machines are loaded; a hang still fails
    assert proc.returncode == 0, out
    return out


def test_dashboard_serves_the_study_over_http(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    make_study(url, "tiny", 5)
    make_study(url, "other", 2)
    proc, base, path = start_dashboard("--study", "tiny", "--storage", url)
    try:
        assert base.startswith("http://127.0.0.1:")
        status, body = get(base + "/api/studies")
        assert status == 200
        studies = {s["study_name"]: s for s in json.loads(body)["study_summaries"]}
        assert set(studies) == {"tiny", "other"} and path == f"/dashboard/studies/{studies['tiny']['study_id']}"
        status, body = get(f"{base}/api/studies/{studies['tiny']['study_id']}")
        detail = json.loads(body)
        assert status == 200 and detail["name"] == "tiny" and detail["objective_names"] == ["psnr", "latency"]
        assert len(detail["trials"]) == 5 and len(detail["best_trials"]) == 5  # all on the front here
        assert detail["trials"][2]["values"] == [22.0, 16.0]
        status, page = get(base + path)
        assert status == 200 and b"<title>Optuna Dashboard</title>" in page
        # the dashboard's connection cannot write: creating a study through its API fails, the file is untouched
        request = urllib.request.Request(base + "/api/studies", method="POST", headers={"Content-Type": "application/json"},
                                         data=json.dumps({"study_name": "x", "directions": ["minimize"]}).encode())
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(request, timeout=15)
        assert {s.study_name for s in optuna.get_all_study_summaries(url)} == {"tiny", "other"}
    finally:
        if proc.poll() is None:
            out = stop(proc, signal.SIGINT)
    assert "dashboard stopped" in out and "Traceback" not in out.split("dashboard stopped")[-1]


def test_dashboard_runs_only_selects(tmp_path: Path) -> None:
    """What keeps the search's commits unblocked: no write, and no transaction held open between reads
    (pysqlite emits BEGIN only before a write; the trace would show it)."""
    import sqlalchemy
    from optuna_dashboard import wsgi

    url = f"sqlite:///{tmp_path / 's.db'}"
    make_study(url, "tiny", 5)
    storage = ReadOnlyStorage(url)
    statements: list[str] = []
    sqlalchemy.event.listen(storage.engine, "connect",
                            lambda dbapi_conn, _record: dbapi_conn.set_trace_callback(statements.append))
    storage.engine.dispose()  # connections made from now on are traced
    app = wsgi(storage)
    for path in ("/api/studies", "/api/studies/1", "/api/studies/1/param_importances", "/dashboard/studies/1"):
        environ: dict = {}
        setup_testing_defaults(environ)
        environ["PATH_INFO"] = path
        status: list[str] = []
        b"".join(app(environ, lambda s, _headers, _exc=None: status.append(s)))
        assert status == ["200 OK"], path
    assert statements and {s.split()[0].upper() for s in statements} <= {"SELECT", "PRAGMA"}
    with pytest.raises(optuna.exceptions.StorageInternalError):  # and writing is refused outright
        storage.set_study_user_attr(1, "x", 1)


def test_objective_names_inferred_for_an_older_study(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    study = make_study(url, "old", 3, names=False)
    assert infer_metric_names(study.directions, study.trials) == ["psnr", "latency"]
    assert infer_metric_names(study.directions, []) is None
    storage = ReadOnlyStorage(url)
    frozen = storage.get_all_studies()
    assert name_objectives(url, storage, frozen, save=False) == ["study 'old': objective names inferred as psnr,latency"]
    assert storage.get_all_studies()[0].system_attrs["study:metric_names"] == ["psnr", "latency"]  # shown
    assert optuna.load_study(study_name="old", storage=url).metric_names is None  # not written
    messages = name_objectives(url, ReadOnlyStorage(url), frozen)
    assert messages == ["study 'old': saved objective names psnr,latency"]
    assert optuna.load_study(study_name="old", storage=url).metric_names == ["psnr", "latency"]


def test_dashboard_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    make_study(url, "tiny", 1)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cases = ((["--study", "nope", "--storage", url], "no study named 'nope'"),
                 (["--storage", f"sqlite:///{tmp_path / 'missing.db'}"], "no SQLite database at"),
                 (["--storage", "postgresql://user:secret@127.0.0.1:1/db"], "cannot open storage"),
                 (["--storage", url, "--port", str(port)], f"cannot listen on 127.0.0.1:{port}"))
        for args, message in cases:
            assert main(["dashboard", *args]) == 2
            err = capsys.readouterr().err
            assert err.startswith("searchsr: error: ") and message in err and err.count("\n") == 1, err
            assert "secret" not in err


WRITER = textwrap.dedent("""
    import sys, time, warnings
    import optuna
    from searchsr.storage import open_storage  # the search's own storage settings (busy timeout included)
    warnings.simplefilter("ignore")
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.load_study(study_name="live", storage=open_storage(sys.argv[1]),
                              sampler=optuna.samplers.RandomSampler(seed=0))
    sys.stdin.readline()  # start writing once the dashboard is being read
    start = time.time()
    for i in range(int(sys.argv[2])):
        trial = study.ask()
        nf = trial.suggest_int("nf", 8, 72, step=8)
        for key in ("psnr", "latency_ms", "flops", "params"):  # one commit each, as record_trial does
            trial.set_user_attr(key, float(nf + i))
        study.tell(trial, [float(nf), float(i)])
        time.sleep(0.3)  # a search writes every few seconds, not in a tight loop: leave readers gaps
    print("wrote", len(study.trials), start, time.time())
""")


def test_reading_while_a_search_writes(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'live.db'}"
    make_study(url, "live", 30)
    n_old, n_new = 30, 15
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    writer = subprocess.Popen([sys.executable, str(script), url, str(n_new)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc, base, path = start_dashboard("--study", "live", "--storage", url)  # both start up side by side
    study_api = base + "/api/studies/" + path.rsplit("/", 1)[1]
    counts, reads, errors, done = [], [], [], threading.Event()

    def reader() -> None:
        while not done.is_set():
            for target in (study_api, base + "/api/studies", study_api + "/param_importances"):
                status, body = get(target)
                reads.append(time.time())
                if status != 200:
                    errors.append((target, status, body[:200]))
                elif target == study_api:
                    counts.append(len(json.loads(body)["trials"]))

    readers = [threading.Thread(target=reader) for _ in range(3)]
    try:
        for thread in readers:
            thread.start()
        out, err = writer.communicate("go\n", timeout=120)
        deadline = time.monotonic() + 15  # the dashboard caches trials for 2 s: wait for the final count
        while time.monotonic() < deadline and not (counts and counts[-1] == n_old + n_new):
            time.sleep(0.2)
    finally:
        done.set()
        for thread in readers:
            thread.join(timeout=30)
        if writer.poll() is None:
            writer.kill()
        log = stop(proc, signal.SIGTERM)
    assert writer.returncode == 0 and "locked" not in err, err[-2000:]
    word, total, start, end = out.split()
    assert (word, int(total)) == ("wrote", n_old + n_new)
    assert errors == [], errors[:3]
    assert counts[-1] == n_old + n_new
    during = [t for t in reads if float(start) <= t <= float(end)]
    assert len(during) >= 5, (len(reads), float(end) - float(start))  # reads really overlapped the writes
    assert "dashboard stopped" in log


def test_dashboard_stops_on_sigint_even_when_started_with_sigint_ignored(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ign.db'}"
    optuna.create_study(storage=url, study_name="ign")
    proc = subprocess.Popen([sys.executable, "-m", "searchsr.cli", "dashboard", "--port", "0", "--study", "ign",
                             "--storage", url], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    for line in proc.stdout:
        if "http://" in line:
            break
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 0
