"""The report of a study as one self-contained HTML page (plotly inlined: opens offline), and
writing it safely. The numbers come from ``searchsr.report``, the plots from ``searchsr.figures``.
"""

from __future__ import annotations

import html
from pathlib import Path

import plotly.io as pio

from searchsr.errors import UsageError
from searchsr.figures import figures
from searchsr.files import atomic_write, writable_ancestor
from searchsr.pareto import front_sizes, front_table
from searchsr.report import ReportData

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
    why = ", ".join(f"{n} {k}" for k, n in (data.outcomes or {}).items() if n)
    states += f" (pruned: {why})" if why else ""
    goals = ", ".join(f"{o.name} ({o.direction})" for o in data.objectives)
    summary = (f"storage {data.storage or '-'}; trials: {states or 'none'}; objectives {goals}; "
               f"{len(front.points)} on the front of {front.complete_trials} complete feasible; "
               f"hypervolume {front.hypervolume:.6g}; {data.sizes.describe()}; latency yardstick: {data.yardstick}; "
               f"generated {data.created}.")
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
        parts.append(f"<h2>Front and the paper's networks</h2><p class='note'>"
                     f"{html.escape(front_sizes(front).describe())}</p>"
                     + table.to_html(index=False, na_rep="-", float_format=lambda v: f"{v:.4g}"))
    if data.retrain is not None:
        earlier = (f"; the last {data.retrain.earlier} row(s): trials only an earlier retrain scored, "
                   "recorded on the study (their folders in run_dir)" if data.retrain.earlier else "")
        parts.append(f"<h2>Retrain comparison</h2><p class='note'>full-schedule retraining, from "
                     f"{html.escape(data.retrain.path)}{html.escape(earlier)}</p>"
                     + data.retrain.frame.to_html(index=False, na_rep="-", float_format=lambda v: f"{v:.4g}"))
    return PAGE.format(study=html.escape(data.study), summary=html.escape(summary), body="\n".join(parts))


# ----------------------------------------------------------------------------- writing

def check_out(out: str | Path) -> Path:
    """Fail before any work if ``out`` cannot be written (one-line UsageError); creates nothing, so a
    command that fails later leaves no folder behind (``write_report`` makes the missing ones)."""
    path = Path(out)
    if path.suffix.lower() not in (".html", ".htm"):
        raise UsageError(f"--out must end in .html, got {out}")
    if path.is_dir():
        raise UsageError(f"--out {out} is a directory")
    writable_ancestor(path, path.parent, label=f"cannot write --out {out}")
    return path


def write_report(text: str, out: str | Path) -> Path:
    """Write the page atomically (readers never see half a page), making missing folders."""
    path = check_out(out)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"cannot write --out {out}: {err.strerror or err}") from None
    atomic_write(path, text)
    return path
