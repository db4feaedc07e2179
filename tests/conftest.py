"""Shared test fixtures: the paper's tables and the benchmark images live outside the repo."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"


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
