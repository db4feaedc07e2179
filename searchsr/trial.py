"""One search trial, as a Ray Tune trainable: train the proxy schedule, score, cost; report once.

Runs on a worker: it reads the data folders and writes its run folder (``searchsr.runs``), never
the study's storage; a failure leaves its reason in the run folder for the driver to record.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

from searchsr.config import ArchConfig
from searchsr.runs import CONFIG_FILE, record_failure, trial_dir


def run_trial(config: dict[str, Any], meter: Any) -> dict[str, Any]:
    """Ray Tune trainable: ``config`` is the searcher's (``arch``, ``number``, and the driver's common
    settings); ``meter`` the driver's ``CostMeter`` actor."""
    import ray
    import torch
    from ray import tune

    from searchsr.memory import check_fits_training, device_available_bytes
    from searchsr.data import load_split
    from searchsr.schedule import load_schedule
    from searchsr.train import resolve_device, train

    start = time.perf_counter()
    os.nice(19)  # training yields the CPU to the CostMeter's timings (it runs at normal priority)
    run_dir = trial_dir(config["runs_root"], config["number"])
    try:
        cfg = ArchConfig.from_dict(config["arch"])
        torch.set_num_threads(max(1, int(config["cpus_per_trial"])))
        schedule = load_schedule(config["schedule"])
        device = resolve_device(None)  # where ``train`` will run
        # refused up front (counted on the meta device) rather than OOM-killed, and re-queued, mid-training
        check_fits_training(cfg, schedule.batch_size, schedule.patch_size, device_available_bytes(device),
                            where="this machine" if device.type == "cpu" else f"this machine's {device}")
        train_set, val_set = load_split(config["train_dir"], config["val_dir"], cfg.scale,
                                        config.get("val_count", 0))
        result = train(cfg, schedule, train_set, val_set, run_dir, seed=config["seed"],
                       resume=(run_dir / CONFIG_FILE).is_file(), progress=False)
        costs = ray.get(meter.measure.remote(cfg.to_dict()))
    except BaseException as err:
        record_failure(run_dir, err)
        raise
    metrics = {"psnr": result.val.psnr_y, "ssim": result.val.ssim_y, "psnr_bicubic": result.bicubic.psnr_y,
               **costs, "train_seconds": result.seconds, "trial_seconds": time.perf_counter() - start,
               "steps": result.step, "arch_json": cfg.to_json(), "schedule": schedule.name, "device": result.device,
               "host": socket.gethostname(), "node_id": ray.get_runtime_context().get_node_id()}
    tune.report(metrics)
    return metrics
