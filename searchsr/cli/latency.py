"""``searchsr latency fit``: how well a model of per-layer costs predicts a study's measured latencies
(``searchsr.latencyfit``); a report, stored on the study only with ``--save``."""

from __future__ import annotations

import argparse
import json

from searchsr.cli import options
from searchsr.errors import UsageError

PREDICTOR_ATTR = "latency_predictor"  # the study user attribute ``--save`` writes


def folds_arg(text: str) -> int | None:
    """argparse type: a fold count >= 2, or ``loo`` (leave-one-out: None)."""
    if text.lower() == "loo":
        return None
    try:
        folds = int(text)
    except ValueError:
        folds = 0
    if folds < 2:
        raise argparse.ArgumentTypeError(f"--folds must be an integer >= 2 or loo, got {text!r}")
    return folds


def register(sub: argparse._SubParsersAction) -> None:
    latency = sub.add_parser("latency", parents=[options.common()],
                             help="latency predicted from per-layer costs (for slow latency backends)")
    latency_sub = latency.add_subparsers(dest="latency", required=True, metavar="ACTION")
    p = latency_sub.add_parser(
        "fit", parents=[options.common(), options.study(required=True), options.json_output()],
        help="fit a latency predictor on a study's measured trials and cross-validate it",
        description="Fit latency = intercept + rate x work per kernel kind (depthwise and 1x1 MACs, SE, "
                    "activations, adds and shuffles, the bicubic skip, operators; non-negative least squares) on "
                    "the study's measured trials (predicted ones left out), and report its cross-validated "
                    "accuracy: the share of held-out networks predicted within +-10% (nn-Meter's measure).")
    p.add_argument("--tolerance", type=float, default=0.10,
                   help="also report the share within +-this fraction (default: 0.10)")
    p.add_argument("--folds", type=folds_arg, default=5, metavar="K",
                   help="cross-validation folds, or loo for leave-one-out (default: 5)")
    p.add_argument("--seed", type=int, default=0, help="seed of the fold split (default: 0)")
    p.add_argument("--save", action="store_true",
                   help=f"store the predictor fitted on all trials as the study's user attribute {PREDICTOR_ATTR!r}")
    p.set_defaults(func=cmd_fit)


def cmd_fit(args: argparse.Namespace) -> int:
    from searchsr.latencyfit import (
        MIN_TRIALS,
        cross_validate,
        fit_predictor,
        measurements,
        unit,
    )
    from searchsr.storage import check_study_name, load_study, open_storage

    if not 0 < args.tolerance < 1:
        raise UsageError(f"--tolerance must be between 0 and 1 (a fraction: 0.10 = +-10%), got {args.tolerance}")
    options.quiet_optuna()
    study = load_study(check_study_name(args.study), open_storage(args.storage, create=False))
    found = measurements(study.get_trials(deepcopy=False))
    if found.distinct < MIN_TRIALS:
        raise UsageError(f"study {args.study!r} has {found.distinct} measured architectures (complete or pruned "
                         f"trials with arch and a measured latency_ms); fitting needs at least {MIN_TRIALS}")
    report = cross_validate(found.archs, found.latencies_ms, args.folds, args.seed, lr_size=found.lr_size,
                            tolerance=args.tolerance)
    predictor = fit_predictor(found.archs, found.latencies_ms, lr_size=found.lr_size, tolerance=args.tolerance,
                              seed=args.seed)
    if args.save:
        study.set_user_attr(PREDICTOR_ATTR, {**predictor.to_dict(), "cross_validation": report.to_dict()})
    if args.json:
        print(json.dumps({"study": args.study, "lr_size": "x".join(map(str, found.lr_size)),
                          "tolerance": args.tolerance, "within_tolerance": report.share_within(args.tolerance),
                          **report.to_dict(), "left_out": {"other_size": found.other_size,
                                                          "predicted": found.predicted},
                          "predictor": predictor.to_dict(), "saved": args.save}))
        return 0
    folds = "leave-one-out" if report.folds == report.n else f"{report.folds}-fold"
    print(f"latency predictor of study {args.study!r}: {report.n} measured architectures ({report.measurements} "
          f"trials) at {found.lr_size[0]}x{found.lr_size[1]}, {folds} cross-validation (seed {args.seed})")
    if found.other_size or found.predicted:
        print(f"left out: {found.other_size} trials measured at another size, {found.predicted} predicted")
    shares = [(0.10, "nn-Meter's measure"), (0.05, "")]
    if all(abs(args.tolerance - t) > 1e-12 for t, _ in shares):
        shares.insert(0, (args.tolerance, "--tolerance"))
    for tolerance, note in shares:
        print(f"  within +-{tolerance:.0%}: {report.share_within(tolerance):6.1%}  {note}".rstrip())
    print(f"  median |error| {report.median_error:.1%}, max |error| {report.max_error:.1%}, "
          f"RMSE {report.rmse_ms:.3g} ms")
    print(f"model: {predictor.kind}, fitted on all {predictor.trained_on}")
    width = max(len(name) for name in predictor.coefficients)
    for name, value in predictor.coefficients.items():
        note = " (the same for every network here: in the intercept)" if name in predictor.fixed else ""
        print(f"  {name:<{width}}  {value:10.4g}  {unit(name)}{note}")
    print(f"  {'intercept':<{width}}  {predictor.intercept:10.4g}  {'log ms' if predictor.kind == 'power' else 'ms'}")
    if args.save:
        print(f"saved as the study's user attribute {PREDICTOR_ATTR!r}")
    return 0
