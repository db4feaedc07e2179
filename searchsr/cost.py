"""What a network costs: parameters, FLOPs/MACs, activations, peak memory, latency.

FLOP convention (the paper's, recovered from Tables 2 and 4): the paper's "FLOPs" are
twice a ptflops-style MAC count, where one MAC is charged for

* every multiply-accumulate of a conv or matmul (taken from
  ``torch.utils.flop_counter.FlopCounterMode``, which already reports 2 * MACs), except that a
  transposed conv is charged per *output* pixel (in x out / groups x kh x kw MACs each), as ptflops
  counts it (its ``conv_flops_counter_hook`` serves ``ConvTranspose2d`` too) and the tables of SR
  networks print it: FSRCNN's 9x9 stride-4 deconvolution as a conv over the HR grid, 16x the
  multiplies it really does (``searchsr.baselines``),
* every output element of a conv with a bias (the bias add),
* two per BatchNorm output element (scale and shift; Table 4: removing BN saves
  exactly 4 FLOPs per BN element, -1.6G LITE and -0.18G XLITE),
* one per non-linearity output element.

Functional ops are not charged, as with the hook-based counter the paper used: the
bicubic skip (Table 4: ~0.0G), pixel shuffle, SE pooling/gating, residual adds.
MACs = FLOPs / 2. With this convention all 7 rows of Table 2 agree within 1%.

Activations follow the paper (after Radosavovic et al.): total elements of every
conv (or transposed conv) layer's output tensor (the bicubic skip is an interpolation, not a layer).
"""

from __future__ import annotations

import contextlib
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from searchsr.arch import build_model
from searchsr.blocks import make_act
from searchsr.config import ACTIVATIONS, ArchConfig
from searchsr.errors import UsageError
from searchsr.fuse import fuse_bn

WARMUP_RUNS = 3  # untimed runs before a latency measurement
_NONLINEARITIES = tuple({type(make_act(a)) for a in ACTIVATIONS})


@dataclass(frozen=True)
class Cost:
    """Static costs of one network for one LR input size."""

    params: int
    flops: int
    macs: int
    activations: int
    lr_size: tuple[int, int]

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class LatencyStats:
    """Wall time of one forward pass, over ``runs`` timed repetitions."""

    median_ms: float
    iqr_ms: float
    min_ms: float
    runs: int
    threads: int
    device: str
    samples_ms: tuple[float, ...] = ()


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_cost(model: nn.Module, lr_size: tuple[int, int] = (256, 256)) -> Cost:
    """Params, FLOPs, MACs and activations of ``model`` for a 1x3xHxW LR input."""
    elementwise = 0
    activations = 0

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        nonlocal elementwise, activations
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
            activations += output.numel()
            if module.bias is not None:
                elementwise += 2 * output.numel()
            if isinstance(module, nn.ConvTranspose2d):  # per output pixel, as ptflops: see the docstring
                per_position = 2 * module.weight.numel()  # in x out/groups x kh x kw multiply-adds
                elementwise += per_position * (output[0, 0].numel() - inputs[0][0, 0].numel()) * output.shape[0]
        elif isinstance(module, nn.BatchNorm2d):
            elementwise += 4 * output.numel()
        elif isinstance(module, _NONLINEARITIES):
            elementwise += 2 * output.numel()

    model = model.eval()
    handles = [m.register_forward_hook(hook) for m in model.modules()]
    try:
        x = torch.zeros(1, 3, *lr_size, device=next(model.parameters()).device)
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        for h in handles:
            h.remove()
    # The skip's interpolation is functional in the paper's model and uncounted there.
    skip = sum(sum(ops.values()) for name, ops in counter.get_flop_counts().items() if name.endswith(".skip"))
    flops = counter.get_total_flops() - skip + elementwise
    return Cost(count_params(model), flops, flops // 2, activations, tuple(lr_size))


def arch_cost(cfg: ArchConfig, lr_size: tuple[int, int] = (256, 256)) -> Cost:
    return count_cost(build_model(cfg), lr_size)


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """Silence C++ notes written straight to fd 2 (the profiler's start/stop lines, ExecuTorch's cpuinfo),
    which bypass Python's logging."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_memory_bytes(model: nn.Module, lr_size: tuple[int, int]) -> int:
    """Peak bytes held during one inference: weights + input + live intermediates.

    On CUDA the caching allocator's own peak counter; on CPU the peak of the
    allocation/free stream recorded by the PyTorch profiler.
    """
    device = next(model.parameters()).device
    model = model.eval()
    x = torch.zeros(1, 3, *lr_size, device=device)
    static = sum(p.numel() * p.element_size() for p in model.parameters()) + x.numel() * x.element_size()
    with torch.inference_mode():
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
            model(x)
            torch.cuda.synchronize(device)
            return static + torch.cuda.max_memory_allocated(device) - base
        with quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            model(x)
    events = sorted((e for e in prof.events() if e.self_cpu_memory_usage), key=lambda e: e.time_range.start)
    live = peak = 0
    for event in events:
        live += event.self_cpu_memory_usage
        peak = max(peak, live)
    return static + peak


def _timer(device: torch.device) -> Callable[[Callable[[], object]], float]:
    """Milliseconds of one call: CUDA events + synchronize on GPU, perf_counter on CPU."""
    if device.type == "cuda":
        def timed(fn: Callable[[], object]) -> float:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize(device)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            return start.elapsed_time(end)
        return timed

    def timed_cpu(fn: Callable[[], object]) -> float:
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3
    return timed_cpu


def _stats(samples: list[float], threads: int, device: torch.device) -> LatencyStats:
    q1, _, q3 = statistics.quantiles(samples, n=4) if len(samples) > 1 else (samples[0],) * 3
    return LatencyStats(statistics.median(samples), q3 - q1, min(samples), len(samples), threads, device.type,
                        tuple(samples))


def prepare_for_timing(model: nn.Module) -> nn.Module:
    """Inference form of a model: eval mode with BN folded (what a deployment runs)."""
    return fuse_bn(model).eval()


def measure_latency(models: list[nn.Module | Callable[[torch.Tensor], Any]], lr_size: tuple[int, int] = (256, 256), runs: int = 20,
                    warmup: int = WARMUP_RUNS, threads: int = 1, device: str | torch.device = "cpu",
                    on_run: Callable[[], None] | None = None) -> list[LatencyStats]:
    """Median/IQR latency of each model, timed interleaved (A B A B ...) in one process.

    Interleaving puts every model under the same drift of a shared machine, so the
    ratio of two medians is far steadier than either absolute time. Models are
    timed as given: call ``prepare_for_timing`` first for the deployment form.
    The thread count is fixed for the measurement and restored afterwards. ``on_run`` is
    called after each of the ``warmup + runs`` rounds (a progress bar).
    """
    if runs < 1 or warmup < 0 or threads < 1:
        raise UsageError(f"runs, threads must be >= 1 and warmup >= 0, got {runs}, {threads}, {warmup}")
    device = torch.device(device)
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x = torch.rand(1, 3, *lr_size, device=device)
        models = [m.to(device).eval() if isinstance(m, nn.Module) else m for m in models]  # a runtime's runner
        # (searchsr.runtimes) runs where it was made
        timed = _timer(device)
        samples: list[list[float]] = [[] for _ in models]
        with torch.inference_mode():
            for i in range(warmup + runs):
                for model, bucket in zip(models, samples):
                    ms = timed(lambda: model(x))
                    if i >= warmup:
                        bucket.append(ms)
                if on_run is not None:
                    on_run()
    finally:
        torch.set_num_threads(old_threads)
    return [_stats(s, threads, device) for s in samples]


def latency_ratio(model: nn.Module, reference: nn.Module, **kwargs) -> tuple[float, LatencyStats, LatencyStats]:
    """Latency of ``model`` as a multiple of ``reference`` (e.g. XLITE), measured interleaved.

    The median of the per-pair ratios: each pair ran back to back under the same load,
    so a burst of contention that slows one pair cancels out of its ratio.
    """
    own, ref = measure_latency([model, reference], **kwargs)
    return statistics.median(pair_ratios(own, ref)), own, ref


def pair_ratios(own: LatencyStats, ref: LatencyStats) -> list[float]:
    """Per-pair latency ratios own/ref of an interleaved measurement (pair i ran back to back)."""
    return [a / b for a, b in zip(own.samples_ms, ref.samples_ms)]


@dataclass(frozen=True)
class MedianCI:
    """The median of samples and a distribution-free confidence interval for it."""

    median: float
    low: float
    high: float
    exact: bool  # False below 6 samples (at 95%): the interval is then the sample range, covering less

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2


def median_ci(samples: Sequence[float], confidence: float = 0.95) -> MedianCI:
    """Order-statistics confidence interval of the median (no distributional assumption, no randomness):
    the count of samples below the true median is B ~ Binomial(n, 1/2); with the largest rank ``l`` such
    that P(B < l) <= (1 - confidence) / 2, [x_(l), x_(n+1-l)] (1-based) covers it with probability >=
    ``confidence``. Where no rank qualifies (n < 6 at 95%) the sample range comes with ``exact=False``."""
    xs, n = sorted(samples), len(samples)
    rank = 0  # l: grows while P(B <= l) stays within the tail
    while rank < n // 2 and sum(math.comb(n, k) for k in range(rank + 1)) * 0.5**n <= (1 - confidence) / 2:
        rank += 1
    low, high = (xs[rank - 1], xs[n - rank]) if rank else (xs[0], xs[-1])
    return MedianCI(statistics.median(xs), low, high, rank > 0)


def is_stable(ci: MedianCI, rel_half_width: float) -> bool:
    """The stopping rule: an exact interval whose half-width is at most ``rel_half_width`` x the median."""
    return ci.exact and ci.half_width <= rel_half_width * abs(ci.median)


@dataclass(frozen=True)
class RatioEstimate:
    """Latency of a model as a multiple of a reference, with the 95% interval of that multiple."""

    ratio: float  # median of the per-pair ratios over all rounds
    ci_low: float  # its 95% interval (``median_ci``)
    ci_high: float
    rounds: int  # interleaved measurements taken
    pairs: int  # back-to-back (model, reference) pairs behind the ratio
    converged: bool  # the interval reached the asked half-width within ``max_rounds``
    own: LatencyStats  # every timed run of the model, all rounds
    ref: LatencyStats  # every timed run of the reference, all rounds


def ratio_until_stable(measure_round: Callable[[bool], tuple[LatencyStats, LatencyStats]],
                       rel_half_width: float, max_rounds: int) -> RatioEstimate:
    """Call ``measure_round(first_round)`` -> (own, ref) until ``is_stable`` holds for the pooled per-pair
    ratios, or ``max_rounds`` times: the pure loop behind ``stable_ratio`` (testable with fake rounds)."""
    if not 0 < rel_half_width < 1 or max_rounds < 1:
        raise UsageError(f"rel_half_width must be in (0, 1) and max_rounds >= 1, got {rel_half_width}, {max_rounds}")
    own_ms: list[float] = []
    ref_ms: list[float] = []
    for rounds in range(1, max_rounds + 1):
        own, ref = measure_round(rounds == 1)
        own_ms += own.samples_ms
        ref_ms += ref.samples_ms
        ratios = [a / b for a, b in zip(own_ms, ref_ms)]
        ci = median_ci(ratios)
        if is_stable(ci, rel_half_width):
            break
    device = torch.device(own.device)
    return RatioEstimate(ci.median, ci.low, ci.high, rounds, len(ratios), is_stable(ci, rel_half_width),
                         _stats(own_ms, own.threads, device), _stats(ref_ms, ref.threads, device))


def stable_ratio(model: nn.Module, reference: nn.Module, *, lr_size: tuple[int, int], runs: int, threads: int,
                 rel_half_width: float = 0.02, max_rounds: int = 6, device: str | torch.device = "cpu"
                 ) -> RatioEstimate:
    """Latency of ``model`` as a multiple of ``reference``, repeated until it is known to +-``rel_half_width``.

    Each round is ``latency_ratio``'s measurement (``runs`` interleaved pairs, the first round after
    ``WARMUP_RUNS`` warm-up runs, later ones after one); rounds are added until the 95% interval of the
    median per-pair ratio (``median_ci``: order statistics, deterministic) has half-width
    <= ``rel_half_width`` x ratio, or ``max_rounds`` were taken (``converged=False``).
    """
    def measure_round(first: bool) -> tuple[LatencyStats, LatencyStats]:
        return tuple(measure_latency([model, reference], lr_size, runs=runs, warmup=WARMUP_RUNS if first else 1,
                                     threads=threads, device=device))

    return ratio_until_stable(measure_round, rel_half_width, max_rounds)
