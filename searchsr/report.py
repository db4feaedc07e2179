"""``searchsr report``: one self-contained HTML page about a study (plotly inlined, works offline).

Computation and drawing are apart: ``compute_report(study) -> ReportData`` gathers the
numbers (trials, Pareto front, hypervolume history, parameter importances, the paper's
Table 2 family, the retrain table) and is tested alone; ``figures(data)`` turns them into
plotly figures and ``render(data)`` into the page; ``write_report`` writes it atomically.

PSNR caveat, stated on the page too: searched trials are scored after the short *proxy*
schedule on the embedded photos, while the paper's Table 2 numbers are Set5 PSNR-Y after
the full DIV2K schedule; the family curve is therefore drawn on its own (right) axis as a
reference for shape and cost, not as a target the proxy values should reach.
"""

from __future__ import annotations

import csv
import html
import io
import itertools
import os
import tempfile
import warnings
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
from optuna.importance import PedAnovaImportanceEvaluator, get_param_importances
from optuna.trial import TrialState

from searchsr.errors import UsageError
from searchsr.pareto import Front, compute_front, front_table, hypervolume_history, study_objectives
from searchsr.space import Objective

MIN_IMPORTANCE_TRIALS = 10  # below this PED-ANOVA's top-10% regime is padded to 2 trials: noise
STABLE_IMPORTANCE_TRIALS = 50  # its authors ask for >= 5 trials in the top 10%
RETRAIN_TABLE_ATTR = "retrain_table"
RETRAIN_PREFIX = "retrain_"

# objective -> (axis title, display factor); values stay raw in ReportData
AXES: dict[str, tuple[str, float]] = {
    "psnr": ("PSNR-Y (dB, search proxy)", 1.0),
    "ssim": ("SSIM-Y (search proxy)", 1.0),
    "latency": ("latency (ms, BN-fused, CPU)", 1.0),
    "flops": ("GFLOPs (256x256 LR)", 1e-9),
    "params": ("parameters (K)", 1e-3),
    "activations": ("activations (M, 256x256 LR)", 1e-6),
    "memory": ("peak memory (MiB)", 2.0 ** -20),
}


@dataclass(frozen=True)
class TrialRow:
    """A complete trial as the report sees it."""

    number: int
    values: dict[str, float]  # objective name -> value
    metrics: dict[str, Any]  # user attributes except the arch
    params: dict[str, Any]  # what the sampler chose
    arch: dict[str, Any]
    preset: str | None  # "lite"/"xlite": the paper's networks, enqueued
    on_front: bool
    feasible: bool

    @property
    def retrain(self) -> dict[str, Any]:
        return {k: v for k, v in self.metrics.items() if k.startswith(RETRAIN_PREFIX)}


@dataclass(frozen=True)
class FamilyPoint:
    """One row of the paper's Table 2 (full schedule, DIV2K-trained, Set5 PSNR-Y/SSIM-Y)."""

    nf: int
    n_blocks: int
    flops_g: float
    params_k: float
    set5_psnr: float
    set5_ssim: float


@dataclass(frozen=True)
class Importance:
    objective: str
    values: dict[str, float]  # param -> importance, summing to 1; empty when skipped
    note: str  # why skipped, or how far to trust the values


@dataclass(frozen=True, eq=False)
class RetrainTable:
    path: str
    frame: pd.DataFrame


@dataclass(frozen=True, eq=False)
class ReportData:
    study: str
    storage: str  # masked URL, for the page header
    objectives: tuple[Objective, ...]
    front: Front
    trials: tuple[TrialRow, ...]  # complete trials, by number
    states: dict[str, int]  # trial state -> count
    hypervolume: tuple[tuple[int, float], ...]  # (trial number, hypervolume after it)
    params: tuple[str, ...]  # searched parameters, in first-seen order
    importances: tuple[Importance, ...]
    family: tuple[FamilyPoint, ...]
    retrain: RetrainTable | None
    created: str


def load_family() -> tuple[FamilyPoint, ...]:
    """The paper's Table 2, shipped as package data (``searchsr/paper/table2_family.csv``)."""
    text = resources.files("searchsr").joinpath("paper/table2_family.csv").read_text()
    rows = csv.DictReader(line for line in text.splitlines() if line and not line.startswith("#"))
    return tuple(FamilyPoint(int(r["nf"]), int(r["N"]), float(r["flops_g"]), float(r["params_k"]),
                             float(r["set5_psnr"]), float(r["set5_ssim"])) for r in rows)


def compute_importances(study: optuna.Study, objectives: tuple[Objective, ...]) -> tuple[Importance, ...]:
    """PED-ANOVA importances per objective (the evaluator optuna-dashboard uses; no scikit-learn)."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < MIN_IMPORTANCE_TRIALS:
        note = (f"skipped: {len(complete)} complete trial(s), importances need at least "
                f"{MIN_IMPORTANCE_TRIALS}")
        return tuple(Importance(o.name, {}, note) for o in objectives)
    caveat = (f"rough: {len(complete)} complete trials (PED-ANOVA is stable from about "
              f"{STABLE_IMPORTANCE_TRIALS})" if len(complete) < STABLE_IMPORTANCE_TRIALS else "")
    result = []
    for i, objective in enumerate(objectives):
        sign = -1.0 if objective.direction == "maximize" else 1.0  # PED-ANOVA wants lower = better
        try:
            with warnings.catch_warnings():  # it warns whenever a target is given; ours is already negated
                warnings.filterwarnings("ignore", message="PedAnovaImportanceEvaluator computes")
                values = get_param_importances(study, evaluator=PedAnovaImportanceEvaluator(),
                                               target=lambda t, i=i, sign=sign: sign * t.values[i])
            result.append(Importance(objective.name, {k: float(v) for k, v in values.items()}, caveat))
        except (ValueError, RuntimeError) as err:
            result.append(Importance(objective.name, {}, f"skipped: {str(err).splitlines()[0]}"))
    return tuple(result)


def load_retrain_table(study: optuna.Study) -> RetrainTable | None:
    """The retrain comparison CSV named by the study attribute ``retrain_table``, if it is there."""
    path = study.user_attrs.get(RETRAIN_TABLE_ATTR)
    if not isinstance(path, str) or not Path(path).expanduser().is_file():
        return None
    try:
        return RetrainTable(path, pd.read_csv(Path(path).expanduser()))
    except (OSError, ValueError, pd.errors.ParserError) as err:
        return RetrainTable(path, pd.DataFrame({"error": [f"unreadable: {str(err).splitlines()[0]}"]}))


def compute_report(study: optuna.Study, storage: str = "") -> ReportData:
    objectives = study_objectives(study)
    front = compute_front(study)
    on_front = {p.number for p in front.points}
    all_trials = study.get_trials(deepcopy=False)
    rows = tuple(
        TrialRow(t.number, {o.name: float(v) for o, v in zip(objectives, t.values)},
                 {k: v for k, v in t.user_attrs.items() if k != "arch"}, dict(t.params),
                 dict(t.user_attrs.get("arch") or {}), t.user_attrs.get("preset"), t.number in on_front,
                 all(c <= 0 for c in t.constraints.values()))
        for t in all_trials if t.state == TrialState.COMPLETE)
    states = dict(Counter(t.state.name.lower() for t in all_trials))
    params = tuple(dict.fromkeys(k for r in rows for k in r.params))
    return ReportData(study.study_name, storage, objectives, front, rows, states,
                      tuple(hypervolume_history(study)), params, compute_importances(study, objectives),
                      load_family(), load_retrain_table(study),
                      datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))


# ----------------------------------------------------------------------------- drawing

def _axis(name: str) -> tuple[str, float]:
    return AXES.get(name, (name, 1.0))


def _arch_text(row: TrialRow) -> str:
    a = row.arch
    keys = (("nf", "nf"), ("n_blocks", "N"), ("expansion", "exp"), ("se", "se"), ("act", "act"))
    return " ".join(f"{short}={a[k]}" for k, short in keys if k in a)


def _hover(row: TrialRow) -> str:
    m = row.metrics
    lines = [f"trial {row.number}" + (f" (paper {row.preset.upper()})" if row.preset else ""), _arch_text(row)]
    lines += [f"{label} {_num(m.get(key), scale):.4g}{unit}" for key, label, scale, unit in (
        ("psnr", "PSNR-Y", 1, " dB"), ("ssim", "SSIM-Y", 1, ""), ("latency_ms", "latency", 1, " ms"),
        ("flops", "", 1e-9, " GFLOPs"), ("params", "", 1e-3, " K params")) if _num(m.get(key), scale) is not None]
    lines += [f"{k}: {v:.4g}" if isinstance(v, float) else f"{k}: {v}" for k, v in row.retrain.items()]
    lines += [] if row.feasible else ["violates a constraint"]
    return "<br>".join(html.escape(line.strip()) for line in lines if line)


def _groups(rows: tuple[TrialRow, ...]) -> list[tuple[str, list[TrialRow], dict[str, Any]]]:
    """(trace name, rows, marker) for every scatter: faint background, highlighted front, the paper's nets."""
    groups = [("other trials", [r for r in rows if r.feasible and not r.on_front],
               {"color": "rgba(110,110,110,0.35)", "size": 7}),
              ("infeasible", [r for r in rows if not r.feasible],
               {"color": "rgba(200,60,60,0.3)", "size": 7, "symbol": "x"}),
              ("Pareto front", [r for r in rows if r.on_front], {"color": "#1f77b4", "size": 11})]
    colors = itertools.cycle(["#d62728", "#ff7f0e", "#2ca02c", "#9467bd"])
    for preset in sorted({r.preset for r in rows if r.preset}):
        chosen = [r for r in rows if r.preset == preset]
        label = f"paper {preset.upper()} (trial {', '.join(str(r.number) for r in chosen)})"
        groups.append((label, chosen, {"color": next(colors), "size": 16, "symbol": "star",
                                       "line": {"color": "black", "width": 1}}))
    retrained = [r for r in rows if r.retrain]
    if retrained:
        groups.append(("retrained on the full schedule", retrained,
                       {"color": "rgba(0,0,0,0)", "size": 18, "symbol": "diamond-open",
                        "line": {"color": "#8c564b", "width": 2}}))
    return [g for g in groups if g[1]]


def _scatter(rows: list[TrialRow], x: Any, y: Any, name: str, marker: dict, **kw: Any) -> Any:
    kept = [r for r in rows if x(r) is not None and y(r) is not None]
    return go.Scatter(x=[x(r) for r in kept], y=[y(r) for r in kept], name=name, marker=marker,
                      mode=kw.pop("mode", "markers"), text=[_hover(r) for r in kept], hoverinfo="text",
                      customdata=[r.number for r in kept], **kw)


def _log_axis(values: list[float]) -> str:
    positive = [v for v in values if v is not None and v > 0]
    return "log" if positive and len(positive) == len(values) and max(positive) >= 10 * min(positive) else "linear"


def pareto_figures(data: ReportData) -> list[tuple[str, str, Any]]:
    out = []
    for a, b in itertools.combinations(data.objectives, 2):
        xo, yo = (a, b) if a.direction == "minimize" or b.direction == "maximize" else (b, a)
        (xt, xs), (yt, ys) = _axis(xo.name), _axis(yo.name)
        fig = go.Figure()
        for name, rows, marker in _groups(data.trials):
            kw: dict[str, Any] = {}
            if name == "Pareto front" and len(data.objectives) == 2:
                rows = sorted(rows, key=lambda r: r.values[xo.name])
                kw = {"mode": "lines+markers",
                      "line": {"shape": "hv" if xo.direction == "minimize" else "vh", "width": 1.5}}
            fig.add_trace(_scatter(rows, lambda r: r.values[xo.name] * xs, lambda r: r.values[yo.name] * ys,
                                   name, marker, **kw))
        xs_all = [r.values[xo.name] * xs for r in data.trials]
        fig.update_layout(title=f"{yo.name} ({yo.direction[:3]}) vs {xo.name} ({xo.direction[:3]})",
                          xaxis={"title": {"text": xt}, "type": _log_axis(xs_all)}, yaxis={"title": {"text": yt}})
        out.append((f"pareto-{yo.name}-{xo.name}", f"Pareto front: {yo.name} vs {xo.name}", fig))
    return out


def family_figures(data: ReportData) -> list[tuple[str, str, Any]]:
    out = []
    for key, label, title, scale, family_x in (
            ("flops", "FLOPs", "GFLOPs (256x256 LR)", 1e-9, lambda p: p.flops_g),
            ("params", "parameters", "parameters (K)", 1e-3, lambda p: p.params_k)):
        fig = go.Figure()
        for name, rows, marker in _groups(data.trials):
            fig.add_trace(_scatter(rows, lambda r: _num(r.metrics.get(key), scale),
                                   lambda r: _num(r.metrics.get("psnr"), 1.0), name, marker))
        family = sorted(data.family, key=family_x)
        fig.add_trace(go.Scatter(
            x=[family_x(p) for p in family], y=[p.set5_psnr for p in family], yaxis="y2", mode="lines+markers",
            name="paper Table 2 family: Set5 PSNR-Y, full DIV2K schedule (right axis)",
            line={"dash": "dot", "color": "#444"}, marker={"symbol": "square", "size": 8, "color": "#444"},
            text=[f"paper nf={p.nf} N={p.n_blocks}: {p.flops_g:g} GFLOPs, {p.params_k:g} K params<br>"
                  f"Set5 PSNR-Y {p.set5_psnr:.2f} dB / SSIM-Y {p.set5_ssim:.4f}<br>"
                  f"(full schedule on DIV2K, not the search proxy)" for p in family], hoverinfo="text"))
        xs = [_num(r.metrics.get(key), scale) for r in data.trials] + [family_x(p) for p in family]
        fig.update_layout(title=f"PSNR vs {label}, with the paper's model family (Table 2)",
                          xaxis={"title": {"text": title}, "type": _log_axis(xs)},
                          yaxis={"title": {"text": "PSNR-Y (dB, search proxy)"}},
                          yaxis2={"title": {"text": "paper: Set5 PSNR-Y (dB, full schedule)"}, "overlaying": "y",
                                  "side": "right", "showgrid": False},
                          legend={"x": 1.08})
        out.append((f"psnr-{key}", f"PSNR vs {label}", fig))
    return out


def _num(value: Any, scale: float) -> float | None:
    return value * scale if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def parallel_figure(data: ReportData) -> Any | None:
    rows = data.trials
    if not rows or not data.params:
        return None
    dims = []
    for name in data.params:
        values = [r.params.get(name) for r in rows]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            dims.append({"label": name, "values": values})
        else:
            cats = sorted({str(v) for v in values if v is not None}) + (["n/a"] if None in values else [])
            dims.append({"label": name, "values": [cats.index("n/a" if v is None else str(v)) for v in values],
                         "tickvals": list(range(len(cats))), "ticktext": cats})
    for o in data.objectives:
        title, scale = _axis(o.name)
        dims.append({"label": title, "values": [r.values[o.name] * scale for r in rows]})
    color, label = [_num(r.metrics.get("psnr"), 1.0) for r in rows], "PSNR-Y (dB, search proxy)"
    if None in color:  # trials without a PSNR: colour by the first objective
        first = data.objectives[0]
        color, label = [r.values[first.name] * _axis(first.name)[1] for r in rows], _axis(first.name)[0]
    fig = go.Figure(go.Parcoords(dimensions=dims, line={"color": color, "colorscale": "Viridis", "showscale": True,
                                                        "colorbar": {"title": {"text": label}}}))
    fig.update_layout(title=f"searched parameters, coloured by {label}")
    return fig


def hypervolume_figure(data: ReportData) -> Any | None:
    if not data.hypervolume:
        return None
    numbers, values = zip(*data.hypervolume)
    ref = ", ".join(f"{k}={v:.4g}" for k, v in data.front.reference_point.items())
    fig = go.Figure(go.Scatter(x=list(numbers), y=list(values), mode="lines+markers", name="hypervolume",
                               line={"shape": "hv"}))
    fig.update_layout(title=f"hypervolume of the front after each complete feasible trial (reference {ref})",
                      xaxis={"title": {"text": "trial number"}}, yaxis={"title": {"text": "hypervolume"}})
    return fig


def importance_figure(data: ReportData) -> Any | None:
    shown = [imp for imp in data.importances if imp.values]
    if not shown:
        return None
    order = sorted({p for imp in shown for p in imp.values}, key=lambda p: sum(i.values.get(p, 0) for i in shown))
    fig = go.Figure([go.Bar(name=imp.objective, y=order, x=[imp.values.get(p, 0.0) for p in order],
                            orientation="h") for imp in shown])
    fig.update_layout(title="parameter importance per objective (PED-ANOVA)", barmode="group",
                      xaxis={"title": {"text": "importance (sums to 1 per objective)"}})
    return fig


WHAT = {
    "pareto": "Which trade-offs does the search offer, and where do the paper's LITE/XLITE sit? Front points "
              "are highlighted; dominated trials are faint, infeasible ones are crosses.",
    "psnr": "Does the searched design beat the paper's hand-made nf/N family at the same cost? Trials use the "
            "search proxy PSNR (left axis); the paper's curve is Set5 after the full DIV2K schedule (right "
            "axis), so compare the shapes and costs, not the dB values.",
    "parallel": "Which parameter values do the good trials share? Drag along an axis to filter.",
    "hypervolume": "Is the search still improving the front, or has it converged?",
    "importance": "Which parameters drive each objective (where to spend the next search)?",
}


def figures(data: ReportData) -> list[tuple[str, str, str, Any]]:
    """(id, title, what it answers, figure) in page order."""
    out = [(k, t, WHAT["pareto"], f) for k, t, f in pareto_figures(data)]
    out += [(k, t, WHAT["psnr"], f) for k, t, f in family_figures(data)]
    for key, title, fig in (("parallel", "Parallel coordinates", parallel_figure(data)),
                            ("hypervolume", "Hypervolume over trials", hypervolume_figure(data)),
                            ("importance", "Parameter importances", importance_figure(data))):
        if fig is not None:
            out.append((key, title, WHAT[key], fig))
    return out


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>searchsr report: {study}</title>
<style>body{{font-family:sans-serif;margin:1.5em;max-width:1300px}} .note{{color:#555}}
table{{border-collapse:collapse;font-size:13px}} td,th{{border:1px solid #ccc;padding:2px 6px}}</style>
</head><body>
<h1>searchsr study {study}</h1>
<p>{summary}</p>
{body}
</body></html>
"""


def render(data: ReportData) -> str:
    front = data.front
    states = ", ".join(f"{n} {s}" for s, n in sorted(data.states.items()))
    goals = ", ".join(f"{o.name} ({o.direction})" for o in data.objectives)
    summary = (f"storage {data.storage or '-'}; trials: {states or 'none'}; objectives {goals}; "
               f"{len(front.points)} on the front of {front.complete_trials} complete feasible; "
               f"hypervolume {front.hypervolume:.6g}; generated {data.created}.")
    parts = []
    for i, (key, title, what, fig) in enumerate(figures(data)):
        div = pio.to_html(fig, full_html=False, include_plotlyjs=(i == 0), div_id=f"fig-{key}",
                          config={"displaylogo": False, "responsive": True})
        parts.append(f"<h2>{html.escape(title)}</h2><p class='note'>{html.escape(what)}</p>{div}")
    if len(data.objectives) > 2:
        parts.insert(0, "<p class='note'>With more than two objectives each pair is a projection: a front point "
                        "may look dominated in one pair.</p>")
    notes = "".join(f"<li>{html.escape(f'{i.objective}: {i.note}')}</li>" for i in data.importances if i.note)
    parts.append(f"<h3>Importance notes</h3><ul>{notes}</ul>" if notes else "")
    table = front_table(front)
    if not table.empty:
        parts.append("<h2>Front and the paper's networks</h2>"
                     + table.to_html(index=False, na_rep="-", float_format=lambda v: f"{v:.4g}"))
    if data.retrain is not None:
        parts.append(f"<h2>Retrain comparison</h2><p class='note'>full-schedule retraining, from "
                     f"{html.escape(data.retrain.path)}</p>"
                     + data.retrain.frame.to_html(index=False, na_rep="-", float_format=lambda v: f"{v:.4g}"))
    return PAGE.format(study=html.escape(data.study), summary=html.escape(summary), body="\n".join(parts))


# ----------------------------------------------------------------------------- writing

def check_out(out: str | Path) -> Path:
    """Fail before any work if ``out`` cannot be written (one-line ValueError); creates nothing, so a
    command that fails later leaves no folder behind (``write_report`` makes the missing ones)."""
    path = Path(out)
    if path.suffix.lower() not in (".html", ".htm"):
        raise UsageError(f"--out must end in .html, got {out}")
    if path.is_dir():
        raise UsageError(f"--out {out} is a directory")
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UsageError(f"cannot write --out {out}: {ancestor} is not a folder")
    try:
        fd, probe = tempfile.mkstemp(dir=ancestor, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise UsageError(f"cannot write --out {out}: {err.strerror or err}") from None
    return path


def write_report(text: str, out: str | Path) -> Path:
    """Write to a temporary file beside ``out`` and rename it: readers never see half a page."""
    path = check_out(out)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"cannot write --out {out}: {err.strerror or err}") from None
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with io.open(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        mask = os.umask(0o022)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)  # mkstemp makes 0600; a report is for sharing
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
