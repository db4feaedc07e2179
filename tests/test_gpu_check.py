"""The prepared GPU check (benchmarks/gpu_check.sh) runs where GPU machines run it: no install, and
none of Optuna, Ray, pandas or plotly importable. Here in its --smoke sizes, on the CPU."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ABSENT = ("optuna", "ray", "pandas", "plotly", "sqlalchemy", "optuna_dashboard")


def test_the_gpu_check_runs_without_the_search_stack(tmp_path):
    blocker = tmp_path / "site"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(f"import sys\nsys.modules.update(dict.fromkeys({ABSENT!r}))\n")
    env = {**os.environ, "PYTHONPATH": str(blocker), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    out = tmp_path / "out"
    done = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), str(out), "--smoke"], env=env,
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    figures = json.loads((out / "gpu_check.json").read_text())
    assert figures["data_path"]["samples_per_s"] > 0
    for name in ("xlite", "lite"):
        assert figures[f"full_schedule_{name}"]["estimate_hours"] > 0
        assert figures[f"step_{name}_bf16_channels_last"]["steps_per_s"] > 0
        assert figures[f"upscale_12mp_{name}"]["seconds"] > 0
    assert figures["train_xlite_fp32"]["eval_psnr_y"] > 10 and "bf16_minus_fp32_db" in figures
    assert (out / "cache" / "images").is_dir()  # the image cache went beside the figures


def test_a_blocked_module_really_is_absent(tmp_path):
    # Guards the test above: the blocker makes importing optuna fail in the child.
    (tmp_path / "sitecustomize.py").write_text(f"import sys\nsys.modules.update(dict.fromkeys({ABSENT!r}))\n")
    done = subprocess.run([sys.executable, "-c", "import optuna"], env={**os.environ, "PYTHONPATH": str(tmp_path)},
                          capture_output=True, text=True)
    assert done.returncode != 0 and "ModuleNotFoundError" in done.stderr
