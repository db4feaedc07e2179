"""The plotly figures of ``searchsr report``, drawn from a ``searchsr.report.ReportData``.

``figures(data)`` lists them in page order, each with the question it answers: the Pareto
front of every pair of objectives, PSNR against cost beside the paper's Table 2 family,
parallel coordinates of the searched parameters, the hypervolume over trials and the
parameter importances. Objective values stay raw in ``ReportData``; ``axes`` scales them
for display and names the LR input size each was measured at (``ReportData.sizes``).
"""

from __future__ import annotations

import html
import itertools
from typing import TYPE_CHECKING, Any

import plotly.graph_objects as go

from searchsr.pareto import InputSizes

if TYPE_CHECKING:  # annotations only (the data this module draws)
    from searchsr.report import ReportData, TrialRow

def axes(sizes: InputSizes) -> dict[str, tuple[str, float]]:
    """Objective -> (axis title, display factor), the titles naming the LR input size of each figure."""
    return {
        "psnr": ("PSNR-Y (dB, search proxy)", 1.0),
        "ssim": ("SSIM-Y (search proxy)", 1.0),
        "latency": (f"latency (ms at {sizes.latency} LR, BN-fused, CPU)", 1.0),
        "flops": (f"GFLOPs ({sizes.cost} LR)", 1e-9),
        "params": ("parameters (K)", 1e-3),
        "activations": (f"activations (M, {sizes.cost} LR)", 1e-6),
        "memory": (f"peak memory (MiB at {sizes.latency} LR)", 2.0 ** -20),
    }


def _axis(name: str, sizes: InputSizes) -> tuple[str, float]:
    return axes(sizes).get(name, (name, 1.0))


def _arch_text(row: TrialRow) -> str:
    a = row.arch
    keys = (("nf", "nf"), ("n_blocks", "N"), ("expansion", "exp"), ("se", "se"), ("act", "act"))
    return " ".join(f"{short}={a[k]}" for k, short in keys if k in a)


def _hover(row: TrialRow) -> str:
    m, sizes = row.metrics, InputSizes.of([row.metrics])
    lines = [f"trial {row.number}" + (f" (paper {row.preset.upper()})" if row.preset else ""), _arch_text(row)]
    lines += [f"{label} {_num(m.get(key), scale):.4g}{unit}" for key, label, scale, unit in (
        ("psnr", "PSNR-Y", 1, " dB"), ("ssim", "SSIM-Y", 1, ""),
        ("latency_ms", "latency", 1, f" ms at {sizes.latency} LR"), ("flops", "", 1e-9, f" GFLOPs at {sizes.cost} LR"),
        ("params", "", 1e-3, " K params")) if _num(m.get(key), scale) is not None]
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
        (xt, xs), (yt, ys) = _axis(xo.name, data.sizes), _axis(yo.name, data.sizes)
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
            ("flops", "FLOPs", f"GFLOPs ({data.sizes.cost} LR)", 1e-9, lambda p: p.flops_g),
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
        title, scale = _axis(o.name, data.sizes)
        dims.append({"label": title, "values": [r.values[o.name] * scale for r in rows]})
    color, label = [_num(r.metrics.get("psnr"), 1.0) for r in rows], "PSNR-Y (dB, search proxy)"
    if None in color:  # trials without a PSNR: colour by the first objective
        first = data.objectives[0]
        label, scale = _axis(first.name, data.sizes)
        color = [r.values[first.name] * scale for r in rows]
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


def curves_figure(data: ReportData) -> Any | None:
    """Validation PSNR at each rung: stopped trials dashed and faint, finished ones solid, the front's blue."""
    if not data.curves:
        return None
    fig = go.Figure()
    for curve in data.curves:
        steps, psnrs = zip(*curve.points)
        style = ({"color": "#1f77b4", "width": 2} if curve.on_front else
                 {"color": "rgba(60,60,60,0.7)", "width": 1} if curve.outcome == "complete" else
                 {"color": "rgba(200,60,60,0.45)", "width": 1, "dash": "dot"})
        fig.add_trace(go.Scatter(x=list(steps), y=list(psnrs), mode="lines+markers", line=style,
                                 name=f"trial {curve.number} ({curve.outcome})", showlegend=False,
                                 hovertext=f"trial {curve.number}: {curve.outcome}"))
    fig.update_layout(title="validation PSNR-Y at each rung: stopped trials dotted red, finished grey, the "
                            "front blue", xaxis={"title": {"text": "training step"}, "type": "log"},
                      yaxis={"title": {"text": "PSNR-Y (dB, search proxy)"}})
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
    "curves": "Did early stopping stop the right trials? Each line is one trial's validation PSNR at the rungs it "
              "reached; a stopped trial ends at its rung.",
}


def figures(data: ReportData) -> list[tuple[str, str, str, Any]]:
    """(id, title, what it answers, figure) in page order."""
    out = [(k, t, WHAT["pareto"], f) for k, t, f in pareto_figures(data)]
    out += [(k, t, WHAT["psnr"], f) for k, t, f in family_figures(data)]
    for key, title, fig in (("parallel", "Parallel coordinates", parallel_figure(data)),
                            ("hypervolume", "Hypervolume over trials", hypervolume_figure(data)),
                            ("curves", "Learning curves at the rungs", curves_figure(data)),
                            ("importance", "Parameter importances", importance_figure(data))):
        if fig is not None:
            out.append((key, title, WHAT[key], fig))
    return out
