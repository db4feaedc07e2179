"""The runtime a latency is measured on: ``--latency-backend torch|onnxruntime``.

A search that times eager PyTorch ranks networks by a runtime nobody deploys; the paper itself
saw one network run from 20% faster to twice slower than another depending on the software
(Sec. 5). A backend turns a network into a *runner*: a callable on a (1, 3, H, W) float tensor that
``searchsr.cost``'s interleaved timer times exactly as it times a PyTorch module (same warm-up,
same pairing with XLITE, same thread count).

* ``torch``: eager PyTorch with BatchNorm folded (``cost.prepare_for_timing``).
* ``onnxruntime``: the graph ``searchsr export`` writes as ``model.onnx`` (BN fused, clamped,
  bicubic skip included; ``export.model_onnx``), run by the session ``searchsr upscale`` runs
  (``bundle.ort_session``: CPU provider, the given intra-op thread count).

``RuntimeInfo`` is what every measurement records: backend, runtime and version, threads,
precision. A study keeps one backend (``searchsr.search``: part of its setup).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from searchsr.defaults import LATENCY_BACKENDS as BACKENDS
from searchsr.errors import UsageError


@dataclass(frozen=True)
class RuntimeInfo:
    """Where a latency was measured, as recorded with it."""

    backend: str
    runtime: str
    version: str
    threads: int
    precision: str = "fp32"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise UsageError(f"--latency-backend must be one of {', '.join(BACKENDS)}, got {backend!r}")


def runtime_info(backend: str, threads: int) -> RuntimeInfo:
    check_backend(backend)
    if backend == "onnxruntime":
        import onnxruntime

        return RuntimeInfo(backend, "onnxruntime (CPUExecutionProvider)", onnxruntime.__version__, threads)
    return RuntimeInfo(backend, "pytorch (eager, BN fused)", torch.__version__, threads)


class OrtRunner:
    """A network's exported graph in an ONNX Runtime session, callable like the module it came from."""

    def __init__(self, model: nn.Module, cfg: Any, threads: int) -> None:
        from searchsr.bundle import ort_session
        from searchsr.export import model_onnx

        self.session = ort_session(model_onnx(model, cfg), threads)
        self.input = self.session.get_inputs()[0].name

    def __call__(self, x: torch.Tensor) -> np.ndarray:
        return self.session.run(None, {self.input: x.detach().cpu().numpy()})[0]

    def to(self, device: Any) -> OrtRunner:  # the timer's interface: the session runs where it was made
        return self

    def eval(self) -> OrtRunner:
        return self


def runner(model: nn.Module, cfg: Any, backend: str, threads: int) -> Callable[[torch.Tensor], Any]:
    """``model`` (a freshly built or trained network of ``cfg``) in its deployment form on ``backend``."""
    from searchsr.cost import prepare_for_timing

    check_backend(backend)
    if backend == "onnxruntime":
        return OrtRunner(model, cfg, threads)
    return prepare_for_timing(model)
