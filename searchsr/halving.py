"""Pareto successive halving, the pure part: where the rungs are, and who goes on at a rung.

Asynchronous successive halving (ASHA, Li et al. 2020) in its stopping form: a trial reaching a
rung is compared at once with every trial that reached that rung before it, and goes on only if
it ranks in the top ``1/eta`` of them; otherwise it stops there. No trial waits for others, so it
works with any concurrency and any number of drivers.

With several objectives, "ranks" means: non-dominated sorting of the rung members' objective
vectors (PSNR at the rung, the cost objectives exact), then crowding distance within a front
(NSGA-II's order; the extremes of a front first). Each member's vector is a *loss* vector, every
objective turned to minimise, so the order is a real ranking, not a score read the wrong way
round (the trap in porting Syne Tune's MOASHA as is).

Used by the Ray scheduler (``searchsr.rungs``) and by the replay benchmark (``searchsr.replay``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

DEFAULT_ETA = 3
RUNGS_ATTR = "rungs"  # on an Optuna trial: {"<step>": {"psnr": .., "ssim": .., "train_seconds": .., <costs>}}
STOPPED_ATTR = "stopped_at"  # on a PRUNED trial: the rung step early stopping stopped it at


def rung_steps(total_steps: int, first_rung: int, eta: int = DEFAULT_ETA) -> tuple[int, ...]:
    """``first_rung * eta**k``: the steps at which a trial may be stopped. A rung must save at least
    ``1/eta`` of a trial's training (999 of 1000 steps would only cost a validation)."""
    if eta < 2:
        raise ValueError(f"eta must be >= 2, got {eta}")
    if not 0 < first_rung < total_steps:
        raise ValueError(f"the first rung must be between 1 and the schedule's {total_steps} steps, got {first_rung}")
    steps, step = [], first_rung
    while step <= total_steps * (1 - 1 / eta):
        steps.append(step)
        step *= eta
    return tuple(steps)


def default_first_rung(total_steps: int, eta: int = DEFAULT_ETA, rungs: int = 3) -> int:
    """The first rung that gives ``rungs`` rungs below the schedule's end (e.g. 1500 steps, eta 3:
    55, 166, 500), so a trial that is stopped at once costs about 1/27 of a full one."""
    return max(1, math.ceil(total_steps / eta ** rungs))


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """``a`` is no worse than ``b`` anywhere and better somewhere (losses: lower is better)."""
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def nondominated_fronts(points: Sequence[Sequence[float]]) -> list[list[int]]:
    """Indices of ``points`` by non-dominated front: the first front is the Pareto set."""
    remaining = list(range(len(points)))
    fronts = []
    while remaining:
        front = [i for i in remaining if not any(dominates(points[j], points[i]) for j in remaining if j != i)]
        fronts.append(front)
        remaining = [i for i in remaining if i not in front]
    return fronts


def crowding_distances(points: Sequence[Sequence[float]]) -> list[float]:
    """NSGA-II's crowding distance of each point within ``points`` (one front): the extremes of each
    objective get infinity, the others the normalised side lengths of the box their neighbours span."""
    n = len(points)
    distance = [0.0] * n
    if n <= 2:
        return [math.inf] * n
    for k in range(len(points[0])):
        order = sorted(range(n), key=lambda i: points[i][k])
        low, high = points[order[0]][k], points[order[-1]][k]
        distance[order[0]] = distance[order[-1]] = math.inf
        if high == low:
            continue
        for before, i, after in zip(order, order[1:], order[2:]):
            distance[i] += (points[after][k] - points[before][k]) / (high - low)
    return distance


def pareto_order(points: Mapping[int, Sequence[float]]) -> list[int]:
    """The keys of ``points`` best first: by front, then by crowding distance (larger first), then by
    key (earlier trials first, so the order is deterministic)."""
    keys = sorted(points)
    vectors = [points[k] for k in keys]
    ordered = []
    for front in nondominated_fronts(vectors):
        crowd = crowding_distances([vectors[i] for i in front])
        ordered += [keys[i] for _, i in sorted(zip(crowd, front), key=lambda ci: (-ci[0], ci[1]))]
    return ordered


def goes_on(members: Mapping[int, Sequence[float]], candidate: int, eta: int = DEFAULT_ETA) -> bool:
    """Whether ``candidate`` (one of ``members``, the rung's losses by trial) ranks in the top
    ``1/eta`` of the rung. The first trial to reach a rung always goes on (ASHA's stopping rule)."""
    if candidate not in members:
        raise KeyError(f"trial {candidate} is not a member of the rung")
    position = pareto_order(members).index(candidate)
    return position < max(1.0, len(members) / eta)
