"""`bench record`: every network of a finite space trained once (and a second seed), one row per rung."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from searchsr.record import COLUMNS, read_table
from searchsr.replay import load_table


def _record(tmp: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "searchsr.cli", "bench", "record", "--space",
                           str(tmp / "space.yaml"), "--schedule", "smoke", "--rungs", "1,2", "--out",
                           str(tmp / "t.csv"), "--repeat", "1", "--latency-runs", "2", *extra],
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_record_trains_each_network_once_resumes_and_feeds_the_replay(tmp_path: Path) -> None:
    (tmp_path / "space.yaml").write_text("params:\n  nf: {int: [8, 16], step: 8}\n  n_blocks: 1\n")
    out = _record(tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = read_table(tmp_path / "t.csv")
    # 2 networks at seed 0, the first again at seed 1; rungs 1 and 2 and the end (4)
    assert sorted((r["nf"], r["seed"], r["step"]) for r in rows) == sorted(
        (nf, seed, step) for nf, seed in (("8", "0"), ("16", "0"), ("8", "1")) for step in ("1", "2", "4"))
    assert all(float(r["psnr"]) > 10 and float(r["train_seconds"]) > 0 for r in rows)
    by_step = {(r["nf"], r["seed"]): [] for r in rows}
    for r in rows:
        by_step[(r["nf"], r["seed"])].append(float(r["train_seconds"]))
    assert all(seconds == sorted(seconds) for seconds in by_step.values())  # cumulative
    table = load_table(tmp_path / "t.csv")
    assert len(table.entries) == 2 and table.rungs == (1, 2) and table.noise["pairs"] == 1

    again = _record(tmp_path)  # resumable: nothing left to train
    assert again.returncode == 0 and "0 to train" in again.stderr and len(read_table(tmp_path / "t.csv")) == 9
    other = _record(tmp_path, "--schedule", "short")
    assert other.returncode == 2 and "one table, one schedule" in other.stderr

    search = subprocess.run([sys.executable, "-m", "searchsr.cli", "bench", "search", "--table",
                             str(tmp_path / "t.csv"), "--space", str(tmp_path / "space.yaml"), "--methods",
                             "random", "--seeds", "2", "--budget", "1", "--json"],
                            capture_output=True, text=True, timeout=300)
    assert search.returncode == 0, search.stderr[-2000:]
    assert json.loads(search.stdout)["random"]["seeds"] == 2


def test_record_refuses_what_it_must_not_touch(tmp_path: Path) -> None:
    (tmp_path / "space.yaml").write_text("params:\n  nf: {int: [8, 16], step: 8}\n  n_blocks: 1\n")
    (tmp_path / "t.csv").write_text("a,b\n1,2\n")  # a user's CSV, not a table: never appended to
    out = _record(tmp_path)
    assert out.returncode == 2 and "not a recorded table" in out.stderr
    assert (tmp_path / "t.csv").read_text() == "a,b\n1,2\n"
    (tmp_path / "t.csv").unlink()
    for bad, message in ((["--rungs", "3,1"], "--rungs must be increasing"), (["--rungs", "x"], "--rungs must be"),
                         (["--space", "mbv3_sr"], "bench record trains every one")):
        out = _record(tmp_path, *bad)
        assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr, out.stderr
        assert not (tmp_path / "t.csv").exists()
    assert COLUMNS[-1] == "schedule"
