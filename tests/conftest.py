"""Shared test fixtures: the paper's tables and the benchmark images live outside the repo."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from optuna.trial import TrialState

SHARED = Path(__file__).resolve().parents[2] / "shared"

# The machine's image cache (searchsr.imagecache) of this test session, inherited by every process
# the tests start (CLI runs, Ray workers): tests neither read a user's cache nor leave theirs there.
os.environ.setdefault("SEARCHSR_CACHE", tempfile.mkdtemp(prefix="searchsr-test-cache-"))


def read_paper_table(name: str) -> list[dict[str, str]]:
    """Rows of ``../shared/paper/<name>``; skips the test where the file is absent."""
    path = SHARED / "paper" / name
    if not path.is_file():
        pytest.skip(f"{path} not present")
    lines = [line for line in path.read_text().splitlines() if line and not line.startswith("#")]
    return list(csv.DictReader(lines))


def shared_data(name: str) -> Path:
    """``../shared/data/<name>``; skips the test where the folder is absent."""
    path = SHARED / "data" / name
    if not path.is_dir():
        pytest.skip(f"{path} not present")
    return path


def session_processes(session: int) -> dict[int, bytes]:
    """Pid -> command line of every live process in a session (a driver started with
    ``start_new_session`` and all it spawned, its local Ray included), read from /proc."""
    found = {}
    for proc in Path("/proc").iterdir():
        try:
            if int((proc / "stat").read_text().rsplit(")", 1)[1].split()[3]) == session:
                found[int(proc.name)] = (proc / "cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue
    return found


def wait_mid_study(states: Callable[[], list[Any]], driver: subprocess.Popen, seconds: float = 240) -> None:
    """Wait until a study has completed and running trials at once (the moment a crash hurts most);
    ``states`` reads the trial states (an empty list while the study does not exist yet). On timeout
    the driver (and its session, if it leads one) is killed and the test fails."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = states()
        if TrialState.COMPLETE in found and TrialState.RUNNING in found:
            return
        time.sleep(0.3)
    try:
        os.killpg(driver.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        driver.kill()
    pytest.fail("the study never had completed and running trials at once")
