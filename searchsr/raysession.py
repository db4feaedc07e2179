"""Ray plumbing shared by the search and retraining: a Ray session, the cost meter actor, and one
progress display over Tune trials.

* ``ray_session(address, verbose)`` joins ``address`` or starts a private local Ray (never
  silently a ``ray start`` cluster that happens to run on this machine), quietly unless
  ``verbose``, and shuts down only what it started.
* ``start_meter`` puts the driver's single ``CostMeter`` in an actor that runs one call at a time.
* ``TrialProgress`` replaces Ray's reporter: a bar plus one line per finished trial, and a stopper
  that ends the experiment after ``max_failures`` failed trials.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
from collections.abc import Callable, Iterator
from typing import Any, TextIO

import ray
from ray import tune
from tqdm import tqdm

from searchsr.errors import SearchsrError, Terminated, UsageError, first_line
from searchsr.meter import CostMeter


ADDRESS = re.compile(r"(ray://)?[\w.-]+:\d{1,5}")


def check_address(address: str | None) -> None:
    """``--address`` is host:port (or ray://host:port, auto, local): checked before anything is written."""
    if address and address not in ("auto", "local") and not ADDRESS.fullmatch(address):
        raise UsageError(f"--address must be HOST:PORT of a Ray head (e.g. 10.0.0.1:6379), got {address!r}")


def start_ray(address: str | None, verbose: bool) -> bool:
    """Join ``address`` or start a private local Ray, quietly unless ``verbose``; True if we started it."""
    if not verbose:
        os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
        for name in ("ray", "ray.tune", "ray.train", "ray.data"):
            logging.getLogger(name).setLevel(logging.CRITICAL)  # failures get our own one-liners
    if ray.is_initialized():
        return False
    # "local": without it Ray would silently join any cluster `ray start` left on this machine.
    try:
        ray.init(address=address or "local", include_dashboard=False, log_to_driver=verbose,
                 logging_level=logging.INFO if verbose else logging.ERROR, configure_logging=verbose)
    except ValueError as err:  # a malformed --address / $RAY_ADDRESS
        raise UsageError(f"--address {address}: {first_line(err)}") from None
    return True


@contextlib.contextmanager
def ray_session(address: str | None, verbose: bool) -> Iterator[None]:
    """Ray for the duration of a ``with`` block (shut down after it if this block started it)."""
    started = start_ray(address, verbose)
    try:
        yield
    finally:
        if started:
            ray.shutdown()


def cluster_cpus() -> int:
    return int(ray.cluster_resources().get("CPU", 1))


def cluster_gpus() -> float:
    return float(ray.cluster_resources().get("GPU", 0))


def check_resources(cpus_per_trial: int, gpus_per_trial: float) -> None:
    """One trial must fit on the cluster, or Ray would wait for it forever: a one-line UsageError
    naming what the cluster has."""
    cpus, gpus = cluster_cpus(), cluster_gpus()
    if gpus_per_trial > gpus or cpus_per_trial > cpus:
        raise UsageError(f"a trial asks for {cpus_per_trial} CPU(s) and {gpus_per_trial:g} GPU(s); the Ray cluster "
                         f"has {cpus} CPU(s) and {gpus:g} GPU(s) (searchsr does not wait for an autoscaler)")


def start_meter(threads: int, runs: int, resource: str | None = None, backend: str = "torch",
                command: str | None = None, command_timeout_s: float = 600.0, int8: bool = False) -> Any:
    """The driver's one ``CostMeter``, as an actor that runs one measurement at a time; on a node
    with the custom Ray ``resource`` where one is named (every driver of a study then times on the
    same kind of machine: give that resource to the nodes of one CPU type)."""
    options: dict[str, Any] = {"num_cpus": 0, "max_concurrency": 1}
    if resource:
        if not ray.cluster_resources().get(resource):
            raise UsageError(f"--meter-resource {resource}: no node of the Ray cluster has that resource "
                             "(ray start --resources '{\"%s\": 1}')" % resource)
        options["resources"] = {resource: 0.001}
    return ray.remote(**options)(CostMeter).remote(threads, runs, backend=backend, command=command,
                                                   command_timeout_s=command_timeout_s, int8=int8)


def meter_get(ref: Any) -> Any:
    """``ray.get`` of a ``CostMeter`` call; the meter's own errors (a ``--latency-cmd`` that failed) come
    out as themselves, one line, not as Ray's wrapper with the actor's traceback."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as err:
        if isinstance(err.cause, SearchsrError):
            raise err.cause from None
        raise


class Signals:
    terminated = False


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[Signals]:
    """SIGTERM (SLURM, Kubernetes, ``timeout``) handled like Ctrl-C: Ray Tune stops the running trials
    gracefully and the driver records what was kept (``.terminated`` tells the two apart). Without
    this, Ray's native handler prints a crash trace and leaves the running trials RUNNING."""
    import signal

    state = Signals()

    def on_term(signum: int, frame: Any) -> None:
        state.terminated = True
        os.kill(os.getpid(), signal.SIGINT)  # Tune's own Ctrl-C handling, or KeyboardInterrupt outside fit()

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield state
    except KeyboardInterrupt as err:
        if state.terminated and not isinstance(err, Terminated):
            raise Terminated(str(err) or "before any trial ran") from None
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)


class TrialProgress:
    """A progress bar over ``total`` Tune trials, with the line ``describe_done(trial)`` or
    ``describe_error(trial)`` printed as each one ends; ``callback`` and ``stopper`` go to Tune's
    RunConfig."""

    def __init__(self, total: int, unit: str, describe_done: Callable[[Any], str],
                 describe_error: Callable[[Any], str], max_failures: int = 0, lines: TextIO = sys.stdout) -> None:
        self.bar = tqdm(total=total, unit=unit, dynamic_ncols=True, file=sys.stderr)
        self.lines = lines  # where the per-trial lines go (the bar is on stderr)
        self.failures = 0
        self.max_failures = max_failures
        self.callback = _Callback(self, describe_done, describe_error)
        self.stopper = _FailureStopper(self)

    @property
    def finished(self) -> int:
        """Trials that ended, completed or failed."""
        return self.bar.n

    def too_many_failures(self) -> bool:
        return bool(self.max_failures) and self.failures >= self.max_failures

    def close(self) -> None:
        self.bar.close()


class _Callback(tune.Callback):
    def __init__(self, progress: TrialProgress, describe_done: Callable[[Any], str],
                 describe_error: Callable[[Any], str]) -> None:
        self.progress, self.describe_done, self.describe_error = progress, describe_done, describe_error

    def __getstate__(self) -> dict:  # Tune pickles callbacks; the bar stays with the driver
        return {}

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.progress.bar.write(self.describe_done(trial), file=self.progress.lines)
        self.progress.bar.update()

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.progress.failures += 1
        self.progress.bar.write(self.describe_error(trial), file=self.progress.lines)
        self.progress.bar.update()


class _FailureStopper(tune.Stopper):
    def __init__(self, progress: TrialProgress) -> None:
        self.progress = progress

    def __getstate__(self) -> dict:
        return {}

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False

    def stop_all(self) -> bool:
        return getattr(self, "progress", None) is not None and self.progress.too_many_failures()
