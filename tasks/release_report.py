"""The release report (issue 35.4): one self-contained HTML file per version, for reviewers, approvers and on-call.

Model card, data version and validation suite, the gate's verdict with its forest plot and the holdout curves,
the shadow and canary evidence with their pictures, the approval record, the version's ledger entries and, once it
serves, its live metric and drift. Every picture is inlined as a PNG data URI and nothing is fetched from
anywhere: the file opens offline and can be mailed. Every string from the run, the registry or the ledger is
HTML-escaped (a reason or a comment is text, never markup).

What the report shows comes from where the pipeline put it (the release files, checked against the ledger's
digests; the run's plots/ and approvals/ artifacts; the monitoring runs); a section that cannot be read says
why instead of failing the report. `tollgate report VERSION` writes it; deploy_model logs it to the version's run
(report/release_report.html) before the approval wait, and again once the version serves.
"""

from __future__ import annotations

import base64
import html
import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow

from tasks.common import run_logger, tollgate_task
from tasks.pictures import PLOTS_DIR, drift_plots, live_plot, release_lines
from tasks.plots import Plot
from tollgate import ledger
from tollgate.context import Context
from tollgate.keys import key_part
from tollgate.ledger import LedgerEntry
from tollgate.release import Release, load_release

REPORT_DIR = "report"
REPORT_FILE = "release_report.html"
PNG = b"\x89PNG\r\n\x1a\n"
SECTIONS = ("training", "shadow", "canary")
# The order a reviewer reads them in: the gate first, then the curves; anything else after, by name.
ORDER = (
    "gate_forest",
    "roc",
    "precision_recall",
    "calibration",
    "confusion_matrix",
    "roc_per_class",
    "predicted_vs_actual",
    "residuals_vs_predicted",
    "residual_histogram",
    "score_distributions",
)


@dataclass
class ReportParts:
    """What one version's report shows, gathered from MLflow and the ledger."""

    model: str
    version: str
    stage: str
    run_id: str
    tags: dict[str, str]
    files: dict[str, Any] = field(default_factory=dict)  # release files by name (model_card.md, gate_verdict.json...)
    pictures: dict[str, list[tuple[str, bytes]]] = field(default_factory=dict)  # section -> [(title, png)]
    approvals: list[dict[str, Any]] = field(default_factory=list)
    entries: list[LedgerEntry] = field(default_factory=list)
    live: list[Plot] = field(default_factory=list)
    live_note: str = ""
    problems: list[str] = field(default_factory=list)  # sections that could not be read, and why
    made_at: str = ""


def _titles(client: mlflow.MlflowClient, run_id: str, folder: str, dst: Path) -> dict[str, str]:
    """Plot titles by name from a plots folder's data.json ({} when it has none)."""
    try:
        local = client.download_artifacts(run_id, f"{folder}/data.json", str(dst))
        return {name: str(body.get("title", name)) for name, body in json.loads(Path(local).read_text()).items()}
    except Exception:
        return {}


def run_pictures(client: mlflow.MlflowClient, run_id: str, folder: str) -> list[tuple[str, bytes]]:
    """The PNGs directly under a run's artifact `folder`, as (title, bytes); anything that is not a PNG is left out."""
    found = []
    with tempfile.TemporaryDirectory() as tmp:
        titles = _titles(client, run_id, folder, Path(tmp))
        for item in client.list_artifacts(run_id, folder):
            if item.is_dir or not item.path.endswith(".png"):
                continue
            data = Path(client.download_artifacts(run_id, item.path, tmp)).read_bytes()
            if data.startswith(PNG):
                name = Path(item.path).stem
                rank = ORDER.index(name) if name in ORDER else len(ORDER)
                found.append((rank, name, titles.get(name, name), data))
    return [(title, data) for _, _, title, data in sorted(found)]


def gather(ctx: Context, version: str) -> ReportParts:
    """Everything the report of `version` shows (RegistryError when there is no such version)."""
    cfg = ctx.config
    info = ctx.registry.get(version)
    parts = ReportParts(cfg.project.registered_model, info.version, info.stage, info.run_id, dict(info.tags))
    parts.made_at = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    client = mlflow.MlflowClient(tracking_uri=cfg.servers.mlflow_url)
    try:
        parts.tags |= client.get_run(info.run_id).data.tags  # the run's lineage tags (scoring path, git sha ...)
    except Exception as exc:
        parts.problems.append(f"run tags: {type(exc).__name__}: {exc}")
    release: Release | None = None
    try:
        release = load_release(cfg, ctx.registry, version=version)
    except Exception as exc:
        parts.problems.append(f"release files: {type(exc).__name__}: {exc}")
    if release is not None:
        for name in ("model_card.md", "data_version.json", "expectation_suite.json", "gate_verdict.json"):
            try:
                parts.files[name] = release.file(name)
            except Exception as exc:
                parts.problems.append(f"{name}: {type(exc).__name__}: {exc}")
    for section in SECTIONS:
        folder = PLOTS_DIR if section == "training" else f"{PLOTS_DIR}/{section}"
        try:
            parts.pictures[section] = run_pictures(client, info.run_id, folder)
        except Exception as exc:
            parts.problems.append(f"{section} pictures: {type(exc).__name__}: {exc}")
    try:
        parts.approvals = _approvals(client, info.run_id)
    except Exception as exc:
        parts.problems.append(f"approval records: {type(exc).__name__}: {exc}")
    model_entries = ledger.read(ctx.paths.ledger, parts.model)
    parts.entries = [e for e in model_entries if e.version == info.version]
    if release is not None:
        _live(parts, client, release, cfg.project.name, model_entries)
    return parts


def _approvals(client: mlflow.MlflowClient, run_id: str) -> list[dict[str, Any]]:
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for item in client.list_artifacts(run_id, "approvals"):
            if item.path.endswith(".json"):
                out.append(json.loads(Path(client.download_artifacts(run_id, item.path, tmp)).read_text()))
    return sorted(out, key=lambda a: str(a.get("at", "")))


def _monitoring_runs(client: mlflow.MlflowClient, project: str, model: str, monitor: str) -> list[Any]:
    experiment = client.get_experiment_by_name(f"{project}-monitoring")
    if experiment is None:
        return []
    query = f"tags.`tollgate.monitor` = '{monitor}' and tags.`tollgate.model` = '{model}'"
    return list(
        client.search_runs([experiment.experiment_id], query, order_by=["attributes.start_time DESC"], max_results=20)
    )


def _json_artifact(client: mlflow.MlflowClient, run_id: str, path: str) -> Any:
    with tempfile.TemporaryDirectory() as tmp:
        return json.loads(Path(client.download_artifacts(run_id, path, tmp)).read_text())


def _live(
    parts: ReportParts, client: mlflow.MlflowClient, release: Release, project: str, entries: list[LedgerEntry]
) -> None:
    """The live section: the newest backfill whose rows include this version (promotions and rollbacks of every
    version marked) with the drift checks' estimates of it before labels, and the newest drift check of it."""
    metric = release.objective.primary
    try:
        drift_runs = _monitoring_runs(client, project, parts.model, "drift")
        estimated = {f"v{parts.version} champion (estimated)": _estimates(drift_runs, parts.version, metric)}
        estimated = {k: v for k, v in estimated.items() if v}
        rows: list[dict[str, Any]] = []
        for run in _monitoring_runs(client, project, parts.model, "ground_truth"):
            body = _json_artifact(client, run.info.run_id, "monitoring/live_metrics.json")
            if any(str(r.get("model_version")) == parts.version for r in body.get("rows", [])):
                rows = body["rows"]
                parts.live_note = (
                    f"labels joined by the backfill of {_when(run.info.start_time)} (run {run.info.run_id})"
                )
                break
        if rows or estimated:
            parts.live.append(live_plot(rows, metric, release_lines(release, metric), entries, estimated))
            if estimated:
                parts.live_note += ("; " if parts.live_note else "") + "dashed: estimated from the log before labels"
        drift_runs = [r for r in drift_runs if r.data.tags.get("tollgate.model_version") == parts.version]
        for run in drift_runs[:1]:  # the newest
            parts.live += drift_plots(_json_artifact(client, run.info.run_id, "monitoring/drift.json"))
            window = run.data.tags.get("tollgate.window", "")
            parts.live_note += f"; drift of the window {window} checked at {_when(run.info.start_time)}"
    except Exception as exc:
        parts.problems.append(f"live section: {type(exc).__name__}: {exc}")


def _estimates(runs: list[Any], version: str, metric: str) -> list[tuple[float, float]]:
    """(window start, estimate) of the drift checks of `version` that estimated its metric (issue 36)."""
    key = f"estimated_{key_part(metric)}"
    return [
        (r.data.metrics["estimated_window_start"], r.data.metrics[key])
        for r in runs
        if r.data.tags.get("tollgate.model_version") == version
        and key in r.data.metrics
        and "estimated_window_start" in r.data.metrics
    ]


def _when(ms: int | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime((ms or 0) / 1000))


# -- rendering ---------------------------------------------------------------------------------------------
CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}
h1{margin-bottom:.2em} h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em} td,th{border:1px solid #ddd;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#f4f4f4} .fail{color:#b00020;font-weight:600} .pass{color:#1b7f3b} .muted{color:#777}
pre{background:#f7f7f7;padding:1em;overflow-x:auto;font-size:.85em;white-space:pre-wrap}
figure{display:inline-block;margin:.5em;vertical-align:top} figure img{max-width:100%;border:1px solid #eee}
figcaption{font-size:.85em;color:#555;text-align:center}
.problems{background:#fff4e5;border-left:4px solid #f0a030;padding:.5em 1em}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _table(rows: list[dict[str, Any]], columns: list[str], status: str | None = None) -> str:
    if not rows:
        return "<p class=muted>none</p>"
    head = "".join(f"<th>{_e(c)}</th>" for c in columns)
    body = []
    for r in rows:
        cls = f" class={_e(r.get(status))}" if status and r.get(status) in ("pass", "fail") else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{_e(_fmt(r.get(c)))}</td>" for c in columns) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _fmt(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else value


def _figures(pictures: list[tuple[str, bytes]]) -> str:
    if not pictures:
        return "<p class=muted>no pictures logged</p>"
    out = []
    for title, png in pictures:
        data = base64.b64encode(png).decode()
        out.append(
            f'<figure><img alt="{_e(title)}" src="data:image/png;base64,{data}"><figcaption>{_e(title)}</figcaption></figure>'
        )
    return "".join(out)


def render(parts: ReportParts) -> str:
    """The report as one HTML document (no external reference of any kind)."""
    files, out = parts.files, []
    out.append(f"<h1>{_e(parts.model)} v{_e(parts.version)}</h1>")
    out.append(
        f"<p>stage <b>{_e(parts.stage)}</b> &middot; MLflow run <code>{_e(parts.run_id)}</code> &middot; "
        f"scoring {_e(parts.tags.get('tollgate.scoring', '?'))} &middot; report made {_e(parts.made_at)}</p>"
    )
    if parts.problems:
        items = "".join(f"<li>{_e(p)}</li>" for p in parts.problems)
        out.append(f"<div class=problems><b>Parts of this report could not be read:</b><ul>{items}</ul></div>")
    out.append("<h2>Data</h2>")
    data = files.get("data_version.json") or {}
    out.append(_table([{"field": k, "value": v} for k, v in data.items()], ["field", "value"]))
    suite = files.get("expectation_suite.json") or {}
    expectations = suite.get("expectations", []) if isinstance(suite, dict) else []
    out.append(
        f"<p>Validated by the Great Expectations suite <code>{_e(suite.get('name', '?') if isinstance(suite, dict) else '?')}"
        f"</code>: {len(expectations)} expectations; a dataset that fails it registers no version.</p>"
    )
    out.append("<h2>Gate</h2>")
    verdict = files.get("gate_verdict.json")
    if verdict:
        word = "PASSED" if verdict.get("passed") else "REJECTED"
        out.append(
            f"<p class={'pass' if verdict.get('passed') else 'fail'}>{word} against {_e(verdict.get('baseline'))}</p>"
        )
        columns = ["scope", "check", "status", "n", "challenger", "champion", "diff", "ci_low", "ci_high", "threshold"]
        out.append(_table(verdict.get("checks", []), columns, "status"))
    out.append(_figures(parts.pictures.get("training", [])))
    for phase in ("shadow", "canary"):
        out.append(f"<h2>{phase.capitalize()}</h2>")
        out.append(
            _figures(parts.pictures.get(phase, []))
            if parts.pictures.get(phase)
            else f"<p class=muted>no {phase} phase recorded</p>"
        )
    out.append("<h2>Approval</h2>")
    rows = [
        {
            "at": a.get("at"),
            "answer": "approved" if a.get("approve") else "rejected",
            "by": a.get("approver"),
            "comment": a.get("comment"),
            "refused before": "; ".join(a.get("refused_before") or []),
        }
        for a in parts.approvals
    ]
    out.append(_table(rows, ["at", "answer", "by", "comment", "refused before"]))
    out.append("<h2>Ledger</h2>")
    entries = [
        {"at": e.at, "from": e.from_stage, "to": e.to_stage, "who": e.who, "why": e.reason, "hash": e.hash[:12]}
        for e in parts.entries
    ]
    out.append(_table(entries, ["at", "from", "to", "who", "why", "hash"]))
    out.append("<h2>Live</h2>")
    if parts.live:
        out.append(f"<p>{_e(parts.live_note)}</p>" + _figures([(p.title, p.png) for p in parts.live]))
    else:
        out.append("<p class=muted>no live metrics or drift checks of this version yet</p>")
    out.append("<h2>Model card</h2>")
    out.append(f"<pre>{_e(files.get('model_card.md', 'not available'))}</pre>")
    title = f"{_e(parts.model)} v{_e(parts.version)}: release report"
    return (
        f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{title}</title>"
        f"<style>{CSS}</style></head><body>{''.join(out)}</body></html>"
    )


def build_report(ctx: Context, version: str) -> str:
    """The HTML report of `version`."""
    return render(gather(ctx, version))


def report_link(ctx: Context, run_id: str) -> str:
    """Where MLflow's UI shows a run's logged report."""
    client = mlflow.MlflowClient(tracking_uri=ctx.config.servers.mlflow_url)
    experiment = client.get_run(run_id).info.experiment_id
    return (
        f"{ctx.config.servers.mlflow_url}/#/experiments/{experiment}/runs/{run_id}/artifacts/{REPORT_DIR}/{REPORT_FILE}"
    )


@tollgate_task
def publish_release_report(ctx: Context, version: str) -> str | None:
    """Build the version's report and log it to its run (report/release_report.html); the MLflow UI link to it,
    or None when it could not be built or logged (said in the run log; the rollout goes on)."""
    log = run_logger()
    try:
        parts = gather(ctx, version)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / REPORT_FILE
            path.write_text(render(parts))
            mlflow.MlflowClient(tracking_uri=ctx.config.servers.mlflow_url).log_artifact(
                parts.run_id, str(path), REPORT_DIR
            )
        link = report_link(ctx, parts.run_id)
    except Exception as exc:  # a report must never stop a rollout
        log.warning("could not build or log the release report of v%s: %s: %s", version, type(exc).__name__, exc)
        return None
    log.info("release report of v%s: %s", version, link)
    return link
