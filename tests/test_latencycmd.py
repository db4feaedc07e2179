"""The command latency backend (issue 15) against scripted fake devices: Python one-liners that
print what a benchmark tool would, fail, or hang."""

from __future__ import annotations

import shlex
import signal
import sys
import time
from pathlib import Path

import pytest

from searchsr.errors import SearchsrError, UsageError
from searchsr.latencycmd import CommandResult, LatencyCommand, LatencyCommandFailed, parse_latency

PY = shlex.quote(sys.executable)


def fake(code: str, args: str = "") -> str:
    """A template running the Python ``code`` (its braces doubled: literal in a template) with ``args``
    (placeholders allowed) as its argv[1:]."""
    code = code.replace("{", "{{").replace("}", "}}")
    return f"{PY} -c {shlex.quote(code)} {args}".strip()


def gone(pid: int) -> bool:
    """The process no longer runs (exited, or a zombie not yet reaped by whoever inherited it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


@pytest.fixture
def model(tmp_path: Path) -> Path:
    path = tmp_path / "my model's dir" / "net.onnx"  # a space and a quote: the path must be shell-quoted
    path.parent.mkdir()
    path.write_bytes(b"onnx")
    return path


def test_json_line_with_placeholders_filled(model: Path) -> None:
    code = ("import json, os, sys; print('warming up...'); print(json.dumps({'median_ms': 12.5, 'iqr_ms': 0.5, "
            "'runtime': 'fake', 'argv': sys.argv[1:], 'size': os.path.getsize(sys.argv[1])})); print('done')")
    cmd = LatencyCommand(fake(code, "{model} {input_h} {input_w}"), timeout_s=30)
    result = cmd.run(model, (64, 48))
    assert isinstance(result, CommandResult)
    assert result.median_ms == 12.5
    assert result.details == {"iqr_ms": 0.5, "runtime": "fake", "argv": [str(model), "64", "48"], "size": 4}
    assert 0 < result.seconds < 30


def test_relative_model_path_is_made_absolute(model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(model.parent.parent)
    code = "import json, sys; print(json.dumps({'median_ms': 1, 'path': sys.argv[1]}))"
    result = LatencyCommand(fake(code, "{model}"), 30).run(Path(model.parent.name) / model.name, (8, 8))
    assert result.details["path"] == str(model) and result.median_ms == 1.0


def test_bare_number_on_last_line(model: Path) -> None:
    code = "print('Running 50 iterations'); print(); print(' 3.25 ')"
    result = LatencyCommand(fake(code, "{model}"), 30).run(model, (16, 16))
    assert result.median_ms == 3.25 and result.details == {}


def test_garbage_output_fails_with_its_last_line(model: Path) -> None:
    code = "print('Loading model'); print('Segmentation fault (core dumped)... ' + 'x' * 500)"
    with pytest.raises(LatencyCommandFailed) as info:
        LatencyCommand(fake(code, "{model}"), 30).run(model, (16, 16))
    message = str(info.value)
    assert "no latency in its output (last line: Segmentation fault" in message
    assert "\n" not in message and len(message) < 300
    assert isinstance(info.value, SearchsrError) and info.value.exit_code == 1


@pytest.mark.parametrize("stdout", ['{"median_ms": -1}', '{"median_ms": NaN}', '{"median_ms": 0}', "inf", "0",
                                    '{"median_ms": true}', '{"median_ms": "12"}', "[12.5]", ""])
def test_not_a_latency(stdout: str) -> None:
    with pytest.raises(LatencyCommandFailed, match="no latency in its output"):
        parse_latency(stdout)


def test_last_json_line_wins_over_earlier_ones() -> None:
    assert parse_latency('{"median_ms": 9}\nlog\n{"median_ms": 7, "runs": 50}\nbye\n') == (7.0, {"runs": 50})


def test_hung_command_and_its_child_are_killed(model: Path, tmp_path: Path) -> None:
    # The command starts a child that sleeps (holding our stdout pipe open) and exits itself: waiting for
    # the pipe to close would hang for 30 s; the whole process group must go at the timeout.
    pid_file = tmp_path / "child.pid"
    code = ("import subprocess, sys; "
            "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)']); "
            f"open({str(pid_file)!r}, 'w').write(str(c.pid))")
    timeout = 3.0
    start = time.monotonic()
    with pytest.raises(LatencyCommandFailed, match=r"^latency command timed out after 3 s$"):
        LatencyCommand(fake(code, "{model}"), timeout).run(model, (16, 16))
    assert time.monotonic() - start < timeout + 2
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 2
    while not gone(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gone(child), "the child of a timed-out command was left running"


def test_interrupted_caller_kills_the_command(model: Path, tmp_path: Path) -> None:
    # Ctrl-C (or SIGTERM turned into an exception) while the command runs: nothing is left behind.
    pid_file = tmp_path / "child.pid"
    code = ("import subprocess, sys, time; "
            "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)']); "
            f"open({str(pid_file)!r}, 'w').write(str(c.pid)); time.sleep(30)")

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, 2.0)
    try:
        with pytest.raises(KeyboardInterrupt):
            LatencyCommand(fake(code, "{model}"), 60).run(model, (16, 16))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 2
    while not gone(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gone(child), "the child of an interrupted command was left running"


def test_sleeping_shell_command_times_out(model: Path) -> None:
    start = time.monotonic()
    with pytest.raises(LatencyCommandFailed, match="timed out after 0.5 s"):
        LatencyCommand("sleep 30; echo 1 # {model}", 0.5).run(model, (16, 16))
    assert time.monotonic() - start < 2.5


def test_non_zero_exit_reports_stderr_and_code(model: Path) -> None:
    code = "import sys; print('12.5'); print('adb: device offline\\n\\n', file=sys.stderr); sys.exit(3)"
    with pytest.raises(LatencyCommandFailed) as info:
        LatencyCommand(fake(code, "{model}"), 30).run(model, (16, 16))
    assert str(info.value) == "latency command exited with code 3: adb: device offline"


def test_non_zero_exit_without_stderr_reports_stdout(model: Path) -> None:
    with pytest.raises(LatencyCommandFailed, match=r"^latency command exited with code 1: no such graph$"):
        LatencyCommand("echo no such graph; exit 1 # {model}", 30).run(model, (16, 16))
    with pytest.raises(LatencyCommandFailed, match=r"^latency command exited with code 5$"):
        LatencyCommand("exit 5 # {model}", 30).run(model, (16, 16))


@pytest.mark.parametrize(("template", "timeout", "says"), [
    ("", 10, "is empty"),
    ("   ", 10, "is empty"),
    ("benchmark_model --graph=net.tflite", 10, "has no {model}"),
    ("bench {model} --size {foo}", 10, "unknown placeholder(s) foo"),
    ("bench {model} {0}", 10, "unknown placeholder(s) 0"),
    ("bench {model} {}", 10, "unknown placeholder(s) {}"),
    ("bench {model!r}", 10, "no !conversion"),
    ("bench {model} }", 10, "literal braces"),
    ("bench {model", 10, "literal braces"),
    ("bench {model}", 0, "positive number of seconds"),
    ("bench {model}", -1, "positive number of seconds"),
    ("bench {model}", float("nan"), "positive number of seconds"),
])
def test_bad_templates(template: str, timeout: float, says: str) -> None:
    with pytest.raises(UsageError) as info:
        LatencyCommand(template, timeout)
    assert says in str(info.value) and "\n" not in str(info.value)


def test_literal_braces_pass_through(model: Path) -> None:
    # {{ }} are literal braces: the command itself prints the JSON through them.
    cmd = LatencyCommand("echo '{{\"median_ms\": {input_h}.5, \"w\": {input_w}}}' # {model}", 30)
    assert cmd.command_line(model, (7, 9)).startswith("echo '{\"median_ms\": 7.5, \"w\": 9}' # ")
    assert cmd.run(model, (7, 9)).median_ms == 7.5
    assert cmd.run(model, (7, 9)).details == {"w": 9}


def test_frozen() -> None:
    cmd = LatencyCommand("bench {model}", 10)
    with pytest.raises(AttributeError):
        cmd.template = "x"  # type: ignore[misc]
