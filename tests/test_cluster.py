"""`searchsr run --address` on a real two-node Ray cluster (`ray start` head + worker on 127.0.0.1)."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest

from conftest import session_processes
from searchsr.storage import load_study, open_storage

ROOT = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).parent / "ray")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _alive_nodes(address: str, env: dict[str, str]) -> int:
    probe = ("import ray; ray.init(address=%r, logging_level='ERROR', log_to_driver=False); "
             "print(sum(n['Alive'] for n in ray.nodes()))" % address)
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, env=env)
    return int(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 and out.stdout.strip() else 0


def _stop(node: subprocess.Popen) -> None:
    """SIGTERM the blocking `ray start` (it stops its node's processes), then kill any stragglers."""
    os.killpg(node.pid, signal.SIGTERM)
    try:
        node.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass
    for pid in session_processes(node.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    node.wait(timeout=30)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """A head and a second worker node process, 1 CPU each, token-authenticated as a real cluster
    should be (Ray >= 2.59 demands it of `ray start`); yields the address and the environment a
    driver needs; stops only these two nodes afterwards (never `ray stop`, which kills every Ray)."""
    port = _free_port()
    address = f"127.0.0.1:{port}"
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    common = ["--num-cpus", "1", "--node-ip-address", "127.0.0.1", "--block", "--disable-usage-stats"]
    log = open(tmp_path / "ray.log", "w")
    nodes = [subprocess.Popen([RAY, "start", "--head", "--port", str(port), "--include-dashboard", "false",
                               *common], stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)]
    try:
        deadline = time.monotonic() + 120
        while _alive_nodes(address, env) < 1:
            assert time.monotonic() < deadline and nodes[0].poll() is None, (tmp_path / "ray.log").read_text()
            time.sleep(1)
        nodes.append(subprocess.Popen([RAY, "start", "--address", address, *common], stdout=log,
                                      stderr=subprocess.STDOUT, start_new_session=True, env=env))
        while _alive_nodes(address, env) < 2:
            assert time.monotonic() < deadline and nodes[1].poll() is None, (tmp_path / "ray.log").read_text()
            time.sleep(1)
        yield address, env
    finally:
        for node in reversed(nodes):
            _stop(node)
        log.close()


@pytest.mark.slow
def test_run_spreads_trials_over_both_nodes(cluster: tuple[str, dict[str, str]], tmp_path: Path) -> None:
    address, env = cluster
    storage = f"sqlite:///{tmp_path}/s.db"
    out = subprocess.run([sys.executable, "-m", "searchsr.cli", "run", "--address", address,
                          "--space", str(ROOT / "spaces" / "tiny.yaml"), "--schedule", "smoke", "--trials", "4",
                          "--concurrency", "2", "--storage", storage, "--runs-dir", str(tmp_path / "runs"),
                          "--study", "cluster", "--latency-runs", "2", "--sampler", "random", "--enqueue", ""],
                         capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    trials = load_study("cluster", open_storage(storage)).get_trials(deepcopy=False)
    assert len(trials) == 4 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert len({t.user_attrs["node_id"] for t in trials}) == 2
    assert _alive_nodes(address, env) == 2  # the driver left the cluster running, as it found it
