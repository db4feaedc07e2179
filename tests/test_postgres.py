"""A real PostgreSQL storage, and the races of several drivers sharing one study (SQLite checked too).

Needs ``SEARCHSR_TEST_POSTGRES`` = a ``postgresql+psycopg://user:password@host:port/db`` URL of a scratch
database (``.ci/run`` starts a local server and sets it); without it the PostgreSQL tests skip, unless
``CI_REQUIRE_POSTGRES=1`` says the server must be there: then they fail, since a skip in CI proves nothing.
Every test works on its own study (or schema), named by a uuid, and removes it afterwards.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from optuna.trial import TrialState
from sqlalchemy.engine import make_url

from searchsr.objectives import parse_objectives
from searchsr.space import load_space
from searchsr import internals
from searchsr.storage import load_study, open_storage
from searchsr.study import enqueue_presets, prepare_study

ROOT = Path(__file__).resolve().parents[1]
OBJECTIVES = parse_objectives("psnr,latency")
pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")


@pytest.fixture
def pg_url() -> str:
    """The scratch database; where CI promised one (CI_REQUIRE_POSTGRES=1), its absence is an error."""
    url = os.environ.get("SEARCHSR_TEST_POSTGRES")
    if not url:
        if os.environ.get("CI_REQUIRE_POSTGRES") == "1":
            pytest.fail("CI_REQUIRE_POSTGRES=1 but SEARCHSR_TEST_POSTGRES is not set: no PostgreSQL to test")
        pytest.skip("SEARCHSR_TEST_POSTGRES not set (a postgresql+psycopg:// URL of a scratch database)")
    assert make_url(url).password, "SEARCHSR_TEST_POSTGRES needs a password: the tests check it is never shown"
    return url


@pytest.fixture
def pg_study(pg_url: str) -> Iterator[str]:
    """A study name of its own, deleted afterwards so that reruns start clean."""
    name = f"pgtest-{uuid.uuid4().hex[:12]}"
    yield name
    storage = open_storage(pg_url)
    try:
        optuna.delete_study(study_name=name, storage=storage)
    except KeyError:  # the test failed before creating it
        pass
    storage.engine.dispose()


@pytest.fixture
def fresh_pg_url(pg_url: str) -> Iterator[str]:
    """The PostgreSQL URL, pointed at a new empty schema (dropped afterwards): a never-used storage."""
    schema = f"pgtest_{uuid.uuid4().hex[:12]}"
    engine = sqlalchemy.create_engine(pg_url, poolclass=sqlalchemy.pool.NullPool)
    with engine.begin() as con:
        con.execute(sqlalchemy.text(f"CREATE SCHEMA {schema}"))
    url = make_url(pg_url).update_query_dict({"options": f"-csearch_path={schema}"})
    yield url.render_as_string(hide_password=False)
    with engine.begin() as con:
        con.execute(sqlalchemy.text(f"DROP SCHEMA {schema} CASCADE"))
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def fresh_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A never-used storage of each backend."""
    return f"sqlite:///{tmp_path}/s.db" if request.param == "sqlite" else request.getfixturevalue("fresh_pg_url")


def _at_once(n: int, work: Callable[[], None]) -> list[BaseException]:
    """Run ``work`` in n threads released together (each opens its own storage: separate connections,
    as separate drivers have); the errors they raised."""
    barrier, errors = threading.Barrier(n), []

    def run() -> None:
        try:
            barrier.wait(timeout=60)
            work()
        except BaseException as err:  # reported to the test, not lost in the thread
            errors.append(err)

    threads = [threading.Thread(target=run) for _ in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return errors


def test_drivers_opening_a_new_storage_at_once_all_succeed(fresh_url: str) -> None:
    assert _at_once(4, lambda: open_storage(fresh_url).engine.dispose()) == []


def test_drivers_starting_at_once_enqueue_each_preset_once(fresh_url: str) -> None:
    space = load_space(ROOT / "spaces" / "tiny.yaml")
    open_storage(fresh_url).engine.dispose()  # schema in place: this test is about the study
    queued: list[str] = []

    def driver() -> None:
        study = prepare_study("race", open_storage(fresh_url), OBJECTIVES, "random", 0, 2)
        queued.extend(enqueue_presets(study, space, ["xlite", "lite"]))

    assert _at_once(4, driver) == []
    trials = load_study("race", open_storage(fresh_url)).get_trials(deepcopy=False)
    assert sorted(queued) == ["lite", "xlite"]
    assert sorted(t.user_attrs["preset"] for t in trials) == ["lite", "xlite"]
    again = prepare_study("race", open_storage(fresh_url), OBJECTIVES, "random", 0, 2)
    assert enqueue_presets(again, space, ["xlite", "lite"]) == [] and len(again.trials) == 2


def test_drivers_starting_at_once_draw_from_different_seeds(fresh_url: str) -> None:
    """They see the same number of trials so far; the same seed would make them sample the same networks."""
    open_storage(fresh_url).engine.dispose()
    draws: list[int] = []

    def driver() -> None:
        study = prepare_study("seeds", open_storage(fresh_url), OBJECTIVES, "random", 0, 2)
        draws.append(study.ask().suggest_int("x", 0, 2**30))

    assert _at_once(4, driver) == []
    assert len(set(draws)) == 4


def test_a_second_driver_leaves_live_trials_alone(fresh_url: str) -> None:
    """Starting a driver fails only trials whose heartbeat stopped, never another live driver's."""
    first = prepare_study("live", open_storage(fresh_url), OBJECTIVES, "random", 0, 2)
    trial = first.ask()
    internals.study_storage(first).record_heartbeat(internals.trial_id(trial))
    second = prepare_study("live", open_storage(fresh_url), OBJECTIVES, "random", 0, 2)
    assert [t.state for t in second.get_trials(deepcopy=False)] == [TrialState.RUNNING]


def _run(url: str, study: str, runs: Path, trials: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "searchsr.cli", "run", "--space", str(ROOT / "spaces" / "tiny.yaml"),
            "--schedule", "smoke", "--trials", str(trials), "--storage", url, "--runs-dir", str(runs),
            "--study", study, "--latency-runs", "2", "--sampler", "random", "--objectives", "psnr,latency", *extra]


def _assert_secret_kept(password: str, *outputs: str, runs: Path | None = None) -> None:
    """The password shows up neither on the terminal nor in anything written under the runs folder
    (checked through booleans: pytest's report of a failed ``in`` would print the password itself)."""
    printed = any(password in text for text in outputs)
    assert not printed, "the storage password was printed"
    written = [path for path in (runs.rglob("*") if runs else ()) if path.is_file()
               and password.encode() in path.read_bytes()]
    assert not written, f"the storage password was written to {written}"


@pytest.mark.slow
def test_run_on_postgres(pg_url: str, pg_study: str, tmp_path: Path) -> None:
    out = subprocess.run(_run(pg_url, pg_study, tmp_path / "runs", 2), capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"Pareto front of study '{pg_study}'" in out.stdout and ":***@" in out.stderr
    _assert_secret_kept(make_url(pg_url).password, out.stdout, out.stderr, runs=tmp_path / "runs")
    trials = load_study(pg_study, open_storage(pg_url)).get_trials(deepcopy=False)
    assert len(trials) == 2 and all(t.state == TrialState.COMPLETE for t in trials)
    assert [t.user_attrs.get("preset") for t in trials].count("xlite") == 1
    for trial in trials:
        assert trial.values == [trial.user_attrs["psnr"], trial.user_attrs["latency_ms"]]


@pytest.mark.slow
def test_two_drivers_share_one_postgres_study(pg_url: str, pg_study: str, tmp_path: Path) -> None:
    drivers = [subprocess.Popen(_run(pg_url, pg_study, tmp_path / f"runs{i}", 2, "--concurrency", "1"),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in (0, 1)]
    outputs = [driver.communicate(timeout=600) for driver in drivers]
    for driver, (stdout, stderr) in zip(drivers, outputs):
        assert driver.returncode == 0, stderr[-2000:]
        _assert_secret_kept(make_url(pg_url).password, stdout, stderr)
    for i in (0, 1):
        _assert_secret_kept(make_url(pg_url).password, runs=tmp_path / f"runs{i}")
    trials = load_study(pg_study, open_storage(pg_url)).get_trials(deepcopy=False)
    assert len(trials) == 4 and sorted(t.number for t in trials) == [0, 1, 2, 3]
    assert all(t.state == TrialState.COMPLETE and "fail_reason" not in t.user_attrs for t in trials)
    assert [t.user_attrs.get("preset") for t in trials].count("xlite") == 1  # enqueued by one driver only
    by_driver = [{p.parent.name for p in (tmp_path / f"runs{i}" / pg_study).glob("trial_*/weights.safetensors")}
                 for i in (0, 1)]
    assert len(by_driver[0]) == len(by_driver[1]) == 2 and not by_driver[0] & by_driver[1]


def test_unreachable_postgres_is_one_masked_line(pg_url: str, tmp_path: Path) -> None:
    password = make_url(pg_url).password
    url = make_url(pg_url).set(host="127.0.0.1", port=1).render_as_string(hide_password=False)
    out = subprocess.run(_run(url, "unreachable", tmp_path / "runs", 1), capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "cannot open storage" in out.stderr and ":***@127.0.0.1:1/" in out.stderr
    _assert_secret_kept(password, out.stdout, out.stderr)
