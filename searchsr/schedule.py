"""Training schedules: named YAML files shipped in ``searchsr/schedules``.

The optimiser and loss are fixed by the paper (Sec. 4.1: L1, Adam, lr halved at
milestones); a schedule only says how long, how big and how fast. ``full`` is the
paper's, ``short`` is the search proxy, ``smoke`` exists for tests.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from searchsr.errors import UsageError

SCHEDULE_DIR = Path(__file__).parent / "schedules"


def shipped_schedules() -> list[str]:
    return sorted(p.stem for p in SCHEDULE_DIR.glob("*.yaml"))


@dataclass(frozen=True)
class Schedule:
    """How one training run goes; every field but ``name`` is a YAML key."""

    name: str
    steps: int
    batch_size: int
    patch_size: int  # LR side; the HR patch is scale times larger
    lr: float
    milestones: tuple[int, ...]  # steps at which lr is halved
    betas: tuple[float, float] = (0.9, 0.99)
    log_every: int = 100  # loss/lr rows in metrics.csv
    val_every: int = 0  # 0: validate only at the end
    checkpoint_every: int = 0  # 0: checkpoint only when stopped early (``until``)

    def __post_init__(self) -> None:
        for key in ("steps", "batch_size", "patch_size", "log_every"):
            _check(key, getattr(self, key), _is_int(getattr(self, key)) and getattr(self, key) >= 1,
                   "an integer >= 1")
        for key in ("val_every", "checkpoint_every"):
            _check(key, getattr(self, key), _is_int(getattr(self, key)) and getattr(self, key) >= 0,
                   "an integer >= 0")
        text_hint = " (YAML reads 5e-3 as text: write 5.0e-3)" if isinstance(self.lr, str) else ""
        _check("lr", self.lr, _is_number(self.lr) and self.lr > 0, "a positive number" + text_hint)
        m = self.milestones
        _check("milestones", m, isinstance(m, tuple) and all(_is_int(s) and 0 < s < self.steps for s in m)
               and list(m) == sorted(set(m)), f"increasing integers between 0 and steps ({self.steps})")
        b = self.betas
        _check("betas", b, isinstance(b, tuple) and len(b) == 2 and all(_is_number(v) and 0 <= v < 1 for v in b),
               "two numbers in [0, 1)")
        object.__setattr__(self, "lr", float(self.lr))
        object.__setattr__(self, "betas", tuple(float(v) for v in b))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, name: str, data: Any) -> Schedule:
        """Unknown or missing keys are errors: a typo must not silently train the default."""
        if not isinstance(data, dict):
            raise UsageError(f"a schedule must be a mapping, got {type(data).__name__}")
        keys = [f.name for f in fields(cls) if f.name != "name"]
        unknown = sorted(set(data) - set(keys))
        if unknown:
            raise UsageError(f"unknown key {unknown[0]!r} (known: {', '.join(keys)})")
        required = [f.name for f in fields(cls) if f.default is dataclasses.MISSING and f.name != "name"]
        missing = [k for k in required if k not in data]
        if missing:
            raise UsageError(f"missing key {missing[0]!r}")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(name=name, **values)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check(key: str, value: Any, ok: bool, rule: str) -> None:
    if not ok:
        raise UsageError(f"key {key!r} must be {rule}, got {value!r}")


def schedule_for_workers(spec: str) -> str:
    """``spec`` as a Ray worker must see it: a shipped name as is, a file as an absolute path."""
    return spec if spec in shipped_schedules() else str(Path(spec).resolve())


def load_schedule(spec: str) -> Schedule:
    """A shipped schedule name (``smoke``, ``short``, ``full``) or a YAML file."""
    path = SCHEDULE_DIR / f"{spec}.yaml" if spec in shipped_schedules() else Path(spec)
    if not path.is_file():
        raise UsageError(f"unknown schedule {spec!r}: not one of {', '.join(shipped_schedules())} "
                         "or an existing YAML file")
    try:
        data = yaml.safe_load(path.read_text())
        return Schedule.from_dict(path.stem, data)
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise UsageError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    except (ValueError, TypeError) as err:
        raise UsageError(f"{path}: {err}") from None
