"""What a network costs: parameters, FLOPs/MACs, activations, peak memory, latency.

FLOP convention (the paper's, recovered from Tables 2 and 4): the paper's "FLOPs" are
twice a ptflops-style MAC count, where one MAC is charged for

* every multiply-accumulate of a conv or matmul (taken from
  ``torch.utils.flop_counter.FlopCounterMode``, which already reports 2 * MACs),
* every output element of a conv with a bias (the bias add),
* two per BatchNorm output element (scale and shift; Table 4: removing BN saves
  exactly 4 FLOPs per BN element, -1.6G LITE and -0.18G XLITE),
* one per non-linearity output element.

Functional ops are not charged, as with the hook-based counter the paper used: the
bicubic skip (Table 4: ~0.0G), pixel shuffle, SE pooling/gating, residual adds.
MACs = FLOPs / 2. With this convention all 7 rows of Table 2 agree within 1%.

Activations follow the paper (after Radosavovic et al.): total elements of every
conv layer's output tensor (the bicubic skip is an interpolation, not a layer).
"""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

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

    def hook(module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        nonlocal elementwise, activations
        if isinstance(module, nn.Conv2d):
            activations += output.numel()
            if module.bias is not None:
                elementwise += 2 * output.numel()
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
def _quiet_stderr() -> Iterator[None]:
    """Silence the profiler's C++ start/stop lines, which bypass Python's logging."""
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
        with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
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


def measure_latency(models: list[nn.Module], lr_size: tuple[int, int] = (256, 256), runs: int = 20,
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
        models = [m.to(device).eval() for m in models]
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
    return statistics.median(a / b for a, b in zip(own.samples_ms, ref.samples_ms)), own, ref


def inference_bytes(cfg: ArchConfig, lr_size: tuple[int, int]) -> int:
    """Bytes one float32 inference of ``cfg`` needs at least: weights, input and the two largest
    intermediates (a layer's input and output live together). Computed on PyTorch's meta device,
    so nothing is allocated: a network too large for the machine is refused before it is built."""
    with torch.device("meta"):
        model = build_model(cfg).eval()
    sizes: list[int] = []
    handles = [m.register_forward_hook(lambda _m, _i, out: sizes.append(out.numel()))
               for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            model(torch.empty(1, 3, *lr_size, device="meta"))
    finally:
        for h in handles:
            h.remove()
    largest = sorted(sizes)[-2:]
    return 4 * (count_params(model) + 3 * lr_size[0] * lr_size[1] + sum(largest))


def available_memory_bytes() -> int:
    """Memory the kernel says a new allocation can get (MemAvailable), else free physical memory."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def check_fits_memory(cfg: ArchConfig, lr_size: tuple[int, int]) -> None:
    """UsageError, in one line, when one inference of ``cfg`` at ``lr_size`` cannot fit in memory."""
    need, have = inference_bytes(cfg, lr_size), available_memory_bytes()
    if need > have:
        h, w = lr_size
        raise UsageError(f"nf={cfg.nf}, N={cfg.n_blocks} at LR {h}x{w} needs at least {need / 2**30:.1f} GiB "
                         f"(weights and activations); this machine has {have / 2**30:.1f} GiB available")
