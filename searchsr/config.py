"""An architecture of the family as a frozen config: ``ArchConfig``, the paper's presets, and
the ``--set key=value`` / YAML / JSON forms users write it in.

Torch-free on purpose: the space, the study and read-only commands (``searchsr front``) handle
architectures without building them; ``searchsr.arch.build_model(cfg)`` turns one into a network.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from searchsr.errors import UsageError

ACTIVATIONS = ("leakyrelu", "relu", "prelu", "hardswish", "silu")
UPSAMPLE_FACTORS = {2: (2,), 3: (3,), 4: (2, 2)}  # x4 is two x2 pixel-shuffle stages (as in the paper)


def upsample_factors(scale: int) -> tuple[int, ...]:
    """The pixel-shuffle stages of an x``scale`` network: x4 = x2 twice; x2 and x3 are one stage."""
    if scale not in UPSAMPLE_FACTORS:
        raise UsageError(f"scale must be one of {sorted(UPSAMPLE_FACTORS)}, got {scale!r}")
    return UPSAMPLE_FACTORS[scale]


@dataclass(frozen=True)
class ArchConfig:
    """One member of the family; field names are a public contract (CLI ``--set``, JSON, YAML)."""

    nf: int = 16
    n_blocks: int = 8
    scale: int = 4
    expansion: float = 2.0
    kernel_size: int = 3
    se: bool = True
    se_ratio: int = 4
    bn: bool = True
    act: str = "leakyrelu"
    bicubic_skip: bool = True

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            kind = {"int": int, "float": (int, float), "bool": bool, "str": str}[f.type]
            if isinstance(value, bool) and f.type != "bool" or not isinstance(value, kind):
                raise UsageError(f"{f.name} must be {f.type}, got {value!r}")
        if isinstance(self.expansion, int):  # 2 and 2.0 are one architecture: one JSON form
            object.__setattr__(self, "expansion", float(self.expansion))
        checks = {
            "nf": self.nf >= 4 and self.nf % 2 == 0,
            "n_blocks": self.n_blocks >= 1,
            "expansion": 1.0 <= self.expansion <= 8.0,
            "kernel_size": self.kernel_size in (3, 5, 7),
            "se_ratio": self.se_ratio >= 1 and self.expanded // self.se_ratio >= 1,
            "act": self.act in ACTIVATIONS,
        }
        rules = {
            "nf": "an even integer >= 4",
            "n_blocks": "an integer >= 1",
            "expansion": "between 1 and 8",
            "kernel_size": "3, 5 or 7",
            "se_ratio": "an integer >= 1 leaving at least one SE channel",
            "act": f"one of {', '.join(ACTIVATIONS)}",
        }
        for name, ok in checks.items():
            if not ok:
                raise UsageError(f"{name} must be {rules[name]}, got {getattr(self, name)!r}")
        upsample_factors(self.scale)

    @property
    def expanded(self) -> int:
        """Width inside a block (the paper: 2 * nf)."""
        return max(1, round(self.expansion * self.nf))

    @property
    def tail(self) -> int:
        """Width of the upsampler and post-processing (derived: nf / 2)."""
        return self.nf // 2

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ArchConfig:
        """Build from a plain mapping; unknown keys are an error, not silently ignored."""
        if not isinstance(data, dict):
            raise UsageError(f"architecture must be a mapping, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UsageError(f"unknown architecture field {unknown[0]!r} (known: {', '.join(sorted(known))})")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ArchConfig:
        return cls.from_dict(json.loads(text))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str) -> ArchConfig:
        return cls.from_dict(yaml.safe_load(text))

    def replace(self, **changes: Any) -> ArchConfig:
        return dataclasses.replace(self, **changes)


PRESETS: dict[str, ArchConfig] = {
    "lite": ArchConfig(nf=72, n_blocks=16),  # SAM_SR_LITE
    "xlite": ArchConfig(nf=16, n_blocks=8),  # SAM_SR_XLITE
}
# The paper's Table 2: the seven (nf, N) points of the family it trained (LITE and XLITE among them).
PAPER_POINTS: dict[str, ArchConfig] = {
    **{f"paper-{nf}-{n}": ArchConfig(nf=nf, n_blocks=n) for nf, n in ((64, 16), (64, 8), (32, 16), (32, 8), (16, 16))},
    **PRESETS,
}


def parse_value(field_name: str, text: str) -> Any:
    """Parse a ``--set key=value`` string into the field's type (booleans as true/false)."""
    types = {f.name: f.type for f in fields(ArchConfig)}
    if field_name not in types:
        raise UsageError(f"unknown architecture field {field_name!r} (known: {', '.join(types)})")
    kind = types[field_name]
    try:
        if kind == "bool":
            if text.lower() not in ("true", "false"):
                raise UsageError
            return text.lower() == "true"
        return {"int": int, "float": float, "str": str}[kind](text)
    except ValueError:
        raise UsageError(f"{field_name} must be {kind}, got {text!r}") from None


def apply_overrides(cfg: ArchConfig, pairs: list[str]) -> ArchConfig:
    """Apply ``key=value`` overrides to a config."""
    changes: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise UsageError(f"--set expects key=value, got {pair!r}")
        changes[key.strip()] = parse_value(key.strip(), value.strip())
    return cfg.replace(**changes)


def load_arch(spec: str) -> ArchConfig:
    """A preset name (lite, xlite) or a YAML/JSON file holding the config (optionally under ``arch:``)."""
    if spec in PRESETS:
        return PRESETS[spec]
    path = Path(spec)
    if not path.is_file():
        raise UsageError(f"unknown architecture {spec!r}: not a preset ({', '.join(PRESETS)}) or an existing file")
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise UsageError(f"{spec}: not valid YAML/JSON ({str(err).splitlines()[0]})") from None
    if isinstance(data, dict) and isinstance(data.get("arch"), dict):
        data = data["arch"]
    try:
        return ArchConfig.from_dict(data)
    except (ValueError, TypeError) as err:
        raise UsageError(f"{spec}: {err}") from None
