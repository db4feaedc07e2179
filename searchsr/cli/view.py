"""``searchsr report | dashboard``: look at a study (read-only, safe while a search writes it)."""

from __future__ import annotations

import argparse
import os
import sys

from searchsr.cli import options
from searchsr.errors import UsageError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("dashboard", parents=[options.common(), options.study(
                           default=None, help="open this study's page (default: the list of all studies)")],
                       help="optuna-dashboard on a study's storage, read-only (safe during a search)",
                       description="Serve optuna-dashboard on the storage, opened read-only so that viewing a "
                                   "live SQLite study never blocks the search writing it. Bound to loopback "
                                   "by default; Ctrl-C stops it.")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port (default: 8080; 0: any free port)")
    p.set_defaults(func=cmd_dashboard)

    p = sub.add_parser("report", parents=[options.common(), options.study(required=True)],
                       help="one self-contained HTML report of a study (plotly, works offline)",
                       description="Pareto fronts per objective pair with the paper's LITE/XLITE marked, PSNR "
                                   "vs FLOPs/params against the paper's Table 2 family, parallel coordinates, "
                                   "hypervolume over trials, parameter importances and the retrain table.")
    p.add_argument("--out", required=True, help="HTML file to write, e.g. dashboards/NAME.html")
    p.set_defaults(func=cmd_report)


def cmd_dashboard(args: argparse.Namespace) -> int:
    from searchsr.dashboard import run_dashboard
    from searchsr.storage import check_study_name

    options.quiet_optuna()
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port must be 0..65535, got {args.port}")
    if args.study is not None:
        check_study_name(args.study)
    code = run_dashboard(args.storage, args.study, args.host, args.port, say=lambda m: print(m, flush=True))
    # The server has stopped and closed its storage; skip interpreter finalization, which was seen to
    # hang in a library exit hook when the parent started us with SIGINT ignored (a stuck server
    # after a clean stop is worse than skipped atexit hooks, and this command holds no other state).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def cmd_report(args: argparse.Namespace) -> int:
    from searchsr.dashboard import ReadOnlyStorage, name_objectives
    from searchsr.page import check_out, render, write_report
    from searchsr.report import compute_report
    from searchsr.storage import check_study_name, load_study, mask_url

    options.quiet_optuna()
    check_study_name(args.study)
    check_out(args.out)  # fail before reading the study
    storage = ReadOnlyStorage(args.storage)  # a report never writes to (or locks) a live study
    study = load_study(args.study, storage)
    frozen = [s for s in storage.get_all_studies() if s.study_name == args.study]
    for message in name_objectives(args.storage, storage, frozen, save=False):
        print(message, file=sys.stderr)
    data = compute_report(study, mask_url(args.storage))
    path = write_report(render(data), args.out)
    print(f"report of study {args.study!r} ({len(data.trials)} complete trials, {len(data.front.points)} on the "
          f"front) written to {path}")
    return 0
