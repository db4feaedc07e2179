"""`searchsr report`: the numbers (computed apart), the figures, the page, and the page in headless Chromium."""

from __future__ import annotations

import json
import warnings
import re
import shutil
import subprocess
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, IntDistribution
from optuna.trial import TrialState

from conftest import read_paper_table
from searchsr.cli import main
from searchsr.pareto import compute_front
from searchsr.figures import figures
from searchsr.page import render, write_report
from searchsr.report import MIN_IMPORTANCE_TRIALS, compute_report, load_family

DISTS = {"nf": IntDistribution(8, 16, step=8), "n_blocks": IntDistribution(1, 2),
         "se": CategoricalDistribution((True, False)), "se_ratio": CategoricalDistribution((2, 4))}
PRESETS = {"xlite": {"nf": 16, "n_blocks": 8, "se": True, "se_ratio": 4},
           "lite": {"nf": 72, "n_blocks": 16, "se": True, "se_ratio": 4}}


def fill(study: optuna.Study, n: int, *, presets: bool = True, retrain: dict[int, float] | None = None) -> None:
    """``n`` complete trials, recorded the way a search does (enqueued params, user attributes, a constraint):
    the first two are the paper's XLITE/LITE (outside the ranges, as in a real study), the last infeasible;
    then one failed trial."""
    for i in range(n):
        preset = ("xlite", "lite")[i] if presets and i < 2 else None
        params = PRESETS[preset] if preset else {"nf": 8 + 8 * (i % 2), "n_blocks": 1 + (i // 2) % 2,
                                                 "se": i % 3 != 0, **({"se_ratio": 2 + 2 * (i % 2)} if i % 3 else {})}
        nf, blocks = params["nf"], params["n_blocks"]
        psnr = 20 + nf * blocks / 50 + (i % 5) * 0.3
        latency, ssim = 10.0 * nf * blocks / 16 + i, 0.6 + psnr / 100
        attrs = {"psnr": psnr, "ssim": ssim, "latency_ms": latency, "flops": 2e7 * nf * nf * blocks / 256,
                 "params": 140 * nf * blocks, "arch": {**params, "expansion": 2.0},
                 **({"preset": preset} if preset else {}),
                 **({"retrain_set5_psnr": retrain[i]} if retrain and i in retrain else {})}
        study.enqueue_trial(params, user_attrs=attrs)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # presets lie outside the ranges, as in a real study
            trial = study.ask(DISTS)
        trial.set_constraint("latency_ms <= 500", 1.0 if i == n - 1 else -1.0)
        study.tell(trial, [psnr, latency] if len(study.directions) == 2 else [psnr, latency, ssim])
    study.tell(study.ask(), state=TrialState.FAIL)


def make_study(n: int = 12, storage: str | None = None, name: str = "demo", objectives=("psnr", "latency"),
               **kw) -> optuna.Study:
    directions = {"psnr": "maximize", "latency": "minimize", "ssim": "maximize"}
    study = optuna.create_study(study_name=name, storage=storage, directions=[directions[o] for o in objectives])
    study.set_metric_names(list(objectives))
    fill(study, n, **kw)
    return study


def by_name(figs, key):
    return next(fig for k, _t, _w, fig in figs if k == key)


# ------------------------------------------------------------------ computation


def test_family_is_the_papers_table2() -> None:
    family = load_family()
    assert len(family) == 7
    paper = read_paper_table("table2_family.csv")  # the package copy must match ../shared/paper
    assert [(p.nf, p.n_blocks, p.flops_g, p.params_k, p.set5_psnr) for p in family] == \
        [(int(r["nf"]), int(r["N"]), float(r["flops_g"]), float(r["params_k"]), float(r["set5_psnr"])) for r in paper]


def test_compute_report_numbers(tmp_path: Path) -> None:
    table = tmp_path / "retrain.csv"
    table.write_text("trial,set5_psnr_search,set5_psnr_retrain\n3,25.1,31.2\n")
    study = make_study(12, retrain={3: 31.2})
    study.set_user_attr("retrain_table", str(table))
    data = compute_report(study, "sqlite:///x.db")
    front = compute_front(study)
    assert [r.number for r in data.trials if r.on_front] == [p.number for p in front.points]
    assert len(data.trials) == 12 and data.states == {"complete": 12, "fail": 1}
    assert [r.number for r in data.trials if not r.feasible] == [11]
    assert {r.preset for r in data.trials} == {"xlite", "lite", None}
    values = [hv for _, hv in data.hypervolume]
    assert values and all(b >= a for a, b in zip(values, values[1:]))
    assert values[-1] == pytest.approx(front.hypervolume)
    assert data.params == ("nf", "n_blocks", "se", "se_ratio")
    assert [i.objective for i in data.importances] == ["psnr", "latency"]
    assert all(i.values and sum(i.values.values()) == pytest.approx(1.0) for i in data.importances)
    assert all("rough" in i.note for i in data.importances)  # < 50 trials
    assert data.retrain is not None and list(data.retrain.frame["set5_psnr_retrain"]) == [31.2]
    assert [r.retrain for r in data.trials if r.retrain] == [{"retrain_set5_psnr": 31.2}]


def test_importances_guarded_and_retrain_table_optional(tmp_path: Path) -> None:
    study = make_study(MIN_IMPORTANCE_TRIALS - 1)
    data = compute_report(study)
    assert all(not i.values and "skipped" in i.note for i in data.importances)
    assert data.retrain is None
    study.set_user_attr("retrain_table", str(tmp_path / "missing.csv"))
    assert compute_report(study).retrain is None
    page = render(data)
    assert "Retrain comparison" not in page and "importances need at least" in page


# ------------------------------------------------------------------ figures and page


def test_figure_objects() -> None:
    study = make_study(12, retrain={3: 31.2})
    data = compute_report(study)
    figs = figures(data)
    assert [k for k, *_ in figs] == ["pareto-psnr-latency", "psnr-flops", "psnr-params", "parallel",
                                     "hypervolume", "importance"]
    pareto = by_name(figs, "pareto-psnr-latency")
    names = [t.name for t in pareto.data]
    (front_trace,) = [t for t in pareto.data if t.name == "Pareto front"]
    assert len(front_trace.x) == len(compute_front(study).points)
    assert "paper XLITE (trial 0)" in names and "paper LITE (trial 1)" in names
    assert "retrained on the full schedule" in names and "infeasible" in names
    assert pareto.layout.xaxis.title.text.startswith("latency") and pareto.layout.yaxis.title.text.startswith("PSNR-Y")
    for key in ("psnr-flops", "psnr-params"):
        (family,) = [t for t in by_name(figs, key).data if t.name.startswith("paper Table 2")]
        assert len(family.x) == 7 and family.yaxis == "y2" and "full DIV2K schedule" in family.name
        assert all("not the search proxy" in text for text in family.text)
    hv = by_name(figs, "hypervolume").data[0].y
    assert len(hv) == 11 and all(b >= a for a, b in zip(hv, hv[1:]))  # 11 feasible of 12
    dims = [d.label for d in by_name(figs, "parallel").data[0].dimensions]
    assert dims[:4] == ["nf", "n_blocks", "se", "se_ratio"] and len(dims) == 6
    assert {t.name for t in by_name(figs, "importance").data} == {"psnr", "latency"}


def test_three_objectives_give_three_pairs() -> None:
    data = compute_report(make_study(12, objectives=("psnr", "latency", "ssim")))
    keys = [k for k, *_ in figures(data) if k.startswith("pareto-")]
    assert sorted(keys) == ["pareto-psnr-latency", "pareto-ssim-latency", "pareto-ssim-psnr"]
    assert "each pair is a projection" in render(data)


def test_page_is_self_contained(tmp_path: Path) -> None:
    table = tmp_path / "retrain.csv"
    table.write_text("trial,set5_psnr\n3,31.2\n")
    study = make_study(12, retrain={3: 31.2})
    study.set_user_attr("retrain_table", str(table))
    page = render(compute_report(study))
    assert "<script src" not in page.lower() and "<link" not in page.lower()
    assert page.count("Plotly.newPlot(") == 6
    assert len(page) > 3_000_000  # plotly.js itself is inline
    assert "Retrain comparison" in page and "31.2" in page


def _sqlite_study(tmp_path: Path, names: bool = True) -> str:
    url = f"sqlite:///{tmp_path / 's.db'}"
    study = optuna.create_study(study_name="demo", storage=url, directions=["maximize", "minimize"])
    if names:
        study.set_metric_names(["psnr", "latency"])
    fill(study, 6)
    return url


def test_cli_report_writes_atomically(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = _sqlite_study(tmp_path, names=False)  # an older study: objective names are inferred, not written
    out = tmp_path / "dash" / "demo.html"
    assert main(["report", "--study", "demo", "--storage", url, "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "written to" in captured.out and "inferred as psnr,latency" in captured.err
    assert out.is_file() and out.read_text().rstrip().endswith("</html>")
    assert [p.name for p in out.parent.iterdir()] == ["demo.html"]  # no temp file left
    assert optuna.load_study(study_name="demo", storage=url).metric_names is None  # read-only
    before = out.read_bytes()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for args, message in ((["--out", str(blocker / "r.html")], "cannot write --out"),
                          (["--out", str(tmp_path)], "must end in .html"),
                          (["--out", str(out), "--study", "nope"], "no study named 'nope'")):
        argv = ["report", "--study", "demo", "--storage", url, *args]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("searchsr: error: ") and message in err and err.count("\n") == 1
    assert out.read_bytes() == before


def test_write_report_leaves_nothing_on_failure(tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    with pytest.raises(TypeError):
        write_report(123, out)  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ headless Chromium

CHECK = """<script>window.__errors=[];
window.addEventListener('error',function(e){window.__errors.push(String(e.message))});
window.addEventListener('unhandledrejection',function(e){window.__errors.push('rejection: '+String(e.reason))});
</script>"""
REPORT = """<script>window.addEventListener('load',function(){setTimeout(function(){
var p=document.createElement('pre');p.id='__check';
p.textContent=JSON.stringify({errors:window.__errors,plots:document.querySelectorAll('.plot-container').length,
svgs:document.querySelectorAll('.main-svg').length,points:document.querySelectorAll('.scatterlayer .point').length});
document.body.appendChild(p);},500);});</script>"""


def _chromium(*args: str, profile: Path) -> subprocess.CompletedProcess:
    command = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={profile}", "--proxy-server=http://127.0.0.1:9",  # offline: any fetch fails
               "--virtual-time-budget=10000", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=90)


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium not installed (Debian: apt-get install chromium)")
def test_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    data = compute_report(make_study(12))
    page = render(data)
    n_figures = len(figures(data))
    probe = tmp_path / "report.html"
    probe.write_text(page.replace("<head>", "<head>" + CHECK, 1).replace("</body>", REPORT + "</body>", 1))
    dom = _chromium("--dump-dom", probe.as_uri(), profile=tmp_path / "profile").stdout
    found = re.search(r'<pre id="__check">(.*?)</pre>', dom, re.S)
    assert found, f"check element missing; DOM starts {dom[:300]!r}"
    check = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    assert check["errors"] == []
    assert check["plots"] == n_figures == dom.count('class="plot-container plotly"')
    assert check["svgs"] >= n_figures and check["points"] > 0
    shot = tmp_path / "report.png"
    _chromium(f"--screenshot={shot}", "--window-size=1400,3000", probe.as_uri(), profile=tmp_path / "profile")
    assert shot.is_file() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    with Image.open(shot) as image:
        assert image.size == (1400, 3000)
        assert len(image.convert("RGB").getcolors(1 << 20) or []) > 50  # drawn plots, not a blank page
