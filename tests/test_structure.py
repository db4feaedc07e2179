"""The house rules, checked on the code: module size, no import cycles (function-level imports
included), no private names imported across modules, a CLI that starts without torch or Ray, and
one error model (user error: one line, exit 2; bug: traceback, exit 1; --debug: traceback)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "searchsr"
MAX_LINES = 420  # "~400": a module a newcomer reads top to bottom


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, imported names) for every import statement anywhere in the file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, [alias.name for alias in node.names]))
    return found


def _searchsr_deps(path: Path) -> set[str]:
    """searchsr modules this file imports: ``from pkg import sub`` counts as importing ``pkg.sub``."""
    deps = set()
    for module, names in _imports(path):
        if module not in MODULES:
            continue
        subs = [f"{module}.{n}" for n in names if f"{module}.{n}" in MODULES]
        deps.update(subs if subs and len(subs) == len(names) else [module, *subs])
    return deps - {_module_name(path)}


def test_modules_are_short() -> None:
    long = {name: n for name, p in MODULES.items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_no_import_cycles() -> None:
    graph = {name: _searchsr_deps(path) for name, path in MODULES.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                pytest.fail("import cycle: " + " -> ".join(path[path.index(dep):] + [node, dep]))
            if dep not in state:
                visit(dep, path + [node])
        state[node] = 2

    for name in graph:
        if name not in state:
            visit(name, [])


def test_no_private_names_across_modules() -> None:
    offenders = []
    for path in [*PACKAGE.rglob("*.py"), *(ROOT / "tests").glob("*.py")]:
        for module, names in _imports(path):
            if module.split(".")[0] == "searchsr":
                offenders += [f"{path.relative_to(ROOT)}: from {module} import {n}" for n in names
                              if n.startswith("_")]
    assert not offenders, offenders


def test_dependency_reader_sees_function_level_imports() -> None:
    """The cycle check is not vacuous: the dependency reader finds function-level imports."""
    assert "searchsr.storage" in _searchsr_deps(PACKAGE / "study.py")
    assert "searchsr.search" in _searchsr_deps(PACKAGE / "bench.py")  # imported inside a function


@pytest.mark.parametrize("argv", [["--help"], ["front", "--help"], ["run", "--help"], ["profile", "--help"]])
def test_cli_help_imports_neither_torch_nor_ray(argv: list[str]) -> None:
    code = ("import sys\nfrom searchsr.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('torch', 'ray', 'onnxruntime', 'plotly', 'optuna') if m in sys.modules]\n"
            "print('heavy:' + ','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "heavy:", out.stdout[-300:]


def test_front_imports_neither_torch_nor_ray(tmp_path: Path) -> None:
    import optuna

    url = f"sqlite:///{tmp_path}/s.db"
    optuna.create_study(study_name="s", storage=url, directions=["maximize", "minimize"]).set_metric_names(
        ["psnr", "latency"])
    code = ("import sys\nfrom searchsr.cli import main\nrc = main(sys.argv[1:])\n"
            "print('heavy:' + ','.join(m for m in ('torch', 'ray') if m in sys.modules), rc)")
    out = subprocess.run([sys.executable, "-c", code, "front", "--study", "s", "--storage", url],
                         capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip().splitlines()[-1] == "heavy: 0", out.stdout + out.stderr


def _every_command() -> list[list[str]]:
    from searchsr.cli import build_parser

    commands = []
    for action in build_parser()._subparsers._group_actions:  # argparse has no public walk
        for name, sub in action.choices.items():
            commands.append([name])
            for sub_action in getattr(sub, "_subparsers", None) and sub._subparsers._group_actions or []:
                commands += [[name, child] for child in sub_action.choices]
    return commands


def test_help_of_every_command_and_subcommand_runs(capsys: pytest.CaptureFixture) -> None:
    from searchsr.cli import main

    commands = _every_command()
    assert ["bench", "latency"] in commands and ["run"] in commands and len(commands) >= 14
    for argv in commands:
        with pytest.raises(SystemExit) as exit_info:
            main([*argv, "--help"])
        assert exit_info.value.code == 0, argv
        assert "usage: searchsr" in capsys.readouterr().out


def test_an_internal_bug_keeps_its_traceback_and_exits_1(monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture) -> None:
    import searchsr.config
    from searchsr.cli import main

    def broken(spec: str):
        raise KeyError("a bug, not the user's fault")

    monkeypatch.setattr(searchsr.config, "load_arch", broken)
    monkeypatch.setattr("searchsr.cli.model.load_arch", broken)
    assert main(["profile", "--arch", "xlite"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "KeyError" in err and "a bug in searchsr" in err


def test_user_error_is_one_line_and_debug_shows_the_traceback(capsys: pytest.CaptureFixture) -> None:
    from searchsr.cli import main

    assert main(["profile", "--set", "nf=3"]) == 2
    err = capsys.readouterr().err
    assert err == "searchsr: error: nf must be an even integer >= 4, got 3\n"
    for argv in (["--debug", "profile", "--set", "nf=3"], ["profile", "--set", "nf=3", "--debug"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "Traceback" in err and err.endswith("searchsr: error: nf must be an even integer >= 4, got 3\n")


def test_argparse_errors_are_our_one_line(capsys: pytest.CaptureFixture) -> None:
    from searchsr.cli import main

    for argv in (["profile", "--runs", "many"], ["nosuchcommand"], ["profile", "--device", "tpu"]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and err.startswith("searchsr: error: ") and err.count("\n") == 1, err
