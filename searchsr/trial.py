"""One search trial, as a Ray Tune trainable: costs first, then train the proxy schedule rung by rung.

1. Costs. Params, FLOPs, activations, memory and latency do not depend on the weights, so they
   are measured before any training (or taken from the study's cache of measurements, or counted with
   a predicted latency: ``measured_costs``); a trial that violates a constraint reports ``infeasible``
   and ends without training (0 training seconds, no weights).
2. Rungs. With early stopping the trial is validated at each rung step and reports a ``rung``
   result; the driver's scheduler (``searchsr.rungs``) then lets it go on or stops it there. The
   report blocks until the driver asks for more, so a stopped trial trains no further.
3. Final. A trial that reaches the schedule's end reports every metric once (``final``); with
   ``--int8`` its trained network is quantized and scored first (``int8_scores``).

An architecture the study already finished is not trained again: the trial reports ``same`` and
the driver reuses the earlier result. A retry of a trial whose driver died, and a trial of an
architecture early stopping stopped before, continue from that trial's last checkpoint (the run
folder is copied, the original kept) and report its earlier rungs again from ``rungs.json``, marked
``replayed`` but for the last, which the scheduler judges again (it may now go on). Runs on a worker: it reads the data folders and writes its run folder
(``searchsr.runs``), never the study's storage; a failure leaves its reason in the run folder.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any

from searchsr.config import ArchConfig
from searchsr.objectives import Constraint
from searchsr.runs import CHECKPOINT_FILE, CONFIG_FILE, FAILURE_FILE, RESULT_FILE, record_failure, trial_dir

RUNGS_FILE = "rungs.json"  # in the run folder: the rungs this run has passed, for a retry to replay

# What a trial's ``kind`` says it reported.
INFEASIBLE, RUNG, FINAL, SAME = "infeasible", "rung", "final", "same"


def violated(constraints: list[str] | tuple[str, ...], costs: dict[str, Any]) -> list[str]:
    """The constraints (given as text) that ``costs`` break, each with by how much; those on metrics
    the costs do not hold (psnr, ssim) are left to after training."""
    broken = []
    for constraint in map(Constraint.parse, constraints):
        if constraint.metric in costs and constraint.value(costs) > 0:
            broken.append(f"{constraint} (is {float(costs[constraint.metric]):.4g})")
    return broken


def run_trial(config: dict[str, Any], meter: Any) -> dict[str, Any]:
    """Ray Tune trainable: ``config`` is the searcher's (``arch``, ``number``, ``retry_of``, and the
    driver's common settings, among them ``constraints`` and ``rungs``); ``meter`` the driver's
    ``CostMeter`` actor."""
    import ray
    import torch
    from ray import tune

    from searchsr.data import load_split
    from searchsr.memory import check_fits_training, device_available_bytes
    from searchsr.schedule import load_schedule
    from searchsr.train import Rung, resolve_device, train

    start = time.perf_counter()
    os.nice(19)  # training yields the CPU to the CostMeter's timings (it runs at normal priority)
    number = config["number"]
    run_dir = trial_dir(config["runs_root"], number)
    common = {"number": number, "host": socket.gethostname()}
    if config.get("same_state") == "complete":  # the study finished this architecture: its result is reused
        report = {**common, "kind": SAME, "same_as": config["same_as"], "train_seconds": 0.0, "steps": 0}
        tune.report(report)
        return report
    try:
        cfg = ArchConfig.from_dict(config["arch"])
        common["arch_json"] = cfg.to_json()  # every result names its network, a rung-stopped trial's too
        schedule = load_schedule(config["schedule"])
        device = resolve_device(None)  # where ``train`` will run
        # refused up front (counted on the meta device) rather than OOM-killed, and re-queued, mid-training
        check_fits_training(cfg, schedule.batch_size, schedule.patch_size, device_available_bytes(device),
                            where="this machine" if device.type == "cpu" else f"this machine's {device}")
        costs = measured_costs(config, cfg, meter)
        broken = violated(config.get("constraints", ()), costs)
        if broken:
            report = {**costs, **common, "kind": INFEASIBLE, "infeasible": "; ".join(broken), "train_seconds": 0.0,
                      "steps": 0, "trial_seconds": time.perf_counter() - start, "arch_json": cfg.to_json()}
            tune.report(report)
            return report
        torch.set_num_threads(max(1, int(config["cpus_per_trial"])))
        train_set, val_set = load_split(config["train_dir"], config["val_dir"], cfg.scale,
                                        config.get("val_count", 0))
        source = config.get("retry_of") if config.get("retry_of") is not None else config.get("same_as")
        continue_from(config["runs_root"], source, run_dir)
        passed = read_rungs(run_dir)
        for i, rung in enumerate(passed):  # a resumed run: the rungs it passed before, for the scheduler's
            # records; the last is judged again (a stopped architecture drawn again may now go on)
            tune.report({**costs, **common, **rung_report(rung), "replayed": i < len(passed) - 1})

        def on_rung(rung: Rung) -> None:
            passed.append(rung.__dict__)
            write_rungs(run_dir, passed)
            tune.report({**costs, **common, **rung_report(rung.__dict__), "replayed": False})

        if (run_dir / RESULT_FILE).is_file():  # finished, but its driver died before recording it
            scores = finished_scores(run_dir)
        else:
            result = train(cfg, schedule, train_set, val_set, run_dir, seed=config["seed"],
                           resume=(run_dir / CONFIG_FILE).is_file(), progress=False,
                           rungs=config.get("rungs", ()), on_rung=on_rung, precision=config.get("precision", "fp32"),
                           memory_format=config.get("memory_format", "auto"), compile=config.get("compile", False))
            scores = {"psnr": result.val.psnr_y, "ssim": result.val.ssim_y, "psnr_bicubic": result.bicubic.psnr_y,
                      "train_seconds": result.train_seconds, "steps": result.step, "device": result.device}
        if config.get("int8"):
            scores.update(int8_scores(run_dir, cfg, train_set, val_set))
    except SystemExit:  # Tune stopping the trial (early stopping, Ctrl-C): not a failure of the trial
        raise
    except BaseException as err:
        record_failure(run_dir, err)
        raise
    metrics = {**scores, **costs, **common, "kind": FINAL, "trial_seconds": time.perf_counter() - start,
               "arch_json": cfg.to_json(), "schedule": schedule.name, "node_id": ray.get_runtime_context().get_node_id()}
    tune.report(metrics)
    return metrics


def describe_done(objectives: Any):
    """The progress line of a trial that ended (``objectives``: the study's, whose values it shows)."""

    def describe(trial: Any) -> str:
        r = trial.last_result or {}
        arch, retry = trial.config.get("arch", {}), trial.config.get("retry_of")
        head = (f"trial {trial.config.get('number')}{f' (retry of {retry})' if retry is not None else ''}: "
                f"nf={arch.get('nf')} N={arch.get('n_blocks')}")
        costs = ", ".join(f"{o.key}={r[o.key]:.4g}" for o in objectives if o.key in r)
        if r.get("kind") == SAME:
            return f"{head} drawn again: trial {r['same_as']}'s result reused, nothing trained"
        if r.get("kind") == INFEASIBLE:
            return f"{head} infeasible, not trained: {r[INFEASIBLE]}"
        if r.get("kind") == RUNG:
            return (f"{head} stopped at step {r['rung_step']}: psnr {r['rung_psnr']:.4g} there, {costs} "
                    f"({r.get('train_seconds', 0):.0f} s of training)")
        return f"{head} {costs} ({r.get('trial_seconds', 0):.0f} s)"
    return describe


def describe_error(trial: Any) -> str:
    """The progress line of a trial that failed: the first line of its recorded reason."""
    from searchsr.runs import failure_reason

    reason = failure_reason(trial_dir(trial.config.get("runs_root", "."), trial.config.get("number", 0)))
    return f"trial {trial.config.get('number')}: FAILED ({reason.splitlines()[0][:200]})"


def measured_costs(config: dict[str, Any], cfg: ArchConfig, meter: Any) -> dict[str, Any]:
    """The architecture's costs: the study's cached measurement when the driver found one
    (``searchsr.costcache``); counts and the driver's predicted latency when its plan says so
    (``searchsr.latencypolicy``); else the meter's, handed back for the driver to keep (``costs_json``)."""
    from searchsr.raysession import meter_get

    if config.get("costs"):
        return {**config["costs"], "latency_cached": True}
    plan = dict(config.get("latency_plan") or {})
    measure = plan.pop("measure", True)
    if not measure:
        return {**meter_get(meter.measure.remote(cfg.to_dict(), latency=False)), **plan, "latency_cached": False}
    costs = meter_get(meter.measure.remote(cfg.to_dict()))  # a failed --latency-cmd: one-line fail_reason
    return {**costs, **plan, "costs_json": json.dumps(costs), "cost_key": config.get("cost_key") or ""}


def int8_scores(run_dir: Path, cfg: ArchConfig, train_set: Any, val_set: Any) -> dict[str, float]:
    """The trained network quantized as ``export --int8`` would ship it (the graph, settings and calibration
    patches of its training images: ``searchsr.quantize``), scored on the trial's validation images."""
    from searchsr.export import load_run
    from searchsr.quantize import calibration_inputs, evaluate_onnx
    from searchsr.runtimes import deployed_graph

    graph = deployed_graph(load_run(run_dir)[1], cfg, int8=True, calibration=calibration_inputs(train_set, cfg.scale))
    scores = evaluate_onnx(graph, val_set)
    return {"psnr_int8": scores.psnr_y, "ssim_int8": scores.ssim_y}


def finished_scores(run_dir: Path) -> dict[str, Any]:
    """The final scores of a run folder whose training finished (``result.json``)."""
    result = json.loads((run_dir / RESULT_FILE).read_text())
    return {"psnr": result["val"]["psnr_y"], "ssim": result["val"]["ssim_y"],
            "psnr_bicubic": result["bicubic"]["psnr_y"], "steps": result["step"], "device": result["device"],
            "train_seconds": result.get("train_seconds", result["seconds"])}


def rung_report(rung: dict[str, Any]) -> dict[str, Any]:
    return {"kind": RUNG, "rung_step": rung["step"], "rung_psnr": rung["psnr"], "rung_ssim": rung["ssim"],
            "train_seconds": rung["train_seconds"], "steps": rung["step"]}


def read_rungs(run_dir: Path) -> list[dict[str, Any]]:
    """The rungs a resumed run passed (none without a checkpoint: training starts again from step 0)."""
    path = run_dir / RUNGS_FILE
    if not path.is_file() or not (run_dir / CHECKPOINT_FILE).is_file():
        return []
    return json.loads(path.read_text())


def write_rungs(run_dir: Path, rungs: list[dict[str, Any]]) -> None:
    from searchsr.files import atomic_write

    atomic_write(run_dir / RUNGS_FILE, json.dumps(rungs) + "\n")


def continue_from(runs_root: str, source: int | None, run_dir: Path) -> None:
    """A trial starts from the checkpoint an earlier trial of its architecture left (a retry's lost
    original, or a trial early stopping stopped): a copy, the earlier folder stays as it was; only when
    there is one and this trial has not started yet."""
    if source is None or run_dir.exists():
        return
    original = trial_dir(runs_root, source)
    if (original / CHECKPOINT_FILE).is_file() and not (original / RESULT_FILE).exists():
        shutil.copytree(original, run_dir, ignore=shutil.ignore_patterns(FAILURE_FILE))
