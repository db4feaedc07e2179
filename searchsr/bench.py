"""Benchmarks behind ``searchsr bench``: each returns small dataclasses (the CLI prints them).

* ``bench_latency``: how stable a latency measurement is (CV of the median over repeated
  measurements), the BN-fusion speed-up, and the ratio to XLITE timed alongside (the search's
  ``stable_ratio``, with its 95% interval, against one round's ratio).
* ``bench_concurrency``: one architecture timed in every trial of a concurrent search: how much
  does the search's latency vary under load?
* ``bench_train``: training steps/s per variant (eager, channels_last, torch.compile) and eval time.
* ``bench_runtimes``: each architecture on every latency backend, timed interleaved: the ratio of
  each runtime to eager PyTorch, and whether the runtimes rank the architectures alike.
* ``bench_data``: the training data path alone (``searchsr.patches``): batches/s on the training device.

``time_train_steps`` is also the retrain estimate's step timer (``searchsr.retrain``).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from searchsr.config import PRESETS, ArchConfig, load_arch
from searchsr.errors import UsageError


def _at_least(**values: int) -> None:
    for name, (value, low) in values.items():
        if value < low:
            raise UsageError(f"--{name.replace('_', '-')} must be >= {low}, got {value}")


def _cv(values: list[float]) -> float:
    return statistics.stdev(values) / statistics.mean(values) if len(values) > 1 else 0.0


def time_train_steps(cfg: ArchConfig, batch: int, patch: int, steps: int, warmup: int = 1,
                     channels_last: bool = True, compiled: bool = False, threads: int | None = None) -> list[float]:
    """Seconds of each of ``steps`` training steps (L1, Adam) on random ``batch`` x ``patch``^2 LR
    patches, after ``warmup`` untimed steps; ``threads`` torch threads while timing."""
    import torch
    import torch.nn.functional as F

    from searchsr.arch import build_model

    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        torch.manual_seed(0)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        model = build_model(cfg).train().to(memory_format=fmt)
        step_model = torch.compile(model) if compiled else model
        optimizer = torch.optim.Adam(model.parameters(), lr=5e-3, betas=(0.9, 0.99))
        lr = torch.rand(batch, 3, patch, patch).to(memory_format=fmt)
        hr = torch.rand(batch, 3, patch * cfg.scale, patch * cfg.scale).to(memory_format=fmt)
        times = []
        for _ in range(warmup + steps):
            start = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            F.l1_loss(step_model(lr), hr).backward()
            optimizer.step()
            times.append(time.perf_counter() - start)
        return times[warmup:]
    finally:
        torch.set_num_threads(before)


@dataclass(frozen=True)
class LatencyBench:
    """One architecture: ``repeats`` independent measurements of the BN-fused net, each interleaved
    with the unfused net and XLITE (medians, fusion speed-up, single-round ratio), then the search's
    ratio to XLITE (``cost.stable_ratio``: rounds until its 95% interval is tight enough)."""

    medians_ms: list[float]
    cv_of_median: float
    fusion_speedup: float
    ratio_to_xlite: float  # median over repeats of the stable ratio
    cv_of_ratio: float  # CV over repeats of the stable ratio (the search's figure)
    ratio_ci: list[tuple[float, float]]  # each repeat's 95% interval of its stable ratio
    ratio_rounds: list[int]  # rounds each stable ratio took
    ratio_converged: int  # repeats whose interval reached the asked half-width
    cv_of_single_round_ratio: float  # CV over repeats of one round's median per-pair ratio (the old figure)

    def to_dict(self) -> dict:
        return asdict(self)


def bench_latency(archs: list[str], lr_size: tuple[int, int], repeats: int, runs: int, threads: int,
                  device: str, on_result: Callable[[str, LatencyBench], None] | None = None,
                  rel_half_width: float = 0.02, max_rounds: int = 6) -> dict[str, LatencyBench]:
    from searchsr.arch import build_model
    from searchsr.cost import measure_latency, pair_ratios, prepare_for_timing, stable_ratio

    _at_least(repeats=(repeats, 1), runs=(runs, 1), threads=(threads, 1), max_rounds=(max_rounds, 1))
    if not 0 < rel_half_width < 1:
        raise UsageError(f"--rel-half-width must be in (0, 1), got {rel_half_width}")
    if not archs:
        raise UsageError("--archs: give at least one preset or config file")
    models = {name: build_model(load_arch(name)) for name in archs}
    reference = prepare_for_timing(build_model(PRESETS["xlite"]))
    report = {}
    for name, model in models.items():
        fused, unfused = prepare_for_timing(model), model.eval()
        medians, speedups, single, stable = [], [], [], []
        for _ in range(repeats):
            f, u, ref = measure_latency([fused, unfused, reference], lr_size, runs=runs, threads=threads,
                                        device=device)
            medians.append(f.median_ms)
            speedups.append(u.median_ms / f.median_ms)
            single.append(statistics.median(pair_ratios(f, ref)))
            stable.append(stable_ratio(fused, reference, lr_size=lr_size, runs=runs, threads=threads,
                                       rel_half_width=rel_half_width, max_rounds=max_rounds, device=device))
        ratios = [e.ratio for e in stable]
        report[name] = LatencyBench(medians, _cv(medians), statistics.median(speedups), statistics.median(ratios),
                                    _cv(ratios), [(e.ci_low, e.ci_high) for e in stable], [e.rounds for e in stable],
                                    sum(e.converged for e in stable), _cv(single))
        if on_result is not None:
            on_result(name, report[name])
    return report


@dataclass(frozen=True)
class ConcurrencyBench:
    arch: dict
    latencies_ms: list[float]
    median_ms: float
    spread: float  # (max - min) / median
    cv: float
    xlite_preset: bool

    def to_dict(self) -> dict:
        return asdict(self)


def bench_concurrency(arch: str, trials: int, concurrency: int, schedule: str, latency_runs: int
                      ) -> ConcurrencyBench:
    """A throw-away study whose every trial is ``arch`` (a space of fixed values), ``concurrency`` at once."""
    from searchsr.objectives import parse_objectives
    from searchsr.search import SearchSettings, run_search
    from searchsr.space import SearchSpace
    from searchsr.storage import load_study, open_storage

    _at_least(trials=(trials, 2), concurrency=(concurrency, 0), latency_runs=(latency_runs, 1))
    cfg = load_arch(arch)
    if not isinstance(cfg, ArchConfig):
        raise UsageError(f"--arch {arch}: a search's trials are the family's networks, not a reference network")
    with tempfile.TemporaryDirectory(prefix="searchsr-bench-") as tmp:
        storage = f"sqlite:///{tmp}/bench.db"
        run_search(SearchSettings(space=SearchSpace.fixed(cfg), objectives=parse_objectives("psnr,latency"),
                                  trials=trials, study="bench", storage=storage, sampler="random",
                                  schedule=schedule, runs_dir=Path(tmp) / "runs", enqueue=(),
                                  concurrency=concurrency, latency_runs=latency_runs))
        done = load_study("bench", open_storage(storage)).get_trials(deepcopy=False)
        latencies = [t.user_attrs["latency_ms"] for t in done if "latency_ms" in t.user_attrs]
    if len(latencies) < 2:
        raise UsageError(f"only {len(latencies)} trial(s) completed; nothing to compare")
    median = statistics.median(latencies)
    return ConcurrencyBench(cfg.to_dict(), latencies, median, (max(latencies) - min(latencies)) / median,
                            _cv(latencies), cfg == PRESETS["xlite"])


def bench_train(archs: list[str], batch: int, patch: int, steps: int, warmup: int, compiled: bool,
                eval_data: str | None, on_result: Callable[[str, str, float], None] | None = None
                ) -> dict[str, dict[str, float]]:
    """arch -> {variant: steps/s (median), "eval_seconds": ...}; ``on_result(arch, variant, value)``."""
    from searchsr.arch import build_model
    from searchsr.data import load_images
    from searchsr.evaluate import evaluate, model_upscaler

    _at_least(batch=(batch, 1), patch=(patch, 4), steps=(steps, 1), warmup=(warmup, 0))
    if not archs:
        raise UsageError("--archs: give at least one preset or config file")
    configs = {name: load_arch(name) for name in archs}
    images = {cfg.scale: load_images(eval_data, "val", cfg.scale) for cfg in configs.values()} if eval_data else {}
    variants = {"eager": (False, False), "channels_last": (True, False)}
    if compiled:
        variants["channels_last+compile"] = (True, True)
    report: dict[str, dict[str, float]] = {}
    for name, cfg in configs.items():
        report[name] = {}
        for variant, (channels_last, compile_it) in variants.items():
            times = time_train_steps(cfg, batch, patch, steps, warmup, channels_last, compile_it)
            report[name][variant] = 1 / statistics.median(times)
            if on_result is not None:
                on_result(name, variant, report[name][variant])
        if eval_data:
            result = evaluate(model_upscaler(build_model(cfg).eval()), images[cfg.scale])
            report[name]["eval_seconds"] = result.seconds
            if on_result is not None:
                on_result(name, "eval_seconds", result.seconds)
    return report


@dataclass(frozen=True)
class DataBench:
    """The data path: ``batches`` batches of ``batch`` x ``patch``^2 LR patches (and their HR) gathered on
    ``device`` from ``source``; ``set_mb`` is the training set's uint8 size, where it lives ``home``."""

    source: str
    device: str
    home: str
    set_mb: float
    ms_per_batch: float  # median
    samples_per_s: float

    def to_dict(self) -> dict:
        return asdict(self)


def bench_data(train_dir: str | None, batch: int, patch: int, batches: int, device: str) -> DataBench:
    import torch

    from searchsr.data import load_images
    from searchsr.patches import PatchSampler

    _at_least(batch=(batch, 1), patch=(patch, 4), batches=(batches, 1))
    images = load_images(train_dir, "train", 4)
    dev = torch.device(device)
    sampler = PatchSampler(images, patch, batch, seed=0, device=dev)
    times = []
    for step in range(batches + 1):  # the first (page faults, allocation) untimed
        start = time.perf_counter()
        sampler.batch(step)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        times.append(time.perf_counter() - start)
    median = statistics.median(times[1:])
    size = sum(p.hr.nbytes + p.lr.nbytes for p in images.images) / 2**20
    return DataBench(images.source, str(dev), str(sampler.home), round(size, 1), 1e3 * median, batch / median)


@dataclass(frozen=True)
class RuntimesBench:
    """Per architecture, the median ms on each backend over ``repeats`` interleaved measurements and each
    backend's median per-pair ratio to torch; ``kendall_tau``: rank agreement of the backends' medians."""

    ms: dict[str, dict[str, float]]  # arch -> backend -> median ms
    ratio_to_torch: dict[str, dict[str, float]]  # arch -> backend -> median per-pair ratio
    spread: dict[str, dict[str, float]]  # arch -> backend -> (max - min) / median of the repeats' ratios
    kendall_tau: dict[str, float]  # backend -> rank agreement of its medians with torch's (from 3 architectures)

    def to_dict(self) -> dict:
        return asdict(self)


def bench_runtimes(archs: list[str], lr_size: tuple[int, int], repeats: int, runs: int, threads: int,
                   backends: list[str] | None = None) -> RuntimesBench:
    from scipy.stats import kendalltau

    from searchsr.arch import build_model
    from searchsr.cost import measure_latency, pair_ratios
    from searchsr.runtimes import IN_PROCESS, runner

    _at_least(repeats=(repeats, 1), runs=(runs, 1), threads=(threads, 1))
    if not archs:
        raise UsageError("--archs: give at least one preset or config file")
    backends = ["torch", *(b for b in backends or ["onnxruntime"] if b != "torch")]
    unknown = [b for b in backends if b not in IN_PROCESS]
    if unknown:
        raise UsageError(f"--backends: {unknown[0]!r} is not one of {', '.join(IN_PROCESS)}")
    ms: dict[str, dict[str, float]] = {}
    ratio: dict[str, dict[str, float]] = {}
    spread: dict[str, dict[str, float]] = {}
    for name in archs:
        cfg = load_arch(name)
        model = build_model(cfg)
        runners = [runner(model, cfg, backend, threads, lr_size) for backend in backends]
        medians: dict[str, list[float]] = {b: [] for b in backends}
        ratios: dict[str, list[float]] = {b: [] for b in backends}
        for _ in range(repeats):
            stats = measure_latency(runners, lr_size, runs=runs, threads=threads)
            for backend, s in zip(backends, stats):
                medians[backend].append(s.median_ms)
                ratios[backend].append(statistics.median(pair_ratios(s, stats[0])))
        ms[name] = {b: statistics.median(v) for b, v in medians.items()}
        ratio[name] = {b: statistics.median(v) for b, v in ratios.items()}
        spread[name] = {b: (max(v) - min(v)) / statistics.median(v) for b, v in ratios.items()}
    tau = {b: float(kendalltau([ms[a]["torch"] for a in archs], [ms[a][b] for a in archs]).statistic)
           for b in backends[1:]} if len(archs) >= 3 else {}
    return RuntimesBench(ms, ratio, spread, tau)
