"""The one place a search measures costs: ``CostMeter``, run as a single Ray actor per driver.

One yardstick per study: latency is measured as a ratio to XLITE timed alongside, and reported as
that ratio times the study's *stored* XLITE time (``searchsr.study`` keeps it, with the host and
threads it was timed on), so every run, rerun and driver of a study expresses latency in the same
milliseconds; the meter's own XLITE time of the day is recorded too (``xlite_ms_measured``).

Latency is timed on the study's runtime (``--latency-backend``: ``searchsr.runtimes``), XLITE on the
same runtime; every result records the runtime, its version, threads and precision. With ``--int8`` each
network is timed a second time quantized, against the same FP32 XLITE (``latency_int8_ms``). The meter
remembers what it measured (a trial of the same architecture running alongside is not timed again); the
study keeps every measurement across runs and drivers (``searchsr.costcache``).

Calls are serialized (``max_concurrency=1``: no two timings overlap) at normal CPU priority while
trials train at nice 19 (the kernel hands the meter the CPU it needs); each measurement
interleaves the candidate with XLITE to cancel what load remains (memory bandwidth), and
``latency_ms`` is that ratio times the yardstick. Params, FLOPs, activations and memory are counted
on the same network; latency and memory at ``LATENCY_SIZE``, FLOPs and activations at ``COST_SIZE``
(the paper's convention), and every result says which.
"""

from __future__ import annotations

import datetime
import socket
from typing import Any

from searchsr.arch import build_model
from searchsr.config import PRESETS, arch_from_dict
from searchsr.cost import count_cost, measure_latency, peak_memory_bytes, prepare_for_timing, stable_ratio
from searchsr.defaults import LATENCY_TIMEOUT_S
from searchsr.latencycmd import LatencyCommandFailed
from searchsr.runtimes import command_latency, runner, runtime_info

LATENCY_SIZE = (128, 128)  # LR input for search-time latency; `searchsr profile` does any size
COST_SIZE = (256, 256)  # the paper's convention for FLOPs and activations
RATIO_HALF_WIDTH = 0.02  # timing rounds repeat until the ratio's 95% CI is within +-2% (or cost.stable_ratio's cap)


class CostMeter:
    """Costs of an architecture: counted ones and latency relative to XLITE timed alongside."""

    def __init__(self, threads: int, runs: int, lr_size: tuple[int, int] = LATENCY_SIZE,
                 rel_half_width: float = RATIO_HALF_WIDTH, backend: str = "torch", command: str | None = None,
                 command_timeout_s: float = LATENCY_TIMEOUT_S, int8: bool = False) -> None:
        self.threads, self.runs, self.lr_size, self.rel_half_width = threads, runs, lr_size, rel_half_width
        self.int8 = int8  # also time each network quantized (``--int8``: latency_int8_ms)
        self.backend, self.command, self.command_timeout_s = backend, command, command_timeout_s
        xlite = PRESETS["xlite"]
        self.failed: LatencyCommandFailed | None = None  # raised by every call (an actor's constructor cannot say)
        if backend == "command":  # the device is elsewhere: XLITE once, by the same command
            try:
                self.reference_ms, details = command_latency(build_model(xlite), xlite, command, command_timeout_s,
                                                             lr_size)
            except LatencyCommandFailed as err:
                self.failed, self.reference_ms, details = LatencyCommandFailed(f"on XLITE: {err.reason}"), 1.0, {}
            self.runtime = runtime_info(backend, threads, details)
        else:
            self.runtime = runtime_info(backend, threads)
            self.reference = runner(build_model(xlite), xlite, backend, threads, lr_size)
            (stats,) = measure_latency([self.reference], lr_size, runs=3 * runs, threads=threads)
            self.reference_ms = stats.median_ms  # this meter's XLITE, today
        self.yardstick_ms = self.reference_ms  # the study's XLITE: set by the driver (use_yardstick)
        self.host = socket.gethostname()
        self.measured: dict[str, dict[str, Any]] = {}  # what this meter measured, by architecture

    def scope(self) -> dict[str, Any]:
        """What a measurement depends on besides the architecture (``searchsr.costcache``'s key)."""
        if self.failed:
            raise self.failed
        return {**self.runtime.to_dict(), "lr_size": size_text(self.lr_size), "cost_lr_size": size_text(COST_SIZE),
                "command": self.command, "int8": self.int8}

    def own_yardstick(self) -> dict[str, Any]:
        """This meter's own XLITE timing: what a new study stores as its yardstick."""
        if self.failed:
            raise self.failed
        return {"xlite_ms": self.reference_ms, "host": self.host, "threads": self.threads, "backend": self.backend,
                "lr_size": size_text(self.lr_size), "measured": datetime.datetime.now(datetime.timezone.utc)
                .isoformat(timespec="seconds")}

    def use_yardstick(self, xlite_ms: float) -> None:
        self.yardstick_ms = float(xlite_ms)

    def measure(self, arch: dict[str, Any], latency: bool = True) -> dict[str, Any]:
        """The architecture's costs, latency included unless ``latency`` is False (a trial whose latency is
        predicted: ``searchsr.latencypolicy``); one measured before (a trial of it running alongside) is
        not timed again."""
        if self.failed:
            raise self.failed
        cfg = arch_from_dict(arch)
        if not latency:
            return self._counts(build_model(cfg))
        earlier = self.measured.get(cfg.to_json())
        if earlier is not None:
            return {**earlier, "latency_cached": True}
        model = build_model(cfg)
        result = {**self._counts(model), **self._latency(model, cfg)}
        if self.int8:
            int8 = self._latency(model, cfg, int8=True)
            result.update(latency_int8_ms=int8["latency_ms"], latency_int8_ratio=int8["latency_ratio"])
        self.measured[cfg.to_json()] = result
        return result

    def _counts(self, model: Any) -> dict[str, Any]:
        """What is counted, not timed: params, FLOPs, activations, memory, and where latency is timed."""
        cost = count_cost(model, COST_SIZE)
        return {"flops": cost.flops, "macs": cost.macs, "params": cost.params, "activations": cost.activations,
                "memory": peak_memory_bytes(prepare_for_timing(model), self.lr_size), "xlite_ms": self.yardstick_ms,
                "latency_threads": self.runtime.threads, "latency_lr_size": size_text(self.lr_size),
                "cost_lr_size": size_text(COST_SIZE), "latency_backend": self.backend,
                "latency_runtime": self.runtime.runtime, "latency_runtime_version": self.runtime.version,
                "latency_precision": self.runtime.precision}

    def _latency(self, model: Any, cfg: Any, int8: bool = False) -> dict[str, Any]:
        """The network's latency (``int8``: quantized as it ships in INT8) as its ratio to XLITE (FP32) timed
        alongside on the same runtime, times the study's yardstick."""
        if self.backend == "command":
            ms, details = command_latency(model, cfg, self.command, self.command_timeout_s, self.lr_size, int8)
            ratio, rel_iqr = ms / self.reference_ms, float(details.get("iqr_ms", 0) or 0) / ms
            interval, converged, rounds = (ratio, ratio), True, 1  # one run of the command: its own median
        else:
            est = stable_ratio(runner(model, cfg, self.backend, self.threads, self.lr_size, int8), self.reference,
                               lr_size=self.lr_size, runs=self.runs, threads=self.threads,
                               rel_half_width=self.rel_half_width)
            ratio, rel_iqr = est.ratio, est.own.iqr_ms / est.own.median_ms
            interval, converged, rounds = (est.ci_low, est.ci_high), est.converged, est.rounds
        latency_ms = ratio * self.yardstick_ms
        return {"latency_ratio": ratio, "latency_ms": latency_ms, "latency_iqr_ms": rel_iqr * latency_ms,
                "xlite_ms_measured": self.reference_ms, "latency_host": self.host,
                "latency_ratio_ci_low": interval[0], "latency_ratio_ci_high": interval[1],
                "latency_ratio_converged": converged, "latency_rounds": rounds,
                "latency_ratio_bound": self.rel_half_width, "latency_source": "measured", "latency_cached": False}


def size_text(size: tuple[int, int]) -> str:
    """An LR input size as users read it: ``128x128``."""
    return f"{size[0]}x{size[1]}"
