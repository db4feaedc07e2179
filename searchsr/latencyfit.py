"""Latency predicted from per-layer costs, nn-Meter style, for backends where measuring is slow (a phone).

The model. A network's latency on one runtime is close to the sum of its kernels' latencies, and a
kernel's latency grows about linearly with the work it does (nn-Meter, Zhang et al., MobiSys 2021:
per-kernel predictors put 99% of networks within +-10% on mobile CPUs). The family has few kernel
kinds, so the sum is a linear model over per-kind totals of work (``FEATURES``)::

    latency_ms ~= intercept + sum_k rate_k * work_k(arch)

with work_k at the study's latency input size: MACs of depthwise convolutions (the blocks' kxk and
the tail's 3x3), MACs of 1x1 convolutions (SE's two included), elements pooled and gated by SE,
non-linearity outputs per activation kind (a ReLU fuses into its conv, a SiLU is two kernels: each
kind gets its own rate), elements written by adds, pixel shuffles and padding, MACs of the bicubic
skip, and the operator count (a fixed overhead per kernel launch, which dominates small inputs).
BatchNorm does not appear: every backend times the BN-fused network.

Why analytic. The counts follow ``searchsr.arch``'s layout from ``ArchConfig`` fields in
microseconds, without torch, so the driver and ``searchsr latency fit`` never build a network;
tests/test_latencyfit.py checks every count against the built network's hooks.

The fit. Rates >= 0 (non-negative least squares, ``scipy.optimize.nnls``: a kernel never saves
time, and the constraint stops correlated features from cancelling out with huge opposite rates),
on relative error (each row divided by its latency: the accuracy measure is relative, and a 3 ms
network matters as much as a 40 ms one). Two alternatives are fitted as well, the same on absolute
error and a power law (log latency linear in log MACs, log elements, log operators), and the one
with the best k-fold cross-validation on the training data is kept (``KINDS``).

Accuracy. nn-Meter's measure: the share of networks predicted within +-10% of their measured
latency, on networks held out of the fit (``cross_validate``: k-fold or leave-one-out; the model
choice is redone inside each training fold, so the figure is honest). Identical architectures (a
reused or cached measurement) are pooled into one point (their median latency) first, so no network
is both trained on and tested. A predictor is valid inside the space it was fitted on: an activation
kind it never saw is charged the mean rate of those it saw, and a feature the space holds constant (the
bicubic skip, where every network has it) gets rate 0, its cost carried by the intercept.
"""

from __future__ import annotations

import functools
import json
import statistics
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from searchsr.config import ACTIVATIONS, ArchConfig, upsample_factors
from searchsr.errors import UsageError

LR_SIZE = (128, 128)  # searchsr.meter.LATENCY_SIZE: the LR input search-time latency is measured at
MIN_TRIALS = 10  # distinct measured architectures `searchsr latency fit` asks for
TOLERANCE = 0.10  # nn-Meter's accuracy measure: the share of predictions within +-10%
INNER_FOLDS = 5  # choosing the model kind inside a fit
KINDS = ("linear-relative", "linear-absolute", "power")  # candidate models, the first the default
ACT_FEATURES = tuple(f"act_{a}_melements" for a in ACTIVATIONS)
FEATURES = ("depthwise_mmacs", "pointwise_mmacs", "se_melements", *ACT_FEATURES, "elementwise_melements",
            "skip_mmacs", "ops")
POWER_TERMS = ("log_mmacs", "log_melements", "log_ops")  # the power law's regressors
MEASURED_STATES = ("COMPLETE", "PRUNED")


def unit(name: str) -> str:
    """What a coefficient of ``name`` is measured in."""
    if name in POWER_TERMS:
        return "exponent"
    if name == "ops":
        return "ms per operator"
    return "ms per M MACs" if name.endswith("mmacs") else "ms per M elements"


@functools.lru_cache(maxsize=8192)
def _work(arch_json: str, lr_size: tuple[int, int]) -> tuple[float, ...]:
    """The FEATURES of one architecture (see the module docstring), counted from ``searchsr.arch``'s layout."""
    cfg = ArchConfig.from_dict(json.loads(arch_json))
    h, w = lr_size
    px = h * w
    e, nf, c, k, n = cfg.expanded, cfg.nf, cfg.tail, cfg.kernel_size, cfg.n_blocks
    dw = pw = se = act = elementwise = skip = 0.0
    # head block (3 -> nf, no SE, no residual) and N body blocks: 1x1 expand, act, kxk dw, act, [SE], 1x1 project
    pw += (3 * e + e * nf) * px + n * 2 * e * nf * px
    dw += (n + 1) * k * k * e * px
    act += (n + 1) * 2 * e * px
    elementwise += n * nf * px + nf * px  # block residuals, the long skip
    ops = 5 + 6 * n + 1
    if cfg.se:  # pool, 1x1 e -> sq, ReLU, 1x1 sq -> e, hard-sigmoid, gate
        sq = e // cfg.se_ratio
        se += n * (2 * e * px + e + sq)
        pw += n * 2 * e * sq
        ops += 6 * n
    pw += nf * c * px  # reduce
    ops += 1
    pixels = px
    for f in upsample_factors(cfg.scale):  # 1x1 c -> f^2 c, pixel shuffle, act, 3x3 dw
        pw += c * c * f * f * pixels
        pixels *= f * f
        elementwise += c * pixels
        act += c * pixels
        dw += 9 * c * pixels
        ops += 4
    dw += 9 * c * pixels  # post_dw
    pw += (c * c + 3 * c) * pixels  # post_pw, to_rgb
    act += c * pixels
    ops += 4
    if cfg.bicubic_skip:  # symmetric pad (two concatenations), 5x5 conv to scale^2 phases, shuffle, add
        skip += 3 * cfg.scale**2 * 25 * px
        elementwise += 3 * (h + 4) * w + 3 * (h + 4) * (w + 4) + 2 * 3 * cfg.scale**2 * px
        ops += 5
    acts = [act if a == cfg.act else 0.0 for a in ACTIVATIONS]
    return tuple(v / 1e6 for v in (dw, pw, se, *acts, elementwise, skip)) + (float(ops),)


def _arch_key(arch: dict[str, Any] | ArchConfig) -> str:
    return arch.to_json() if isinstance(arch, ArchConfig) else json.dumps(arch, sort_keys=True)


def features(arch: dict[str, Any] | ArchConfig, lr_size: tuple[int, int] = LR_SIZE) -> np.ndarray:
    """The architecture's work per kernel kind (``FEATURES``, in that order) for one LR input of ``lr_size``;
    cached per architecture. An invalid architecture is a ``UsageError`` (a ``ValueError``)."""
    return np.array(_work(_arch_key(arch), tuple(lr_size)))


def _design(archs: Iterable[dict[str, Any] | ArchConfig], lr_size: tuple[int, int]) -> np.ndarray:
    rows = [features(a, lr_size) for a in archs]
    return np.stack(rows) if rows else np.empty((0, len(FEATURES)))


def _power_terms(x: np.ndarray) -> np.ndarray:
    """Logs of total MACs, total elements and operators (the power law's regressors), with a constant."""
    macs = x[:, [FEATURES.index(n) for n in FEATURES if n.endswith("mmacs")]].sum(axis=1)
    elements = x[:, [FEATURES.index(n) for n in FEATURES if n.endswith("melements")]].sum(axis=1)
    return np.column_stack([np.ones(len(x)), np.log(macs), np.log(elements), np.log(x[:, FEATURES.index("ops")])])


def _fit_arrays(kind: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Coefficients of ``kind`` (intercept last for the linear kinds, first for the power law)."""
    if kind == "power":
        return np.linalg.lstsq(_power_terms(x), np.log(y), rcond=None)[0]
    from scipy.optimize import nnls

    a = np.column_stack([np.where(constant_features(x), 0.0, x), np.ones(len(y))])  # constants: the intercept's
    weights = 1.0 / y if kind == "linear-relative" else np.full(len(y), 1.0 / float(np.mean(y)))
    a, b = a * weights[:, None], y * weights
    scale = np.linalg.norm(a, axis=0)
    scale[scale == 0] = 1.0  # a feature the data never has (an unseen activation kind): rate 0 for now
    coef = nnls(a / scale, b, maxiter=50 * a.shape[1])[0] / scale
    seen = [FEATURES.index(f) for f in ACT_FEATURES if x[:, FEATURES.index(f)].any()]
    unseen = [FEATURES.index(f) for f in ACT_FEATURES if not x[:, FEATURES.index(f)].any()]
    if seen:
        coef[unseen] = coef[seen].mean()
    return coef


def constant_features(x: np.ndarray) -> np.ndarray:
    """Mask of the features that are the same non-zero amount for every row (the bicubic skip of a space that
    fixes it): the data cannot tell their rate from the intercept, so the linear fit leaves them at 0 and the
    intercept carries their cost."""
    return (np.ptp(x, axis=0) <= 1e-9 * np.abs(x).max(axis=0)) & x.any(axis=0) if len(x) > 1 else np.zeros(
        x.shape[1], bool)


def _apply(kind: str, coef: np.ndarray, x: np.ndarray) -> np.ndarray:
    if kind == "power":
        return np.exp(_power_terms(x) @ coef)
    return x @ coef[:-1] + coef[-1]


def _folds(n: int, folds: int | None, seed: int) -> list[np.ndarray]:
    """Held-out index sets: ``folds`` random folds, or one point each (leave-one-out: ``None`` or >= n)."""
    k = n if folds is None or folds >= n else folds
    order = np.random.default_rng(seed).permutation(n)
    return [np.sort(order[i::k]) for i in range(k)]


def _cv_errors(kind: str, x: np.ndarray, y: np.ndarray, folds: int | None, seed: int) -> np.ndarray:
    errors = np.empty(len(y))
    for held in _folds(len(y), folds, seed):
        train = np.setdiff1d(np.arange(len(y)), held)
        errors[held] = _apply(kind, _fit_arrays(kind, x[train], y[train]), x[held]) / y[held] - 1
    return errors


def _choose(x: np.ndarray, y: np.ndarray, kinds: Sequence[str], tolerance: float, seed: int) -> str:
    """The kind with the most inner cross-validated predictions within ``tolerance`` (then the smallest median
    error); the first kind where there are too few points to tell."""
    if len(kinds) == 1 or len(y) < INNER_FOLDS:
        return kinds[0]

    def score(kind: str) -> tuple[float, float]:
        errors = np.abs(_cv_errors(kind, x, y, INNER_FOLDS, seed))
        return float(np.mean(errors <= tolerance)), -float(np.median(errors))

    return max(kinds, key=score)


def _pool(archs: Sequence[dict[str, Any] | ArchConfig], latencies_ms: Sequence[float],
          lr_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """One row per distinct architecture (the median of its latencies), in first-seen order."""
    if len(archs) != len(latencies_ms):
        raise UsageError(f"{len(archs)} architectures but {len(latencies_ms)} latencies")
    pooled: dict[str, list[float]] = {}
    first: dict[str, dict[str, Any] | ArchConfig] = {}
    for arch, ms in zip(archs, latencies_ms):
        if not np.isfinite(ms) or ms <= 0:
            raise UsageError(f"latencies must be positive and finite, got {ms!r}")
        key = ArchConfig.from_dict(arch).to_json() if isinstance(arch, dict) else _arch_key(arch)
        pooled.setdefault(key, []).append(float(ms))
        first.setdefault(key, arch)
    return _design(first.values(), lr_size), np.array([statistics.median(v) for v in pooled.values()])


def _check_kinds(kinds: Sequence[str]) -> None:
    if not kinds or any(k not in KINDS for k in kinds):
        raise UsageError(f"model kinds must be among {', '.join(KINDS)}, got {', '.join(kinds) or 'none'}")


@dataclass(frozen=True)
class LatencyPredictor:
    """A fitted latency model: ``predict(arch)`` in milliseconds, at the LR size it was fitted for."""

    kind: str  # one of KINDS
    coefficients: dict[str, float]  # FEATURES (linear kinds, ms per unit) or POWER_TERMS (exponents)
    intercept: float  # ms (linear kinds) or log ms (power law)
    lr_size: tuple[int, int] = LR_SIZE
    trained_on: int = 0  # distinct architectures
    fixed: tuple[str, ...] = ()  # features constant in the training data: their cost is in the intercept

    def _vector(self) -> np.ndarray:
        values = [self.coefficients[name] for name in (POWER_TERMS if self.kind == "power" else FEATURES)]
        return np.array([self.intercept, *values] if self.kind == "power" else [*values, self.intercept])

    def predict_many(self, archs: Iterable[dict[str, Any] | ArchConfig]) -> np.ndarray:
        return _apply(self.kind, self._vector(), _design(archs, self.lr_size))

    def predict(self, arch: dict[str, Any] | ArchConfig) -> float:
        """Predicted latency in ms; an invalid architecture is a ``UsageError`` (a ``ValueError``)."""
        return float(self.predict_many([arch])[0])

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "coefficients": dict(self.coefficients), "intercept": self.intercept,
                "lr_size": list(self.lr_size), "trained_on": self.trained_on, "fixed": list(self.fixed)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LatencyPredictor:
        """The stored form back; one that does not match this version's features is a one-line ``UsageError``."""
        try:
            kind, coefficients = data["kind"], {str(k): float(v) for k, v in data["coefficients"].items()}
            names = POWER_TERMS if kind == "power" else FEATURES
            if kind not in KINDS or tuple(coefficients) != names:
                raise ValueError(f"kind {kind!r} with coefficients {', '.join(coefficients)}")
            h, w = (int(v) for v in data.get("lr_size", LR_SIZE))
            fixed = tuple(str(f) for f in data.get("fixed", ()))
            if not set(fixed) <= set(FEATURES):
                raise ValueError(f"unknown features {', '.join(sorted(set(fixed) - set(FEATURES)))}")
            return cls(kind, coefficients, float(data["intercept"]), (h, w), int(data.get("trained_on", 0)), fixed)
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise UsageError(f"not a stored latency predictor of this searchsr version ({err})") from None


def fit_predictor(archs: Sequence[dict[str, Any] | ArchConfig], latencies_ms: Sequence[float], *,
                  lr_size: tuple[int, int] = LR_SIZE, kinds: Sequence[str] = KINDS, tolerance: float = TOLERANCE,
                  seed: int = 0) -> LatencyPredictor:
    """The latency model of measured architectures (identical ones pooled); with several ``kinds``, the one
    with the best inner cross-validation. Latencies are in ms, measured at ``lr_size``."""
    _check_kinds(kinds)
    x, y = _pool(archs, latencies_ms, tuple(lr_size))
    if not len(y):
        raise UsageError("no measured architectures to fit a latency predictor on")
    kind = _choose(x, y, kinds, tolerance, seed)
    coef = _fit_arrays(kind, x, y)
    names, intercept = (POWER_TERMS, coef[0]) if kind == "power" else (FEATURES, coef[-1])
    values = coef[1:] if kind == "power" else coef[:-1]
    fixed = tuple(f for f, c in zip(FEATURES, constant_features(x)) if c) if kind != "power" else ()
    return LatencyPredictor(kind, {n: float(v) for n, v in zip(names, values)}, float(intercept),
                            tuple(lr_size), len(y), fixed)


@dataclass(frozen=True)
class FitReport:
    """Cross-validated accuracy of the predictor on architectures held out of its fit."""

    n: int  # distinct architectures, each predicted once by a fit that never saw it
    measurements: int  # latencies behind them (a reused or cached measurement counts again)
    folds: int  # n: leave-one-out
    errors: tuple[float, ...]  # (predicted - measured) / measured, per architecture
    rmse_ms: float
    kinds: tuple[str, ...]  # the model kind each fold chose

    def share_within(self, tolerance: float) -> float:
        """Share of held-out predictions within +-``tolerance`` (0.10: nn-Meter's measure); 0 when none."""
        return float(np.mean(np.abs(self.errors) <= tolerance + 1e-12)) if self.errors else 0.0

    @property
    def within_10(self) -> float:
        return self.share_within(0.10)

    @property
    def within_5(self) -> float:
        return self.share_within(0.05)

    @property
    def median_error(self) -> float:
        return float(np.median(np.abs(self.errors))) if self.errors else float("nan")

    @property
    def max_error(self) -> float:
        return float(np.max(np.abs(self.errors))) if self.errors else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {"n": self.n, "measurements": self.measurements, "folds": self.folds, "within_10": self.within_10,
                "within_5": self.within_5, "median_rel_error": self.median_error, "max_rel_error": self.max_error,
                "rmse_ms": self.rmse_ms, "kinds": dict(Counter(self.kinds))}


def cross_validate(archs: Sequence[dict[str, Any] | ArchConfig], latencies_ms: Sequence[float],
                   folds: int | None = 5, seed: int = 0, *, lr_size: tuple[int, int] = LR_SIZE,
                   kinds: Sequence[str] = KINDS, tolerance: float = TOLERANCE) -> FitReport:
    """k-fold (``folds``; ``None``: leave-one-out) cross-validation of ``fit_predictor`` over the distinct
    architectures: every one is predicted by a fit (model choice included) that did not see it. Fewer than
    two distinct architectures validate nothing: an empty report, share 0."""
    _check_kinds(kinds)
    if folds is not None and folds < 2:
        raise UsageError(f"folds must be >= 2 (or leave-one-out), got {folds}")
    x, y = _pool(archs, latencies_ms, tuple(lr_size))
    if len(y) < 2:
        return FitReport(len(y), len(latencies_ms), 0, (), float("nan"), ())
    predicted, chosen = np.empty(len(y)), []
    split = _folds(len(y), folds, seed)
    for held in split:
        train = np.setdiff1d(np.arange(len(y)), held)
        kind = _choose(x[train], y[train], kinds, tolerance, seed)
        predicted[held] = _apply(kind, _fit_arrays(kind, x[train], y[train]), x[held])
        chosen.append(kind)
    errors = predicted / y - 1
    return FitReport(len(y), len(latencies_ms), len(split), tuple(float(e) for e in errors),
                     float(np.sqrt(np.mean((predicted - y) ** 2))), tuple(chosen))


@dataclass(frozen=True)
class Measurements:
    """A study's measured latencies, ready to fit: what ``measurements`` kept and left out."""

    archs: tuple[dict[str, Any], ...]
    latencies_ms: tuple[float, ...]
    lr_size: tuple[int, int]  # the latency input size they were measured at
    distinct: int  # distinct architectures among them
    other_size: int  # measured trials at another latency input size, left out
    predicted: int  # trials whose latency was predicted, left out


def _size(text: Any) -> tuple[int, int] | None:
    try:
        h, w = (int(v) for v in str(text).lower().split("x"))
        return (h, w) if h > 0 and w > 0 else None
    except ValueError:
        return None


def measurements(trials: Iterable[Any]) -> Measurements:
    """The measured latencies among Optuna trials (``FrozenTrial``-like: ``state.name``, ``user_attrs``):
    COMPLETE or PRUNED trials with ``arch`` (a member of the family) and a positive ``latency_ms`` whose
    ``latency_source`` is absent or ``measured``, at the latency input size most of them share."""
    rows, predicted = [], 0
    for trial in trials:
        attrs = trial.user_attrs
        if trial.state.name not in MEASURED_STATES or "arch" not in attrs or "latency_ms" not in attrs:
            continue
        if attrs.get("latency_source", "measured") != "measured":
            predicted += 1
            continue
        try:
            arch = ArchConfig.from_dict(attrs["arch"]).to_dict()
            ms = float(attrs["latency_ms"])
        except (ValueError, TypeError):  # a reference network, a damaged record
            continue
        size = _size(attrs.get("latency_lr_size", "x".join(map(str, LR_SIZE))))
        if size is not None and np.isfinite(ms) and ms > 0:
            rows.append((arch, ms, size))
    size = Counter(r[2] for r in rows).most_common(1)[0][0] if rows else LR_SIZE
    kept = [r for r in rows if r[2] == size]
    return Measurements(tuple(r[0] for r in kept), tuple(r[1] for r in kept), size,
                        len({json.dumps(r[0], sort_keys=True) for r in kept}), len(rows) - len(kept), predicted)
