"""Measured costs kept in the study's storage: an architecture is measured once per runtime.

Counting FLOPs is free, but a latency measurement is not: tens of seconds of interleaved timing on
the host, a program lowered for ExecuTorch, or a minute on a phone over adb. Architectures recur in a
search (a sampler draws one again, a failed trial is retried, early stopping resumes one, a second
driver or a rerun meets what the first measured), so each measurement is kept in the study itself,
next to the trials it serves: a study system attribute ``searchsr:costs:<key>`` holding the meter's
whole result (``searchsr.meter.CostMeter.measure``).

The key is the architecture (its canonical JSON, every field) and the meter's *scope*: the latency
backend, the runtime and its version, threads, precision, the latency input size and, for a
``--latency-cmd``, the command template. Another runtime version, another precision or another size
is another key, so nothing is reused across what would change the number. The host is not part of
the key: latency is a ratio to XLITE timed alongside, times the study's one yardstick
(``searchsr.meter``), which is what makes timings from two machines of a study comparable at all.

Single writer, as for everything else in the storage: the driver looks the key up when it hands a
trial its configuration (``recording``: the trial then measures nothing) and stores what a trial
measured when its first result comes back. Within one driver the meter also remembers what it
measured, so two trials of one architecture running at once are measured once.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import optuna

from searchsr import internals
from searchsr.config import arch_from_dict

PREFIX = "searchsr:costs:"


def cost_key(arch: dict[str, Any], scope: dict[str, Any]) -> str | None:
    """The cache key of ``arch`` measured in ``scope`` (``CostMeter.scope``); None for an arch that is not
    valid (a hand-enqueued mistake: its trial measures nothing and fails with the reason)."""
    try:
        canonical = arch_from_dict(arch).to_dict()
    except (ValueError, TypeError):
        return None
    text = json.dumps({"arch": canonical, "scope": scope}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def cached_costs(study: optuna.Study, key: str | None) -> dict[str, Any] | None:
    """What an earlier trial (of any run or driver of ``study``) measured under ``key``, or None."""
    if key is None:
        return None
    storage = internals.study_storage(study)
    found = storage.get_study_system_attrs(internals.study_id(study)).get(PREFIX + key)
    return dict(found) if isinstance(found, dict) else None


def remember_costs(study: optuna.Study, key: str | None, costs: dict[str, Any]) -> None:
    """Keep ``costs`` under ``key`` (the first measurement stays: a key is one architecture on one runtime)."""
    if key is None or cached_costs(study, key) is not None:
        return
    kept = {k: v for k, v in costs.items() if k != "latency_cached"}
    internals.study_storage(study).set_study_system_attr(internals.study_id(study), PREFIX + key, kept)


def cache_size(study: optuna.Study) -> int:
    """How many measurements the study keeps."""
    attrs = internals.study_storage(study).get_study_system_attrs(internals.study_id(study))
    return sum(k.startswith(PREFIX) for k in attrs)
