"""The one place a search measures costs: ``CostMeter``, run as a single Ray actor per driver.

One yardstick per study: latency is measured as a ratio to XLITE timed alongside, and reported as
that ratio times the study's *stored* XLITE time (``searchsr.study`` keeps it, with the host and
threads it was timed on), so every run, rerun and driver of a study expresses latency in the same
milliseconds; the meter's own XLITE time of the day is recorded too (``xlite_ms_measured``).

Latency is timed on the study's runtime (``--latency-backend``: ``searchsr.runtimes``), XLITE on the
same runtime; every result records the runtime, its version, threads and precision.

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
from searchsr.runtimes import runner, runtime_info

LATENCY_SIZE = (128, 128)  # LR input for search-time latency; `searchsr profile` does any size
COST_SIZE = (256, 256)  # the paper's convention for FLOPs and activations
RATIO_HALF_WIDTH = 0.02  # timing rounds repeat until the ratio's 95% CI is within +-2% (or cost.stable_ratio's cap)


class CostMeter:
    """Costs of an architecture: counted ones and latency relative to XLITE timed alongside."""

    def __init__(self, threads: int, runs: int, lr_size: tuple[int, int] = LATENCY_SIZE,
                 rel_half_width: float = RATIO_HALF_WIDTH, backend: str = "torch") -> None:
        self.threads, self.runs, self.lr_size, self.rel_half_width = threads, runs, lr_size, rel_half_width
        self.backend, self.runtime = backend, runtime_info(backend, threads)
        self.reference = runner(build_model(PRESETS["xlite"]), PRESETS["xlite"], backend, threads)
        (stats,) = measure_latency([self.reference], lr_size, runs=3 * runs, threads=threads)
        self.reference_ms = stats.median_ms  # this meter's XLITE, today
        self.yardstick_ms = stats.median_ms  # the study's XLITE: set by the driver (use_yardstick)
        self.host = socket.gethostname()

    def own_yardstick(self) -> dict[str, Any]:
        """This meter's own XLITE timing: what a new study stores as its yardstick."""
        return {"xlite_ms": self.reference_ms, "host": self.host, "threads": self.threads, "backend": self.backend,
                "lr_size": size_text(self.lr_size), "measured": datetime.datetime.now(datetime.timezone.utc)
                .isoformat(timespec="seconds")}

    def use_yardstick(self, xlite_ms: float) -> None:
        self.yardstick_ms = float(xlite_ms)

    def measure(self, arch: dict[str, Any]) -> dict[str, Any]:
        cfg = arch_from_dict(arch)
        model = build_model(cfg)
        cost = count_cost(model, COST_SIZE)
        fused = prepare_for_timing(model)
        est = stable_ratio(runner(model, cfg, self.backend, self.threads), self.reference, lr_size=self.lr_size,
                           runs=self.runs, threads=self.threads, rel_half_width=self.rel_half_width)
        ratio, own = est.ratio, est.own
        latency_ms = ratio * self.yardstick_ms
        return {"flops": cost.flops, "macs": cost.macs, "params": cost.params, "activations": cost.activations,
                "memory": peak_memory_bytes(fused, self.lr_size), "latency_ratio": ratio,
                "latency_ms": latency_ms, "latency_iqr_ms": own.iqr_ms / own.median_ms * latency_ms,
                "xlite_ms": self.yardstick_ms, "xlite_ms_measured": self.reference_ms, "latency_host": self.host,
                "latency_threads": self.threads, "latency_lr_size": size_text(self.lr_size),
                "cost_lr_size": size_text(COST_SIZE), "latency_ratio_ci_low": est.ci_low,
                "latency_ratio_ci_high": est.ci_high, "latency_ratio_converged": est.converged,
                "latency_rounds": est.rounds, "latency_ratio_bound": self.rel_half_width,
                "latency_backend": self.backend, "latency_runtime": self.runtime.runtime,
                "latency_runtime_version": self.runtime.version, "latency_precision": self.runtime.precision}


def size_text(size: tuple[int, int]) -> str:
    """An LR input size as users read it: ``128x128``."""
    return f"{size[0]}x{size[1]}"
