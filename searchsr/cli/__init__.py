"""``searchsr`` command line: one entry point, one module per command family.

    model.py   profile, train, eval        one network
    search.py  run, front, retrain         a study
    view.py    report, dashboard           looking at a study
    ship.py    export, upscale             a network leaving searchsr
    bench.py   bench latency|concurrency|train
    latency.py latency fit                 a latency predictor fitted on a study's measurements

Each module has ``register(subparsers)`` beside its handlers; shared options come from the parent
parsers in ``options.py``. Heavy libraries (torch, Ray, ONNX Runtime, plotly) are imported inside
the handlers, so ``searchsr --help`` and ``searchsr front`` start quickly.

Errors (``searchsr.errors``): a ``SearchsrError`` or an ``OSError`` is one line,
``searchsr: error: ...``, with the error's exit code (2 for bad input); an argparse error is the
same one line, exit 2; anything else is a bug in searchsr: its traceback, exit 1. ``--debug``
shows the traceback of every error. Ctrl-C (and what a command kept) is one line, exit 130;
SIGTERM the same, exit 143.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Sequence
from typing import NoReturn

from searchsr.cli import bench, latency, model, search, ship, view
from searchsr.errors import SearchsrError, Terminated

PROG = "searchsr"


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is the same one line as every other user error (no usage dump)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{PROG}: error: {self.prog.removeprefix(PROG).strip() + ': ' if self.prog != PROG else ''}"
                     f"{message} (see {self.prog} --help)\n")


def build_parser() -> Parser:
    parser = Parser(prog=PROG, description="Search the MobileNetV3 super-resolution family (Wang et al., "
                                           "ECCV-W 2020) for the best x4 network under a latency/FLOP budget.")
    parser.add_argument("--debug", action="store_true", help="show the traceback of any error")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for family in (model, search, view, ship, bench, latency):
        family.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt as err:  # Ray Tune traps Ctrl-C itself; run/retrain re-raise with what was kept
        if args.debug:
            traceback.print_exc()
        what = "terminated" if isinstance(err, Terminated) else "interrupted"
        print(f"{PROG}: {what}{f': {err}' if str(err) else ''}", file=sys.stderr)
        return Terminated.exit_code if isinstance(err, Terminated) else 130
    except (SearchsrError, OSError) as err:
        if args.debug:
            traceback.print_exc()
        print(f"{PROG}: error: {_one_line(err)}", file=sys.stderr)
        return err.exit_code if isinstance(err, SearchsrError) else 2
    except Exception:
        traceback.print_exc()
        print(f"{PROG}: internal error: this is a bug in searchsr; please report it with the traceback above",
              file=sys.stderr)
        return 1


def _one_line(err: BaseException) -> str:
    if isinstance(err, OSError) and err.strerror:
        return f"{err.filename}: {err.strerror}" if err.filename else err.strerror
    return " ".join(str(err).split()) or type(err).__name__
