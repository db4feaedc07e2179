"""``searchsr bench upscale``: a phone photo's worth of output on the deployment path, FP32 and INT8.

The paper's phone figure is a 12-megapixel output (Sec. 5: SAM_SR_LITE in 1.41 s FP32 and 0.8 s INT8
on a Note 10). This benchmark times the same job here: a 750x1000 LR photo (scikit-image's astronaut,
resized) upscaled x4 to 3000x4000 by each architecture on each runtime and precision:

* ``onnxruntime``: an exported folder (``searchsr.export``, with ``--int8``) run the way ``searchsr
  upscale`` runs it (``bundle.OnnxModel``): overlapping tiles, exact squeeze-excite statistics, so
  memory stays bounded whatever the photo's size.
* ``executorch``: ExecuTorch's XNNPACK program (``runtimes.ExecuTorchRunner``, INT8 through ExecuTorch's
  own quantizer), specialised to the whole 750x1000 input, as an app that upscales one photo size would
  ship it; untiled, so its peak memory is the whole image's activations.

Each (architecture, runtime, precision) runs in a fresh process, so its peak memory is its own: the
process's peak resident set over a warm-up and the timed runs, less its resident set once the model was
loaded (``peak_mb``: the upscale's working memory, its arenas included; the peak is reset once the model is
loaded, since exporting and lowering peak higher), and the process's whole peak then (``peak_total_mb``). Weights are
random: neither time nor memory depends on them (ONNX Runtime's INT8 graph is calibrated as ``export --int8``
calibrates, on the embedded photos; ExecuTorch's on the photo itself).
"""

from __future__ import annotations

import multiprocessing
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

LR_SIZE = (750, 1000)  # x4: 3000x4000, 12 megapixels
VARIANTS = (("onnxruntime", "fp32"), ("onnxruntime", "int8"), ("executorch", "fp32"), ("executorch", "int8"))


@dataclass(frozen=True)
class UpscaleTiming:
    """One architecture upscaling the photo on one runtime at one precision."""

    arch: str
    runtime: str
    precision: str
    tiled: bool
    lr_size: tuple[int, int]
    sr_size: tuple[int, int]
    seconds: float  # median of the timed runs
    seconds_all: tuple[float, ...]
    peak_mb: float  # working memory of the upscale: peak RSS less the loaded model's RSS
    peak_total_mb: float
    threads: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def photo(lr_size: tuple[int, int] = LR_SIZE) -> np.ndarray:
    """The LR input: scikit-image's astronaut, resized to ``lr_size`` (uint8 HxWx3)."""
    from PIL import Image
    from skimage import data

    return np.asarray(Image.fromarray(data.astronaut()).resize(lr_size[::-1], Image.BICUBIC))


def _status_mb(field: str) -> float:
    """``VmRSS`` (resident now) or ``VmHWM`` (its peak since the last reset) of this process, in MiB."""
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith(field + ":"))
    return int(line.split()[1]) / 1024


def _reset_peak() -> None:
    """Start the peak resident set (``VmHWM``) afresh: exporting and lowering peak higher than running."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _upscaler(name: str, runtime: str, precision: str, img: np.ndarray, threads: int, tile: int, folder: str):
    """A function img -> SR image for one variant, built in this (fresh) process."""
    import torch

    from searchsr.arch import build_model
    from searchsr.config import load_arch

    torch.manual_seed(0)
    cfg = load_arch(name)
    model = build_model(cfg).eval()
    x = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1), dtype=np.float32) / 255)[None]
    if runtime == "onnxruntime":
        from searchsr.bundle import OnnxModel
        from searchsr.export import export_model

        export_model(cfg, model, folder, formats=("onnx",), int8=precision == "int8")
        onnx = OnnxModel(folder, threads, int8=precision == "int8")
        return lambda: onnx.upscale(img, tile)
    from searchsr.runtimes import ExecuTorchRunner

    calibration = [x.numpy()] if precision == "int8" else None  # a program of the photo's size: calibrated on it
    et = ExecuTorchRunner(model, threads, tuple(img.shape[:2]), int8_calibration=calibration)
    return lambda: et(x)


def _child(name: str, runtime: str, precision: str, threads: int, tile: int, runs: int,
           lr_size: tuple[int, int], queue: Any) -> None:
    try:
        import torch

        torch.set_num_threads(threads)
        img = photo(lr_size)
        with tempfile.TemporaryDirectory(prefix="searchsr-bench-upscale-") as tmp:
            run = _upscaler(name, runtime, precision, img, threads, tile, f"{tmp}/model")
            _reset_peak()
            loaded = _status_mb("VmRSS")
            run()  # warm-up: sessions allocate their arenas, programs their buffers
            seconds = []
            for _ in range(runs):
                start = time.perf_counter()
                run()
                seconds.append(time.perf_counter() - start)
        tiled = runtime == "onnxruntime" and max(lr_size) > tile  # the photo in one piece otherwise
        queue.put(UpscaleTiming(name, runtime, precision, tiled, lr_size,
                                (4 * lr_size[0], 4 * lr_size[1]), statistics.median(seconds), tuple(seconds),
                                max(0.0, _status_mb("VmHWM") - loaded), _status_mb("VmHWM"), threads))
    except BaseException as err:  # reported to the parent, one line
        queue.put(f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")


def time_upscale(name: str, runtime: str, precision: str, threads: int = 1, tile: int = 256, runs: int = 3,
                 lr_size: tuple[int, int] = LR_SIZE) -> UpscaleTiming | str:
    """One variant, timed in a fresh process: its ``UpscaleTiming``, or why it could not run (one line)."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_child, args=(name, runtime, precision, threads, tile, runs, lr_size, queue))
    process.start()
    try:
        result = queue.get()
    finally:
        process.join()
    return result
