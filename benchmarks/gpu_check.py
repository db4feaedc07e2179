"""The GPU check: what the paper's full schedule costs on this machine's accelerator, in at most ~8 minutes.

Run from the repository root with no install (the GPU machines have torch, numpy, scipy, scikit-image,
pillow, pyyaml, tqdm and safetensors, and neither Optuna nor Ray): ``bash benchmarks/gpu_check.sh OUT``.
It prints each figure as it is measured and writes them all to ``OUT/gpu_check.json``:

* the data path alone (``PatchSampler`` on the device): samples/s at the full schedule's batch;
* training steps/s of XLITE and LITE at 128 x 100x100 for fp32/bf16 x channels_last/contiguous
  (and torch.compile where time allows), peak GPU memory of each, and the data path's rate over the
  rate the fastest step consumes (goal >= 5x);
* the full 350K-step schedule's estimate in hours, from end-to-end steps (sampler + step);
* a short real training of XLITE at the full batch in fp32 and bf16, scored on Set5 (goal: within
  0.05 dB of each other);
* latency with CUDA events of XLITE/LITE at 256x256, and a 12 MP (3000x4000) upscale.

Data: ``benchmarks/.data/sun80`` and ``benchmarks/.data/set5`` when present (copied there and carried
along: ``../shared`` does not travel; the folder is git-ignored), else scikit-image's photos.
``--smoke`` shrinks everything so that the script itself is tested on a CPU (tests/test_gpu_check.py).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from searchsr.arch import build_model  # noqa: E402  (after the path: no install needed)
from searchsr.config import PRESETS  # noqa: E402
from searchsr.data import load_folder, load_skimage  # noqa: E402
from searchsr.evaluate import upscale  # noqa: E402
from searchsr.patches import PatchSampler  # noqa: E402
from searchsr.schedule import Schedule  # noqa: E402
from searchsr.train import train  # noqa: E402
from searchsr.tuning import MEMORY_FORMATS, autocast, grad_scaler  # noqa: E402

FULL = {"batch": 128, "patch": 100, "steps": 350_000}
SMOKE = {"batch": 2, "patch": 16, "steps": 350_000}
DATA = REPO / "benchmarks" / ".data"


class Check:
    """Figures as they come, printed and kept; sections skip themselves when the budget runs out."""

    def __init__(self, out: Path, budget_s: float) -> None:
        self.out, self.deadline, self.figures = out, time.monotonic() + budget_s, {}

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def put(self, key: str, value: Any) -> None:
        self.figures[key] = value
        print(f"{key}: {json.dumps(value)}", flush=True)
        (self.out / "gpu_check.json").write_text(json.dumps(self.figures, indent=2) + "\n")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_mb(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if device.type == "cuda" else None


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def timed(fn: Callable[[int], Any], device: torch.device, steps: int, warmup: int) -> float:
    """Median seconds of ``fn(i)`` over ``steps`` calls after ``warmup`` (synchronised each call)."""
    times = []
    for i in range(warmup + steps):
        sync(device)
        start = time.perf_counter()
        fn(i)
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times[warmup:])


def latency_ms(model: torch.nn.Module, x: torch.Tensor, runs: int, warmup: int) -> float:
    """Median milliseconds of one inference: CUDA events on a GPU (the kernels' time, not Python's)."""
    times = []
    with torch.inference_mode():
        for i in range(warmup + runs):
            if x.device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                model(x)
                end.record()
                torch.cuda.synchronize(x.device)
                times.append(start.elapsed_time(end))
            else:
                begin = time.perf_counter()
                model(x)
                times.append(1e3 * (time.perf_counter() - begin))
    return statistics.median(times[warmup:])


def step_fn(name: str, device: torch.device, precision: str, fmt: str, sampler: PatchSampler | None,
            batch: tuple[torch.Tensor, torch.Tensor], compiled: bool = False) -> Callable[[int], Any]:
    """One training step (L1, Adam; autocast in ``precision``) of a preset, on a fixed batch or the sampler's."""
    memory_format = MEMORY_FORMATS[fmt]
    model = build_model(PRESETS[name]).to(device, memory_format=memory_format).train()
    run = torch.compile(model) if compiled else model
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3, betas=(0.9, 0.99))
    scaler = grad_scaler(device, precision)

    def step(i: int) -> None:
        lr, hr = sampler.batch(i) if sampler is not None else batch
        lr, hr = lr.contiguous(memory_format=memory_format), hr.contiguous(memory_format=memory_format)
        with autocast(device, precision):
            loss = F.l1_loss(run(lr), hr)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    return step


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder for gpu_check.json (created)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: test the script on a CPU")
    parser.add_argument("--budget", type=float, default=450, help="seconds before sections are skipped")
    parser.add_argument("--train-steps", type=int, default=300, help="steps of the short real training")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    size = SMOKE if args.smoke else FULL
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    check = Check(args.out, args.budget)
    check.put("device", {"torch": torch.__version__, "device": torch.cuda.get_device_name(device)
                         if device.type == "cuda" else "cpu", "bf16": device.type == "cpu" or
                         torch.cuda.is_bf16_supported(), "memory_gb": round(torch.cuda.get_device_properties(
                             device).total_memory / 2**30, 1) if device.type == "cuda" else None})
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    train_set = load_folder(DATA / "sun80", 4) if (DATA / "sun80").is_dir() else load_skimage("train", 4)
    set5 = load_folder(DATA / "set5", 4) if (DATA / "set5").is_dir() else load_skimage("val", 4)
    check.put("data", {"train": train_set.source, "eval": set5.source})
    batch, patch = size["batch"], size["patch"]
    steps, warmup = (2, 1) if args.smoke else (10, 3)

    sampler = PatchSampler(train_set, patch, batch, seed=0, device=device)
    data_s = timed(sampler.batch, device, 5 if args.smoke else 50, 2)
    check.put("data_path", {"on_device": sampler.on_device, "ms_per_batch": round(1e3 * data_s, 2),
                            "samples_per_s": round(batch / data_s)})

    fixed = tuple(t.clone() for t in sampler.batch(0))
    results: dict[str, dict[str, Any]] = {}
    for name in ("xlite", "lite"):
        results[name] = {}
        for precision in ("fp32", "bf16"):
            for fmt in MEMORY_FORMATS:
                if check.left() < 60:
                    check.put(f"step_{name}_{precision}_{fmt}", "skipped: out of time")
                    continue
                reset_peak(device)
                s = timed(step_fn(name, device, precision, fmt, None, fixed), device, steps, warmup)
                results[name][f"{precision}_{fmt}"] = {"steps_per_s": round(1 / s, 2), "peak_mb": peak_mb(device)}
                check.put(f"step_{name}_{precision}_{fmt}", results[name][f"{precision}_{fmt}"])
        if not results[name]:
            continue
        best = max(results[name], key=lambda k: results[name][k]["steps_per_s"])
        precision, fmt = best.split("_", 1)
        s = timed(step_fn(name, device, precision, fmt, sampler, fixed), device, steps, warmup)
        check.put(f"full_schedule_{name}", {
            "variant": best, "end_to_end_steps_per_s": round(1 / s, 2),
            "estimate_hours": round(size["steps"] * s / 3600, 2),
            "data_over_step_rate": round((batch / data_s) / (batch * results[name][best]["steps_per_s"]), 1)})
    if device.type == "cuda" and check.left() > 240 and "xlite" in results and results["xlite"]:
        best = max(results["xlite"], key=lambda k: results["xlite"][k]["steps_per_s"])
        precision, fmt = best.split("_", 1)
        start = time.perf_counter()
        fn = step_fn("xlite", device, precision, fmt, None, fixed, compiled=True)
        fn(0)
        compile_s = time.perf_counter() - start
        s = timed(fn, device, steps, warmup)
        check.put("step_xlite_compiled", {"variant": best, "steps_per_s": round(1 / s, 2),
                                          "compile_seconds": round(compile_s, 1)})

    psnr = {}
    train_steps = 3 if args.smoke else args.train_steps
    milestones = tuple(int(train_steps * f) for f in (2 / 7, 4 / 7, 5 / 7, 6 / 7))
    schedule = Schedule("gpu-check", steps=train_steps, batch_size=batch, patch_size=patch, lr=0.005,
                        milestones=tuple(sorted(set(m for m in milestones if 0 < m < train_steps))),
                        log_every=max(1, train_steps // 10))
    for precision in ("fp32", "bf16"):
        if check.left() < 45:
            check.put(f"train_xlite_{precision}", "skipped: out of time")
            continue
        run_dir = args.out / f"train_xlite_{precision}"
        result = train(PRESETS["xlite"], schedule, train_set, set5, run_dir, seed=0, progress=False,
                       device=str(device), precision=precision)
        psnr[precision] = result.val.psnr_y
        check.put(f"train_xlite_{precision}", {"steps": train_steps, "seconds": round(result.train_seconds, 1),
                                               "memory_format": result.memory_format,
                                               "eval_psnr_y": round(result.val.psnr_y, 3),
                                               "bicubic_psnr_y": round(result.bicubic.psnr_y, 3)})
    if len(psnr) == 2:
        check.put("bf16_minus_fp32_db", round(psnr["bf16"] - psnr["fp32"], 3))

    side = 32 if args.smoke else 256
    for name in ("xlite", "lite"):
        if check.left() < 20:
            break
        model = build_model(PRESETS[name]).to(device).eval()
        ms = latency_ms(model, torch.rand(1, 3, side, side, device=device), 5 if args.smoke else 50,
                        2 if args.smoke else 10)
        check.put(f"latency_{name}_{side}", {"median_ms": round(ms, 3),
                                             "timer": "cuda events" if device.type == "cuda" else "perf_counter"})
    lr_h, lr_w = (24, 32) if args.smoke else (750, 1000)
    image = np.random.default_rng(0).integers(0, 256, (lr_h, lr_w, 3), dtype=np.uint8)
    for name in ("xlite", "lite"):
        if check.left() < 20:
            break
        model = build_model(PRESETS[name]).to(device).eval()
        reset_peak(device)
        s = timed(lambda i: upscale(model, image), device, 1 if args.smoke else 3, 1)
        check.put(f"upscale_12mp_{name}", {"output": [4 * lr_h, 4 * lr_w], "seconds": round(s, 3),
                                           "peak_mb": peak_mb(device)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
