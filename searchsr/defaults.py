"""Defaults a user sees in ``--help`` and that the library uses too, importable without torch,
Optuna or Ray (``searchsr --help`` stays fast)."""

DEFAULT_STORAGE = "sqlite:///studies/searchsr.db"
DEFAULT_STUDY = "searchsr"
DEFAULT_SPACE = "mbv3_sr"  # a shipped space (searchsr/spaces/), so it works from any folder
DEFAULT_TILE = 256  # LR tile side for evaluating and upscaling large images
PRECISIONS = ("fp32", "bf16", "fp16")  # of a training step (searchsr.tuning)
MEMORY_FORMATS = ("channels_last", "contiguous")
LATENCY_BACKENDS = ("torch", "onnxruntime", "executorch", "command")  # where latency is timed (searchsr.runtimes)
LATENCY_BACKEND = "onnxruntime"  # a new study's (what `export` ships); a continued study keeps its own
LATENCY_TIMEOUT_S = 600.0  # --latency-timeout: one run of a --latency-cmd
