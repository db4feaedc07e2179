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
from typing import Any, ClassVar

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
        return cls(**known_fields(cls, data, "architecture"))

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


def known_fields(cls: type, data: dict[str, Any], what: str, *also: str) -> dict[str, Any]:
    """``data`` if every key is a field of the dataclass ``cls``: an unknown key is an error, not silently ignored."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise UsageError(f"unknown {what} field {unknown[0]!r} (known: {', '.join([*also, *sorted(known)])})")
    return data


class _Reference:
    """What the reference networks' configs share (``searchsr.baselines`` builds them): the same interface as
    ``ArchConfig`` (``scale``, dict/JSON/YAML forms, ``replace``), with ``model`` naming the network in every
    stored form, so a run folder's ``config.json`` says which network it trained."""

    name: ClassVar[str]

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UsageError(f"{self.name}: {f.name} must be an integer >= 1, got {value!r}")
        upsample_factors(self.scale)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.name, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Any:
        return cls(**known_fields(cls, {k: v for k, v in data.items() if k != "model"}, cls.name, "model"))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def replace(self, **changes: Any) -> Any:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class MSRResNetConfig(_Reference):
    """BasicSR's MSRResNet, the AIM 2020 efficient-SR baseline of the paper's Table 1."""

    nf: int = 64
    n_blocks: int = 16
    scale: int = 4
    name: ClassVar[str] = "msrresnet"


@dataclass(frozen=True)
class FSRCNNConfig(_Reference):
    """FSRCNN (Dong et al. 2016) of the paper's Table 3: d, s, m as in its paper (56, 12, 4)."""

    d: int = 56
    s: int = 12
    m: int = 4
    scale: int = 4
    name: ClassVar[str] = "fsrcnn"


# The reference networks of the paper's tables, outside the family: `--arch NAME`, `retrain --baselines NAME`.
REFERENCES: dict[str, MSRResNetConfig | FSRCNNConfig] = {"msrresnet": MSRResNetConfig(), "fsrcnn": FSRCNNConfig()}
# Every named network a comparison can include: the paper's presets and the references.
BASELINES: dict[str, Any] = {**PRESETS, **REFERENCES}
AnyArch = ArchConfig | MSRResNetConfig | FSRCNNConfig


def arch_from_dict(data: Any) -> AnyArch:
    """A stored architecture (a run's ``config.json``, a YAML file): a reference network when it names one
    under ``model``, else a member of the family."""
    if isinstance(data, dict) and "model" in data:
        if data["model"] not in REFERENCES:
            raise UsageError(f"unknown model {data['model']!r} (known: {', '.join(REFERENCES)})")
        return type(REFERENCES[data["model"]]).from_dict(data)
    return ArchConfig.from_dict(data)


def arch_label(cfg: AnyArch) -> str:
    """A network in a few words, for messages: ``nf=16, N=8`` or the reference's name."""
    return f"nf={cfg.nf}, N={cfg.n_blocks}" if isinstance(cfg, ArchConfig) else cfg.name


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
    """Apply ``key=value`` overrides to a config (the family's fields: none apply to a reference network)."""
    if pairs and not isinstance(cfg, ArchConfig):
        raise UsageError(f"--set does not apply to {cfg.name}: it changes the family's fields, and {cfg.name} "
                         "is a fixed reference network")
    changes: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise UsageError(f"--set expects key=value, got {pair!r}")
        changes[key.strip()] = parse_value(key.strip(), value.strip())
    return cfg.replace(**changes)


def load_arch(spec: str) -> AnyArch:
    """A preset name (lite, xlite), a reference network (msrresnet, fsrcnn) or a YAML/JSON file holding the
    config (optionally under ``arch:``)."""
    if spec in BASELINES:
        return BASELINES[spec]
    path = Path(spec)
    if not path.is_file():
        raise UsageError(f"unknown architecture {spec!r}: not a preset ({', '.join(BASELINES)}) or an existing file")
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise UsageError(f"{spec}: not valid YAML/JSON ({str(err).splitlines()[0]})") from None
    if isinstance(data, dict) and isinstance(data.get("arch"), dict):
        data = data["arch"]
    try:
        return arch_from_dict(data)
    except (ValueError, TypeError) as err:
        raise UsageError(f"{spec}: {err}") from None
