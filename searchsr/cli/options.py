"""Options shared by several commands, as argparse parent parsers, and small argument helpers.

Nothing here imports torch, Optuna or Ray: building the parser must stay fast.
"""

from __future__ import annotations

import argparse
import os

from searchsr.config import ArchConfig
from searchsr.defaults import (DEFAULT_STORAGE, DEFAULT_STUDY, LATENCY_BACKENDS, LATENCY_TIMEOUT_S, MEMORY_FORMATS,
                               PRECISIONS)

DEVICES = "cpu, cuda or cuda:N"


def _parent() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the traceback of any error")
    return parser


def common() -> argparse.ArgumentParser:
    """What every command takes (``--debug`` works before or after the command name)."""
    return _parent()


def study(*, required: bool = False, default: str | None = DEFAULT_STUDY, storage: bool = True,
          help: str | None = None) -> argparse.ArgumentParser:
    """``--study`` (and ``--storage``)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--study", required=required, default=None if required else default,
                        help=help or ("study name" + (f" (default: {default})" if default and not required else "")))
    if storage:
        parser.add_argument("--storage", default=DEFAULT_STORAGE,
                            help=f"SQLAlchemy URL of the study's storage (default: {DEFAULT_STORAGE}; "
                                 "postgresql+psycopg://... for a cluster)")
    return parser


def arch(*, with_arch: bool = True) -> argparse.ArgumentParser:
    """``--arch`` (a preset or a config file) and ``--set key=value`` overrides."""
    parser = argparse.ArgumentParser(add_help=False)
    if with_arch:
        parser.add_argument("--arch", default="xlite",
                            help="preset (lite = nf 72/N 16, xlite = nf 16/N 8), a reference network of the "
                                 "paper's tables (msrresnet, fsrcnn) or a YAML/JSON config file (default: xlite)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. --set nf=32 --set se=false (repeatable); "
                             f"fields: {', '.join(ArchConfig.__dataclass_fields__)}")
    return parser


def json_output(help: str = "print one JSON object instead of text") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--json", action="store_true", help=help)
    return parser


def device() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--device", type=device_name, help=f"{DEVICES} (default: cuda if present)")
    return parser


def training() -> argparse.ArgumentParser:
    """``--precision``, ``--memory-format``, ``--compile``: how a training step runs (``searchsr.tuning``)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="training step precision: fp32, bf16 (autocast; CPUs and Ampere+ GPUs) or fp16 "
                             "(autocast + loss scaling; CUDA); validation is always fp32 (default: fp32)")
    parser.add_argument("--memory-format", choices=("auto", *MEMORY_FORMATS), default="auto",
                        help="the training step's memory format; auto times a few steps of both on the run's "
                             "device and keeps the faster (default: auto)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the training step (minutes to compile: for long schedules)")
    return parser


def latency_backend(default: str | None, says: str = "") -> argparse.ArgumentParser:
    """``--latency-backend``: the runtime latency is timed on (``searchsr.runtimes``); ``default`` None
    leaves it to the command (``says`` tells users what it picks)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--latency-backend", choices=LATENCY_BACKENDS, default=default,
                        help="time latency on eager PyTorch (BN fused), on ONNX Runtime running the graph `export` "
                             "writes (CPU provider, the same threads), on ExecuTorch with XNNPACK (the mobile "
                             "extra), or with your --latency-cmd on that graph "
                             f"(default: {says or default})")
    parser.add_argument("--latency-cmd", metavar="TEMPLATE",
                        help="with --latency-backend command: a shell command that times {model} (an exported "
                             "model.onnx; {input_h}, {input_w}: the LR size) and prints JSON with median_ms (or a "
                             "bare number), e.g. 'adb push {model} /data/local/tmp/m.onnx && adb shell ...'")
    parser.add_argument("--latency-timeout", type=float, default=LATENCY_TIMEOUT_S, metavar="S",
                        help=f"seconds one --latency-cmd run may take before its trial fails (default: "
                             f"{LATENCY_TIMEOUT_S:g})")
    return parser


def ray_cluster() -> argparse.ArgumentParser:
    """``--address``, ``--cpus-per-trial``, ``--gpus-per-trial``, ``--verbose``: Ray Tune's resources."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--cpus-per-trial", type=int, default=1, help="CPUs (and torch threads) per trial (default: 1)")
    parser.add_argument("--address", default=os.environ.get("RAY_ADDRESS") or None,
                        help="join a running Ray cluster, e.g. 10.0.0.1:6379 (default: $RAY_ADDRESS, else start a "
                             "private local Ray even where `ray start` runs one)")
    parser.add_argument("--verbose", action="store_true", help="show Ray's own logs and progress")
    return parser


def device_name(text: str) -> str:
    """argparse type: a device name torch understands and this tool supports."""
    kind, _, index = text.partition(":")
    if kind == "cpu" and not index or kind == "cuda" and (not index or index.isdigit()):
        return text
    raise argparse.ArgumentTypeError(f"unknown device {text!r} (use {DEVICES})")


def csv_list(text: str) -> list[str]:
    """``"a, b,,c"`` -> ``["a", "b", "c"]``."""
    return [item.strip() for item in text.split(",") if item.strip()]


def quiet_optuna() -> None:
    """Optuna's experimental-feature warnings and INFO lines are for its developers, not our users."""
    import warnings

    import optuna

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", category=FutureWarning, module="optuna")
    # enqueued paper presets may sit outside a space's ranges, on purpose (see searchsr.space)
    warnings.filterwarnings("ignore", message=r"Fixed parameter .* is out of range")
    # we record heartbeats ourselves for the trials Ray runs (see searchsr.recording)
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
