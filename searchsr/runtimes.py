"""The runtime a latency is measured on: ``--latency-backend torch|onnxruntime|executorch|command``.

A search that times eager PyTorch ranks networks by a runtime nobody deploys; the paper itself
saw one network run from 20% faster to twice slower than another depending on the software
(Sec. 5). A backend turns a network into a *runner*: a callable on a (1, 3, H, W) float tensor that
``searchsr.cost``'s interleaved timer times exactly as it times a PyTorch module (same warm-up,
same pairing with XLITE, same thread count).

* ``torch``: eager PyTorch with BatchNorm folded (``cost.prepare_for_timing``).
* ``onnxruntime``: the graph ``searchsr export`` writes as ``model.onnx`` (BN fused, clamped,
  bicubic skip included; ``export.model_onnx``), run by the session ``searchsr upscale`` runs
  (``bundle.ort_session``: CPU provider, the given intra-op thread count).
* ``executorch``: Android's CPU path run on this host: the same deployable network through
  ``torch.export`` -> ExecuTorch with the XNNPACK delegate -> a ``.pte`` program in ExecuTorch's
  runtime, its thread pool at the given thread count. The optional ``mobile`` extra
  (``executorch``, whose releases are built for one torch each: 1.4.x for torch 2.13). Chosen over
  LiteRT: the same export path as an ExecuTorch Android app with no second converter, and a third
  of litert-torch's dependencies (which pull in JAX and transformers and pin typing_extensions).
  A program is specialised to its input size: one per measured size, exported in ~10 s.
* ``command``: the user's ``--latency-cmd`` (``searchsr.latencycmd``) run on that same graph, written
  to a temporary ``model.onnx``: a phone over adb, ``onnxruntime_perf_test``, a cloud device farm.
  The device is elsewhere, so nothing is interleaved: one run of the command per network
  (``command_latency``), XLITE once per meter.

``RuntimeInfo`` is what every measurement records: backend, runtime and version, threads,
precision. A study keeps one backend (``searchsr.search``: part of its setup).
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from searchsr.defaults import LATENCY_BACKENDS as BACKENDS
from searchsr.defaults import LATENCY_TIMEOUT_S
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


def check_backend(backend: str, command: str | None = None, timeout_s: float = LATENCY_TIMEOUT_S) -> None:
    """One-line errors for a backend and its command (a ``--latency-cmd`` goes with ``command`` only)."""
    from searchsr.latencycmd import LatencyCommand

    if backend not in BACKENDS:
        raise UsageError(f"--latency-backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if (backend == "command") != (command is not None):
        raise UsageError("--latency-backend command and --latency-cmd 'TEMPLATE' go together: give both or neither")
    if command is not None:
        LatencyCommand(command, timeout_s)  # checks the template and the timeout
    if backend == "executorch":
        _executorch()


def check_int8(int8: bool, objectives: list[str], backend: str | None, predicting: bool) -> None:
    """``--int8`` (which an INT8 objective needs) quantizes on a runtime with an INT8 path (``backend`` None:
    not chosen yet), and latency predictions (FP32 only) go without it."""
    if not int8 and any(name.endswith("_int8") for name in objectives):
        raise UsageError("objectives psnr_int8, ssim_int8 and latency_int8 need --int8")
    if int8 and backend not in (None, *INT8_BACKENDS):
        raise UsageError(f"--int8 times INT8 networks on {', '.join(INT8_BACKENDS)}: not with --latency-backend "
                         f"{backend}")
    if int8 and predicting:
        raise UsageError("--latency-predict-after predicts FP32 latency only: not with --int8")


def runtime_info(backend: str, threads: int, details: dict[str, Any] | None = None) -> RuntimeInfo:
    """What a measurement on ``backend`` records; a command's own report (``details``) names its runtime."""
    if backend == "command":
        details = details or {}
        threads_said = details.get("threads")  # as the command reports it: an integer, or nothing usable
        return RuntimeInfo(backend, str(details.get("runtime", "latency command")),
                           str(details.get("runtime_version", "")),
                           threads_said if isinstance(threads_said, int) and not isinstance(threads_said, bool) else 0,
                           str(details.get("precision", "fp32")))
    if backend == "onnxruntime":
        import onnxruntime

        return RuntimeInfo(backend, "onnxruntime (CPUExecutionProvider)", onnxruntime.__version__, threads)
    if backend == "executorch":
        from importlib.metadata import version

        _executorch()
        return RuntimeInfo(backend, "executorch (XNNPACK delegate)", version("executorch"), threads)
    return RuntimeInfo(backend, "pytorch (eager, BN fused)", torch.__version__, threads)


INT8_BACKENDS = ("onnxruntime", "executorch", "command")  # those ``--int8`` times an INT8 network on


def int8_calibration(scale: int, lr_size: tuple[int, int] | None = None) -> list[np.ndarray]:
    """LR inputs a network is calibrated on for an INT8 *latency* (the timing does not depend on them):
    patches of the embedded training photos, as ``export --int8`` takes them; tiled up to ``lr_size``
    for a runtime whose program has that input size (ExecuTorch)."""
    from searchsr.quantize import calibration_inputs

    patches = calibration_inputs(None, scale, count=4)
    if lr_size is None:
        return patches
    h, w = lr_size
    return [np.tile(p, (1, 1, -(-h // p.shape[2]), -(-w // p.shape[3])))[..., :h, :w] for p in patches]


def deployed_graph(model: nn.Module, cfg: Any, int8: bool = False, calibration: list[np.ndarray] | None = None
                   ) -> bytes:
    """The graph ``export`` writes: ``model.onnx``, or with ``int8`` its ``model_int8.onnx`` (calibrated on
    ``calibration``, else on ``int8_calibration``'s patches: enough for a timing)."""
    from searchsr.export import model_onnx
    from searchsr.quantize import quantize_onnx

    graph = model_onnx(model, cfg)
    return quantize_onnx(graph, calibration or int8_calibration(cfg.scale)) if int8 else graph


class OrtRunner:
    """A network's exported graph in an ONNX Runtime session, callable like the module it came from."""

    def __init__(self, model: nn.Module, cfg: Any, threads: int, int8: bool = False) -> None:
        from searchsr.bundle import ort_session

        self.session = ort_session(deployed_graph(model, cfg, int8), threads, int8)
        self.input = self.session.get_inputs()[0].name

    def __call__(self, x: torch.Tensor) -> np.ndarray:
        return self.session.run(None, {self.input: x.detach().cpu().numpy()})[0]


def _executorch() -> None:
    """The mobile extra, or a one-line error saying how to install it."""
    try:
        import executorch  # noqa: F401
    except ImportError:
        raise UsageError("--latency-backend executorch needs the mobile extra: pip install -e \".[mobile]\" "
                         "(ExecuTorch with XNNPACK; executorch 1.4 goes with torch 2.13)") from None


def _executorch_threads(threads: int) -> None:
    # Private API of ExecuTorch's Python bindings (1.4): the only way to size the runtime's thread pool
    # from Python; the pool is process-wide. Kept to this one function.
    from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool

    _unsafe_reset_threadpool(threads)


def _executorch_int8(module: nn.Module, example: torch.Tensor, calibration: list[np.ndarray]) -> nn.Module:
    """``module`` statically quantized by ExecuTorch's own INT8 path for XNNPACK: PT2E with the XNNPACK
    quantizer (symmetric INT8, per-channel weights), calibrated on ``calibration`` (LR inputs)."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (XNNPACKQuantizer,
                                                                         get_symmetric_quantization_config)
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    prepared = prepare_pt2e(torch.export.export(module, (example,)).module(), quantizer)
    for x in calibration:
        prepared(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
    return convert_pt2e(prepared)


class ExecuTorchRunner:
    """A network lowered to an ExecuTorch program with the XNNPACK delegate, for one input size; INT8
    (ExecuTorch's own quantizer) when given ``int8_calibration`` inputs of that size."""

    def __init__(self, model: nn.Module, threads: int, lr_size: tuple[int, int],
                 int8_calibration: list[np.ndarray] | None = None) -> None:
        from searchsr.cost import quiet_stderr
        from searchsr.deploy import Clamped, deployable

        _executorch()
        with quiet_stderr():  # cpuinfo's C++ notes on import, not ours to show
            from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
            from executorch.exir import to_edge_transform_and_lower
            from executorch.runtime import Runtime

        deploy: nn.Module = Clamped(deployable(model)).eval()
        example = torch.rand(1, 3, *lr_size)
        with warnings.catch_warnings(), torch.no_grad(), quiet_stderr():
            warnings.simplefilter("ignore")  # export's deprecation notices, torchao's missing CUDA kernels
            if int8_calibration is not None:
                deploy = _executorch_int8(deploy, example, int8_calibration)
            exported = torch.export.export(deploy, (example,))
            program = to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()]).to_executorch()
        self.buffer = program.buffer  # the loaded program points into these bytes: they live as long as it does
        with quiet_stderr():  # the thread pool's C++ notes
            _executorch_threads(threads)
            self.program = Runtime.get().load_program(self.buffer)
            self.method = self.program.load_method("forward")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.method.execute([x.detach().cpu().contiguous()])[0]



IN_PROCESS = ("torch", "onnxruntime", "executorch")  # the backends ``runner`` serves (not ``command``)


def runner(model: nn.Module, cfg: Any, backend: str, threads: int, lr_size: tuple[int, int], int8: bool = False
           ) -> Callable[[torch.Tensor], Any]:
    """``model`` (a freshly built or trained network of ``cfg``) in its deployment form on ``backend``, for
    inputs of ``lr_size`` (an ExecuTorch program is specialised to it; the others take any size); ``int8``:
    quantized as that runtime ships INT8 (``export --int8``'s QDQ graph; ExecuTorch's own quantizer)."""
    from searchsr.cost import prepare_for_timing

    if backend not in IN_PROCESS:
        raise UsageError(f"no in-process runner for latency backend {backend!r}")
    if int8 and backend not in INT8_BACKENDS:
        raise UsageError(f"--int8 times INT8 networks on {', '.join(INT8_BACKENDS)}, not on {backend}")
    if backend == "onnxruntime":
        return OrtRunner(model, cfg, threads, int8)
    if backend == "executorch":
        return ExecuTorchRunner(model, threads, lr_size, int8_calibration(cfg.scale, lr_size) if int8 else None)
    return prepare_for_timing(model)


def command_latency(model: nn.Module, cfg: Any, command: str, timeout_s: float, lr_size: tuple[int, int],
                    int8: bool = False) -> tuple[float, dict[str, Any]]:
    """Median ms and the command's other figures for ``model``'s exported graph (``int8``: its INT8 graph)
    at ``lr_size``; ``latencycmd.LatencyCommandFailed`` (one line) when the command fails, hangs or says
    nothing usable."""
    from searchsr.latencycmd import LatencyCommand

    with tempfile.TemporaryDirectory(prefix="searchsr-latency-") as folder:
        path = Path(folder) / "model.onnx"
        path.write_bytes(deployed_graph(model, cfg, int8))
        result = LatencyCommand(command, timeout_s).run(path, lr_size)
    return result.median_ms, result.details
