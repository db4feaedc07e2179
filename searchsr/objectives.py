"""What a trial is scored on: the metrics every trial records, the objectives a study optimises
(any of them, each with its Optuna direction), and constraints such as ``latency_ms <= 40``
(Optuna's constraints mechanism: a violating trial stays off the front and teaches the sampler).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import optuna

from searchsr.errors import UsageError

# Names a trial records (user attributes) and constraints may use.
METRICS = ("psnr", "ssim", "latency_ms", "latency_ratio", "flops", "params", "activations", "memory",
           "psnr_int8", "ssim_int8", "latency_int8_ms")  # the last three with --int8

# objective name -> (Optuna direction, metric / user-attribute key)
OBJECTIVES: dict[str, tuple[str, str]] = {
    "psnr": ("maximize", "psnr"),
    "ssim": ("maximize", "ssim"),
    "latency": ("minimize", "latency_ms"),
    "flops": ("minimize", "flops"),
    "params": ("minimize", "params"),
    "activations": ("minimize", "activations"),
    "memory": ("minimize", "memory"),
    # with --int8 (implied by these): every trial quantized as `export --int8` quantizes (searchsr.quantize)
    "psnr_int8": ("maximize", "psnr_int8"),
    "ssim_int8": ("maximize", "ssim_int8"),
    "latency_int8": ("minimize", "latency_int8_ms"),
}
INT8_OBJECTIVES = ("psnr_int8", "ssim_int8", "latency_int8")


@dataclass(frozen=True)
class Constraint:
    """``metric <= bound`` or ``metric >= bound``; parsed from the space file or the CLI."""

    metric: str  # one of METRICS
    op: str  # "<=" | ">="
    bound: float

    @classmethod
    def parse(cls, text: Any) -> Constraint:
        number = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
        match = re.fullmatch(rf"\s*(\w+)\s*(<=|>=)\s*({number})\s*", text) if isinstance(text, str) else None
        if match is None:
            raise UsageError(f"expected '<metric> <= <number>' or '<metric> >= <number>', got {text!r}")
        metric, op, bound = match.groups()
        if metric not in METRICS:
            raise UsageError(f"unknown metric {metric!r} (known: {', '.join(METRICS)})")
        return cls(metric, op, float(bound))

    def value(self, metrics: Mapping[str, float]) -> float:
        """Optuna's convention: <= 0 is feasible, and the size says by how much it is violated."""
        if self.metric not in metrics:
            raise UsageError(f"constraint {self} needs metric {self.metric!r}, have {sorted(metrics)}")
        excess = float(metrics[self.metric]) - self.bound
        return excess if self.op == "<=" else -excess

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {self.bound:g}"


def constraint_values(constraints: Sequence[Constraint], metrics: Mapping[str, float]) -> list[float]:
    """For a sampler's ``constraints_func`` (deprecated in Optuna 5.0, removed in 7.0)."""
    return [c.value(metrics) for c in constraints]


def set_constraints(trial: optuna.trial.BaseTrial, constraints: Sequence[Constraint],
                    metrics: Mapping[str, float]) -> None:
    """Optuna 5.0's way: samplers and ``study.best_trials`` read ``trial.constraints``; call before ``tell``."""
    for constraint in constraints:
        trial.set_constraint(str(constraint), constraint.value(metrics))


@dataclass(frozen=True)
class Objective:
    name: str
    direction: str  # "maximize" | "minimize"
    key: str  # metric / user-attribute key that holds the value


def parse_objectives(text: str) -> tuple[Objective, ...]:
    """``"psnr,latency"`` -> objectives in that order (the order of Optuna's values)."""
    names = [n.strip() for n in text.split(",")]
    for name in names:
        if name not in OBJECTIVES:
            raise UsageError(f"unknown objective {name!r} (choose from {', '.join(OBJECTIVES)})")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise UsageError(f"objective {duplicates[0]!r} given twice")
    return tuple(Objective(n, *OBJECTIVES[n]) for n in names)


def parse_constraints(texts: Sequence[str], flag: str = "--constraint") -> tuple[Constraint, ...]:
    """Constraints given on the command line; each bad one is a one-line error naming ``flag``."""
    constraints = []
    for text in texts:
        try:
            constraints.append(Constraint.parse(text))
        except ValueError as err:
            raise UsageError(f"{flag}: {err}") from None
    return tuple(constraints)
