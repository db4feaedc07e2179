"""The one place a search measures costs: ``CostMeter``, run as a single Ray actor per driver.

Calls are serialized (``max_concurrency=1``: no two timings overlap) at normal CPU priority while
trials train at nice 19 (the kernel hands the meter the CPU it needs); each measurement
interleaves the candidate with XLITE to cancel what load remains (memory bandwidth), and
``latency_ms`` is that ratio times the XLITE median this meter measured at start (a fixed
yardstick). Params, FLOPs, activations and memory are counted on the same network.
"""

from __future__ import annotations

from typing import Any

from searchsr.arch import build_model
from searchsr.config import PRESETS, ArchConfig
from searchsr.cost import count_cost, latency_ratio, measure_latency, peak_memory_bytes, prepare_for_timing

LATENCY_SIZE = (128, 128)  # LR input for search-time latency; `searchsr profile` does any size
COST_SIZE = (256, 256)  # the paper's convention for FLOPs and activations


class CostMeter:
    """Costs of an architecture: counted ones and latency relative to XLITE timed alongside."""

    def __init__(self, threads: int, runs: int, lr_size: tuple[int, int] = LATENCY_SIZE) -> None:
        self.threads, self.runs, self.lr_size = threads, runs, lr_size
        self.reference = prepare_for_timing(build_model(PRESETS["xlite"]))
        (stats,) = measure_latency([self.reference], lr_size, runs=3 * runs, threads=threads)
        self.reference_ms = stats.median_ms

    def measure(self, arch: dict[str, Any]) -> dict[str, Any]:
        model = build_model(ArchConfig.from_dict(arch))
        cost = count_cost(model, COST_SIZE)
        fused = prepare_for_timing(model)
        ratio, own, _ = latency_ratio(fused, self.reference, lr_size=self.lr_size, runs=self.runs,
                                      threads=self.threads)
        latency_ms = ratio * self.reference_ms
        return {"flops": cost.flops, "macs": cost.macs, "params": cost.params, "activations": cost.activations,
                "memory": peak_memory_bytes(fused, self.lr_size), "latency_ratio": ratio,
                "latency_ms": latency_ms, "latency_iqr_ms": own.iqr_ms / own.median_ms * latency_ms,
                "xlite_ms": self.reference_ms}
