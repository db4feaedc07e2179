"""The ``command`` latency backend (issue 15): a network's latency, as the user's own command reports it.

``--latency-cmd 'TEMPLATE'`` names any command that times an exported model on the target
(``adb shell benchmark_model --graph={model}``, ``onnxruntime_perf_test ... {model}``, a script that
submits a Qualcomm AI Hub job). The contract:

* The template has ``{model}`` and may have ``{input_h}``, ``{input_w}`` (the LR input size); nothing
  else (``{{``/``}}`` are literal braces). ``{model}`` becomes the model's absolute path, shell-quoted,
  so the command may ``cd`` anywhere; the sizes are integers. A template is checked when the
  ``LatencyCommand`` is made (``UsageError``, one line), before anything is trained.
* It runs in ``sh`` in a session of its own, with the caller's environment and working directory. Past
  ``timeout_s`` the whole process group is killed (children included: a hung ``adb`` or a child that
  keeps our pipes open cannot hang the search), as it is if the caller is interrupted.
* Its stdout reports the median latency in milliseconds: the last line that is a JSON object with a
  numeric ``median_ms`` (its other keys, e.g. ``iqr_ms``, ``runs``, ``runtime``, ``runtime_version``,
  are kept as ``details``), or else a bare number as the last non-empty line. Anything else on
  stdout (progress, logs) is ignored; stderr is only read to explain a failure.
* A non-zero exit, a timeout, or no positive finite latency on stdout raises ``LatencyCommandFailed``
  with a one-line reason: the trial failed, the search's ``--max-failures`` decides what follows.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import signal
import string
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from searchsr.errors import SearchsrError, UsageError

PLACEHOLDERS = ("model", "input_h", "input_w")
_REASON_CHARS = 200  # a reason quotes at most this much of the command's output
_KILL_GRACE_S = 5.0  # after killing the group, how long we wait for its pipes to close


class LatencyCommandFailed(SearchsrError, RuntimeError):
    """The latency command failed, timed out or printed no latency. Exit code 1 (the input was fine;
    the measurement failed), like a diverged training."""

    exit_code = 1

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"latency command {reason}")

    def __reduce__(self) -> tuple[type, tuple[str]]:  # pickled across Ray with its reason, not its message
        return type(self), (self.reason,)


@dataclass(frozen=True)
class CommandResult:
    median_ms: float
    details: dict[str, Any] = field(default_factory=dict)  # the JSON line's other keys ({} for a bare number)
    seconds: float = 0.0  # wall time of the command


def _clip(text: str) -> str:
    text = " ".join(text.split())  # one line
    return text if len(text) <= _REASON_CHARS else text[: _REASON_CHARS - 3] + "..."


def _last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def _positive(value: Any) -> float | None:
    """``value`` as a latency: a positive finite number (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) and value > 0 else None


def parse_latency(stdout: str) -> tuple[float, dict[str, Any]]:
    """The median latency (ms) and the other reported keys in a command's stdout (the module's rules)."""
    for line in reversed(stdout.splitlines()):
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict) and "median_ms" in obj and isinstance(obj["median_ms"], (int, float)):
            median = _positive(obj.pop("median_ms"))
            if median is None:
                break  # reported, but not a latency: unparsable
            return median, obj
    else:
        last = _last_line(stdout)
        try:
            median = _positive(float(last))
        except ValueError:
            median = None
        if median is not None:
            return median, {}
    raise LatencyCommandFailed(f"printed no latency in its output (last line: {_clip(_last_line(stdout)) or '(none)'})")


@dataclass(frozen=True)
class LatencyCommand:
    template: str
    timeout_s: float

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """``UsageError`` (one line) for a template or timeout that cannot work."""
        if not isinstance(self.template, str) or not self.template.strip():
            raise UsageError("--latency-cmd is empty: give the command that times {model}")
        try:
            fields = [(name, conv) for _, name, _, conv in string.Formatter().parse(self.template) if name is not None]
        except ValueError as err:  # a lone "{" or "}"
            raise UsageError(f"--latency-cmd {self.template!r}: {err} (write {{{{ and }}}} for literal braces)") from None
        unknown = sorted({name or "{}" for name, _ in fields if name not in PLACEHOLDERS})
        if unknown:
            raise UsageError(f"--latency-cmd has unknown placeholder(s) {', '.join(unknown)}: only "
                             f"{{model}}, {{input_h}}, {{input_w}} (write {{{{ and }}}} for literal braces)")
        if any(conv for _, conv in fields):
            raise UsageError("--latency-cmd: a placeholder takes no !conversion (write {model}, not {model!r})")
        if "model" not in {name for name, _ in fields}:
            raise UsageError(f"--latency-cmd {self.template!r} has no {{model}}: where the exported model goes")
        if isinstance(self.timeout_s, bool) or not isinstance(self.timeout_s, (int, float)) \
                or not 0 < self.timeout_s < math.inf:
            raise UsageError(f"--latency-timeout must be a positive number of seconds, not {self.timeout_s!r}")

    def command_line(self, model_path: Path, input_hw: tuple[int, int]) -> str:
        """The shell command for ``model_path`` at LR size ``input_hw`` (height, width)."""
        height, width = (int(v) for v in input_hw)
        try:
            return self.template.format(model=shlex.quote(str(Path(model_path).absolute())),
                                        input_h=height, input_w=width)
        except ValueError as err:  # a format spec that does not fit, e.g. {model:d}
            raise UsageError(f"--latency-cmd {self.template!r}: {err}") from None

    def run(self, model_path: Path, input_hw: tuple[int, int]) -> CommandResult:
        """Run the command on ``model_path`` and return the latency it reports (see the module docstring)."""
        cmd = self.command_line(model_path, input_hw)
        start = time.monotonic()
        proc = subprocess.Popen(cmd, shell=True, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, errors="replace", start_new_session=True)
        try:
            stdout, stderr = proc.communicate(timeout=self.timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            raise LatencyCommandFailed(f"timed out after {self.timeout_s:g} s") from None
        except BaseException:  # Ctrl-C, SIGTERM: leave nothing running behind us
            _kill_group(proc)
            raise
        seconds = time.monotonic() - start
        if proc.returncode != 0:
            why = _last_line(stderr) or _last_line(stdout)
            how = (f"was killed by signal {-proc.returncode}" if proc.returncode < 0
                   else f"exited with code {proc.returncode}")
            raise LatencyCommandFailed(f"{how}: {_clip(why)}" if why else how)
        median, details = parse_latency(stdout)
        return CommandResult(median, details, seconds)


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the command's process group, reap the shell, and stop reading its pipes (a child that
    left the group may still hold them: we do not wait for it)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the group outlives its leader while members remain
    except (ProcessLookupError, PermissionError):
        pass
    proc.kill()  # the shell at least, should the group be gone already (no-op once it has exited)
    try:
        proc.communicate(timeout=_KILL_GRACE_S)
    except subprocess.TimeoutExpired:
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
        proc.wait()
