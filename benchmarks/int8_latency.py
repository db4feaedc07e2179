"""INT8 vs FP32 latency of the exported graph on ONNX Runtime's CPU provider (``searchsr.quantize``'s choices).

For each preset (random weights, seeded: latency does not depend on them), ``model.onnx`` as ``export`` writes
it is quantized by ``quantize_onnx`` with the default settings and with each variant below, and every graph
is timed interleaved at a 256x256 LR input (the median of ``--runs`` runs after a warm-up), at ``--threads``:

    python benchmarks/int8_latency.py --archs xlite,lite --runs 20 --threads 1 [--variants all|default] [--json OUT]

``fp32`` is the session ``upscale`` runs (``bundle.ort_session``: ORT_ENABLE_EXTENDED); ``int8`` the INT8 graph in
the session it records (``ort_session(..., int8=True)``). Variants change one setting of ``QuantSettings`` or of
the INT8 session; the ratio is int8 / fp32 median, both from the same interleaved loop.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace

import numpy as np
import torch

from searchsr.arch import build_model
from searchsr.bundle import ort_session
from searchsr.config import load_arch
from searchsr.export import model_onnx
from searchsr.quantize import QuantSettings, calibration_inputs, quantize_onnx

DEFAULT = QuantSettings()
SETTINGS_VARIANTS = {
    "activations QInt8": replace(DEFAULT, activations="QInt8"),
    "per-tensor weights": replace(DEFAULT, per_channel=False),
    "reduce_range": replace(DEFAULT, reduce_range=True),
    "all int8 (HR end and skip too)": replace(DEFAULT, float_tail=False),
    "no GlobalAveragePool rewrite": replace(DEFAULT, pool_rewrite=False),
    "no quant_pre_process": replace(DEFAULT, preprocess=False),
}
SESSION_VARIANTS = {  # the default graph in other sessions: (graph optimization level, disabled optimizers)
    "session EXTENDED": ("extended", []),
    "session ALL with NCHWc": ("all", []),
    "session ALL without NCHWc": ("all", ["NchwcTransformer"]),
}


def session(graph: bytes, threads: int, level: str, disabled: list[str]):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.enable_mem_pattern = False
    options.intra_op_num_threads = threads
    options.graph_optimization_level = {"extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                                        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[level]
    return ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"], disabled_optimizers=disabled)


def measure(arch: str, runs: int, threads: int, variants: bool, size: int = 256) -> dict:
    torch.manual_seed(0)
    cfg = load_arch(arch)
    fp32 = model_onnx(build_model(cfg).eval(), cfg)
    calibration = calibration_inputs(None, cfg.scale)
    int8 = quantize_onnx(fp32, calibration)
    sessions = {"fp32": ort_session(fp32, threads), "int8": ort_session(int8, threads, int8=True)}
    sizes = {"fp32": len(fp32), "int8": len(int8)}
    if variants:
        for name, settings in SETTINGS_VARIANTS.items():
            graph = quantize_onnx(fp32, calibration, settings)
            sessions[name], sizes[name] = ort_session(graph, threads, int8=True), len(graph)
        for name, (level, disabled) in SESSION_VARIANTS.items():
            sessions[name], sizes[name] = session(int8, threads, level, disabled), len(int8)
    x = np.random.default_rng(0).random((1, 3, size, size), dtype=np.float32)
    for s in sessions.values():  # warm-up
        s.run(None, {"lr": x})
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(runs):
        for name, s in sessions.items():
            start = time.perf_counter()
            s.run(None, {"lr": x})
            times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(t) * 1000 for name, t in times.items()}
    return {"arch": arch, "lr_size": size, "threads": threads, "runs": runs,
            "rows": [{"variant": name, "median_ms": ms, "ratio_to_fp32": ms / medians["fp32"], "bytes": sizes[name]}
                     for name, ms in medians.items()]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default="xlite,lite")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--variants", choices=("all", "default"), default="default")
    parser.add_argument("--json", metavar="OUT", help="also write the results as JSON")
    args = parser.parse_args()
    results = []
    for arch in args.archs.split(","):
        result = measure(arch, args.runs, args.threads, args.variants == "all")
        results.append(result)
        print(f"{arch}: 256x256 LR, {args.threads} thread(s), median of {args.runs} interleaved runs")
        for row in result["rows"]:
            print(f"  {row['variant']:34s} {row['median_ms']:8.1f} ms  {row['ratio_to_fp32']:.3f}x  {row['bytes']:>9,} B")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
