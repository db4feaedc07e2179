"""Search spaces (YAML) -> typed params and Optuna sampling (objectives and constraints: ``searchsr.objectives``).

A space file names ArchConfig fields and how to search each one::

    params:
      nf: {int: [16, 72], step: 8}              # integer range; step defaults to 1; log: true
      expansion: {float: [1.0, 4.0], step: 0.5} # float range; step or log: true (not both)
      kernel_size: {choices: [3, 5]}            # categorical
      se_ratio: {choices: [2, 4, 8], when: {se: true}}   # conditional
      scale: 4                                  # a bare value (or {fixed: 4}) is fixed
    constraints:                                # optional; Optuna's constraints mechanism
      - latency_ms <= 200                       # <metric> <= | >= <number> (searchsr.objectives)

Fields not listed keep ArchConfig's default. ``when: {other: value, ...}`` makes a param
exist only while every named param (a choices or fixed param declared *above* it, so there
are no cycles) has that value; otherwise the trial does not suggest it and ArchConfig's
default is used (also by conditions further down), which keeps inactive knobs out of the
sampler's history. The file is checked completely on load: every error is a one-line
UsageError naming the file and the key, so a bad space is rejected before a study is touched.

Enqueueing a known network (``study.enqueue_trial(to_params(space, cfg))``): Optuna 5.0
returns an enqueued int/float value as is, with a UserWarning, even when it lies outside
the range or off the step grid, so LITE/XLITE can be enqueued into any space whose
categoricals and fixed values admit them; samplers still draw new trials inside the range.
An enqueued categorical value that is not a choice fails the trial at ``suggest_categorical``,
so ``to_params`` rejects it (and any other value the space cannot reproduce) up front.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import optuna
import yaml

from searchsr.config import ArchConfig
from searchsr.errors import UsageError
from searchsr.objectives import Constraint

Scalar = bool | int | float | str
SCALARS = (bool, int, float, str)
Condition = tuple[tuple[str, Scalar], ...]  # ((param, required value), ...): hashable, ordered

DEFAULTS: dict[str, Any] = ArchConfig().to_dict()
SPACE_DIR = Path(__file__).parent / "spaces"  # the shipped spaces, documented in mbv3_sr.yaml

def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _same(a: Any, b: Any) -> bool:
    """Equality that keeps True apart from 1 (Python does not, ArchConfig does)."""
    return isinstance(a, bool) == isinstance(b, bool) and a == b


def _check_range(low: Any, high: Any, step: Any, log: Any, integer: bool) -> None:
    """Optuna's rules for a distribution, as load-time errors rather than its runtime warnings."""
    for name, value in (("low", low), ("high", high), ("step", step)):
        if value is None and name == "step":
            continue
        if isinstance(value, bool) or not (isinstance(value, int) if integer else
                                           _is_number(value) and math.isfinite(value)):
            hint = " (YAML 1.1 reads 1e-3 as text: write 1.0e-3)" if isinstance(value, str) else ""
            raise UsageError(f"{name} must be {'an integer' if integer else 'a finite number'}, got {value!r}{hint}")
    if not isinstance(log, bool):
        raise UsageError(f"log must be true or false, got {log!r}")
    if low > high:
        raise UsageError(f"inverted range: low {low} > high {high}")
    if step is not None and step <= 0:
        raise UsageError(f"step must be > 0, got {step}")
    if step is not None and abs((high - low) / step - round((high - low) / step)) > 1e-9:
        raise UsageError(f"high - low must be a multiple of step {step}, got [{low}, {high}]")
    if log and (low <= 0 or step != (1 if integer else None)):
        raise UsageError(f"log needs low > 0 and {'step 1' if integer else 'no step'}, got low {low}, step {step}")


def _edges(low: float, high: float, step: float | None) -> tuple[Any, ...]:
    """Bounds and their grid neighbours: enough to expose ArchConfig's range and parity rules."""
    points = [low, high] if step is None else [low, low + step, high - step, high]
    return tuple(dict.fromkeys(p for p in points if low <= p <= high))


@dataclass(frozen=True)
class Int:
    """Integer range, inclusive (``trial.suggest_int``)."""

    low: int
    high: int
    step: int = 1
    log: bool = False
    when: Condition = ()

    def __post_init__(self) -> None:
        _check_range(self.low, self.high, self.step, self.log, integer=True)

    def suggest(self, trial: optuna.trial.BaseTrial, name: str) -> int:
        return trial.suggest_int(name, self.low, self.high, step=self.step, log=self.log)

    def probes(self) -> tuple[Any, ...]:
        return _edges(self.low, self.high, self.step)


@dataclass(frozen=True)
class Float:
    """Float range, inclusive, on a ``step`` grid or a ``log`` scale (``trial.suggest_float``)."""

    low: float
    high: float
    log: bool = False
    step: float | None = None
    when: Condition = ()

    def __post_init__(self) -> None:
        _check_range(self.low, self.high, self.step, self.log, integer=False)

    def suggest(self, trial: optuna.trial.BaseTrial, name: str) -> float:
        return trial.suggest_float(name, self.low, self.high, step=self.step, log=self.log)

    def probes(self) -> tuple[Any, ...]:
        return _edges(float(self.low), float(self.high), self.step)


@dataclass(frozen=True)
class Categorical:
    """Unordered choices (``trial.suggest_categorical``)."""

    choices: tuple[Scalar, ...]
    when: Condition = ()

    def __post_init__(self) -> None:
        if not isinstance(self.choices, tuple) or not self.choices:
            raise UsageError(f"choices must be a non-empty list, got {self.choices!r}")
        for choice in self.choices:
            if not isinstance(choice, SCALARS):
                raise UsageError(f"choices must be numbers, strings or booleans, got {choice!r}")
        if len({(type(c), c) for c in self.choices}) != len(self.choices):
            raise UsageError(f"duplicate choice in {list(self.choices)}")

    def suggest(self, trial: optuna.trial.BaseTrial, name: str) -> Scalar:
        return trial.suggest_categorical(name, list(self.choices))

    def probes(self) -> tuple[Any, ...]:
        return self.choices


@dataclass(frozen=True)
class Fixed:
    """One value, never suggested, so it stays out of ``trial.params``."""

    value: Scalar
    when: Condition = ()

    def __post_init__(self) -> None:
        if not isinstance(self.value, SCALARS):
            raise UsageError(f"a fixed value must be a number, string or boolean, got {self.value!r}")

    def suggest(self, trial: optuna.trial.BaseTrial, name: str) -> Scalar:
        return self.value

    def probes(self) -> tuple[Any, ...]:
        return (self.value,)


Param = Int | Float | Categorical | Fixed


def _corners(param: Param) -> tuple[Any, ...]:
    """Extremes of a numeric param, every value of another: where ArchConfig's cross-field rules bite."""
    values = param.probes()
    return (min(values), max(values)) if all(_is_number(v) for v in values) else values


def _assign(params: Mapping[str, Param], pick: Callable[[str, Param], Any]) -> dict[str, Any]:
    """Values of the active params in declaration order; ``pick`` chooses each one."""
    values: dict[str, Any] = {}
    for name, param in params.items():
        if all(_same(values.get(k, DEFAULTS[k]), v) for k, v in param.when):
            values[name] = pick(name, param)
    return values


def _build(values: dict[str, Any], key: str | None = None) -> None:
    """Raise ``params.<field>: ...`` if ArchConfig rejects these values."""
    try:
        ArchConfig.from_dict(values)
    except ValueError as error:
        field = key or str(error).split()[0]
        shown = ", ".join(f"{k}={v!r}" for k, v in values.items())
        raise UsageError(f"params.{field}: rejected by the architecture ({shown}): {error}") from None


@dataclass(frozen=True)
class SearchSpace:
    """A validated space: building one checks conditions and every reachable value."""

    params: dict[str, Param]
    constraints: tuple[Constraint, ...] = ()
    source: str = "<memory>"

    def __post_init__(self) -> None:
        declared: dict[str, Param] = {}
        for name, param in self.params.items():
            if name not in DEFAULTS:
                raise UsageError(f"params.{name}: not an ArchConfig field (known: {', '.join(DEFAULTS)})")
            for other, value in param.when:
                if not isinstance(declared.get(other), (Categorical, Fixed)):
                    raise UsageError(f"params.{name}.when.{other}: not a choices/fixed param declared above {name!r}")
                if not any(_same(value, v) for v in declared[other].probes()):
                    raise UsageError(f"params.{name}.when.{other}: {value!r} is not a value {other!r} can take")
            declared[name] = param
        # Each value alone (others at defaults, its condition met), then every corner of all
        # ranges together, which catches interactions such as se_ratio vs nf * expansion.
        for name, param in self.params.items():
            for value in param.probes():
                _build({**dict(param.when), name: value}, key=name)
        for corner in itertools.product(*(_corners(p) for p in self.params.values())):
            chosen = dict(zip(self.params, corner))
            _build(_assign(self.params, lambda n, _p: chosen[n]))

    @classmethod
    def fixed(cls, cfg: ArchConfig) -> SearchSpace:
        """The space of one architecture: every trial is ``cfg`` (benchmarks of the search itself)."""
        return cls({name: Fixed(value) for name, value in cfg.to_dict().items()}, source=f"<{cfg.to_json()}>")


_SPEC_KEYS = {"int": {"step", "log"}, "float": {"step", "log"}, "choices": set(), "fixed": set()}


def _parse_param(spec: Any) -> Param:
    """One ``params`` entry: a bare scalar (fixed) or a mapping with exactly one kind key."""
    if not isinstance(spec, dict):
        if isinstance(spec, list):
            raise UsageError(f"a bare list is ambiguous, write {{choices: {spec}}}")
        return Fixed(spec)
    kinds = [k for k in _SPEC_KEYS if k in spec]
    if len(kinds) != 1:
        raise UsageError(f"needs exactly one of {', '.join(_SPEC_KEYS)}, got {sorted(spec)}")
    kind = kinds[0]
    allowed = {kind, "when"} | _SPEC_KEYS[kind]
    unknown = [k for k in spec if k not in allowed]
    if unknown:
        raise UsageError(f"unknown key {unknown[0]!r} for {kind} (allowed: {', '.join(sorted(allowed))})")
    when = spec.get("when", {})
    if not isinstance(when, dict) or not all(isinstance(v, SCALARS) for v in when.values()):
        raise UsageError(f"when must be a mapping {{param: value, ...}} of scalars, got {when!r}")
    options: dict[str, Any] = {k: spec[k] for k in _SPEC_KEYS[kind] if k in spec}
    options["when"] = tuple(when.items())
    value = spec[kind]
    if kind in ("int", "float"):
        if not isinstance(value, list) or len(value) != 2:
            raise UsageError(f"{kind} must be [low, high], got {value!r}")
        return (Int if kind == "int" else Float)(*value, **options)
    if kind == "choices":
        if not isinstance(value, list):
            raise UsageError(f"choices must be a non-empty list, got {value!r}")
        return Categorical(tuple(value), **options)
    return Fixed(value, **options)


def _read_yaml(path: Path) -> Any:
    try:
        text = path.read_text()
    except OSError as error:
        raise UsageError(f"cannot read: {error.strerror}") from None
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise UsageError(f"{where}invalid YAML: {error.problem or error.context}") from None
    except yaml.YAMLError as error:
        raise UsageError(f"invalid YAML: {error}") from None


def _parse_space(data: Any, source: str) -> SearchSpace:
    if not isinstance(data, dict):
        raise UsageError(f"top level: must be a mapping with 'params' and optional 'constraints', got {data!r}")
    unknown = [k for k in data if k not in ("params", "constraints")]
    if unknown:
        raise UsageError(f"{unknown[0]}: unknown top-level key (allowed: params, constraints)")
    raw_params = data.get("params")
    if not isinstance(raw_params, dict) or not raw_params:
        raise UsageError(f"params: must be a non-empty mapping of ArchConfig fields, got {raw_params!r}")
    params: dict[str, Param] = {}
    for name, spec in raw_params.items():
        try:
            params[name] = _parse_param(spec)
        except ValueError as error:
            raise UsageError(f"params.{name}: {error}") from None
    raw_constraints = data.get("constraints") or []
    if not isinstance(raw_constraints, list):
        raise UsageError(f"constraints: must be a list of strings like 'latency_ms <= 40', got {raw_constraints!r}")
    constraints = []
    for i, text in enumerate(raw_constraints):
        try:
            constraints.append(Constraint.parse(text))
        except ValueError as error:
            raise UsageError(f"constraints[{i}]: {error}") from None
    return SearchSpace(params, tuple(constraints), source)


def shipped_spaces() -> list[str]:
    return sorted(p.stem for p in SPACE_DIR.glob("*.yaml"))


def load_space(spec: str | Path) -> SearchSpace:
    """A shipped space name (``mbv3_sr``, ``quick``, ``tiny``: ``searchsr/spaces/``) or a space file;
    any problem -> one-line UsageError ``<file>: <key>: <what>``."""
    path = SPACE_DIR / f"{spec}.yaml" if str(spec) in shipped_spaces() else Path(spec)
    hint = "" if path.exists() else f" (shipped spaces: {', '.join(shipped_spaces())})"
    try:
        return _parse_space(_read_yaml(path), str(path))
    except ValueError as error:
        raise UsageError(f"{path}: " + " ".join(str(error).split()) + hint) from None


def sample_values(space: SearchSpace, trial: optuna.trial.BaseTrial) -> dict[str, Any]:
    """Suggest every active, non-fixed param through ``trial``; works with FixedTrial and enqueued trials.

    Not validated: a trial enqueued by hand may carry values the space would never produce.
    """
    return _assign(space.params, lambda name, param: param.suggest(trial, name))


def sample(space: SearchSpace, trial: optuna.trial.BaseTrial) -> ArchConfig:
    """``sample_values`` as an architecture (ValueError naming the bad value)."""
    return ArchConfig.from_dict(sample_values(space, trial))


def enumerate_space(space: SearchSpace) -> list[ArchConfig]:
    """Every architecture of a finite space (integers, stepped floats, choices), in a fixed order;
    UsageError naming the first parameter that makes it infinite (``bench record`` trains them all)."""
    values = []
    for name, param in space.params.items():
        if isinstance(param, Int):
            values.append(tuple(range(param.low, param.high + 1, param.step)))
        elif isinstance(param, Float):
            if param.step is None:
                raise UsageError(f"{space.source}: params.{name}: a float range without a step is not finite")
            count = round((param.high - param.low) / param.step)
            values.append(tuple(round(param.low + i * param.step, 10) for i in range(count + 1)))
        else:
            values.append(param.probes())
    archs = {}
    for combination in itertools.product(*values):
        chosen = dict(zip(space.params, combination))
        cfg = ArchConfig.from_dict(_assign(space.params, lambda n, _p: chosen[n]))
        archs.setdefault(cfg.to_json(), cfg)  # an inactive param's values give the same network
    return list(archs.values())


def contains(space: SearchSpace, cfg: ArchConfig) -> bool:
    """Whether the space's own draws can give ``cfg``: its choices, and numbers inside each range on its step
    (``to_params`` also accepts numbers outside, as Optuna does for enqueued trials)."""
    try:
        params = to_params(space, cfg)
    except ValueError:
        return False
    for name, value in params.items():
        param = space.params[name]
        if isinstance(param, (Int, Float)):
            steps = (value - param.low) / param.step if param.step else 0.0
            if not param.low <= value <= param.high or abs(steps - round(steps)) > 1e-9:
                return False
    return True


def to_params(space: SearchSpace, cfg: ArchConfig) -> dict[str, Any]:
    """Optuna params that make ``sample`` return ``cfg`` (for ``study.enqueue_trial``).

    Exactly the keys a trial would suggest (so ``skip_if_exists`` can match them);
    numeric values may lie outside the range (Optuna warns and uses them). Raises
    ValueError when the space cannot produce ``cfg``: a categorical value that is not a
    choice, a fixed value that differs, or an inactive/unlisted field off its default.
    """
    values = _assign(space.params, lambda name, _param: getattr(cfg, name))
    params: dict[str, Any] = {}
    for name, value in values.items():
        param = space.params[name]
        if isinstance(param, Categorical):  # Optuna fails a trial whose enqueued value is not a choice
            matches = [c for c in param.choices if _same(c, value)]
            if not matches:
                raise UsageError(f"{name}={value!r} is not one of the choices {list(param.choices)} in {space.source}")
            value = matches[0]  # the choice's own type (2, not 2.0), as trial.params will hold it
        if not isinstance(param, Fixed):
            params[name] = value
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # out-of-range numbers are allowed, see above
        rebuilt = sample(space, optuna.trial.FixedTrial(params))
    diff = [f"{f.name}={getattr(cfg, f.name)!r} (space gives {getattr(rebuilt, f.name)!r})"
            for f in fields(cfg) if getattr(cfg, f.name) != getattr(rebuilt, f.name)]
    if diff:
        raise UsageError(f"{space.source} cannot produce this architecture: {', '.join(diff)}")
    return params
