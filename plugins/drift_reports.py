"""Airflow UI plugin: a login-protected page listing the pipeline's Evidently drift reports."""

from __future__ import annotations

import html
import json
import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from airflow.configuration import conf
from airflow.plugins_manager import AirflowPlugin
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response

# The plugins folder sits at <repo>/plugins; the repo is not necessarily importable from the API
# server, so the default state dir is derived here instead of importing tasks.settings.
REPO_ROOT = Path(__file__).resolve().parent.parent
URL_PREFIX = "/drift-reports"
# Report folders are named by tasks.report.report_dir (DAG run id reduced to [A-Za-z0-9_.-]).
# A leading dot is refused too: that excludes '.', '..' and the writer's hidden temp folders.
REPORT_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,254}")
TOP_COLUMNS = 3
VERDICT_FILE = "verdict.json"  # tasks.gate.VERDICT_FILE: the gate's verdict, in the run's report folder
REPORT_HEADERS = {
    # The report runs Evidently's inline JS on Airflow's origin; the CSP sandbox gives it an opaque
    # origin, so it cannot call Airflow's API with the user's cookie. It needs no storage or cookies.
    "Content-Security-Policy": "sandbox allow-scripts allow-popups allow-downloads",
    "Cache-Control": "no-store",
}


@dataclass(frozen=True)
class ReportEntry:
    """One report folder: its id (folder name), when its run was asked for, and its summary."""

    report_id: str
    when: datetime
    summary: dict[str, Any]
    verdict: dict[str, Any] | None = None  # the promotion gate's verdict for the same run, once it exists


def reports_root() -> Path:
    """`$REPORTS_DIR` (a folder or an fsspec URL: s3://, gs://, ...), else `$STATE_DIR/reports`.

    The same store as the spec's `reports_root` (config/flights.yaml defaults to ${STATE_DIR}/reports).
    """
    override = os.environ.get("REPORTS_DIR", "")
    if "://" in override and not override.startswith("file://"):
        from upath import UPath  # universal_pathlib, installed with the pipeline (fsspec paths)

        return UPath(override)  # type: ignore[return-value]  # pathlib-compatible API
    if override:
        return Path(override.removeprefix("file://")).resolve()
    return (Path(os.environ.get("STATE_DIR") or REPO_ROOT / ".state") / "reports").resolve()


def _is_local(path: Path) -> bool:
    return isinstance(path, Path) and not getattr(path, "protocol", "")


def report_id_for_run(dag_run_id: str) -> str:
    """A DAG run id as its report folder's name: the same rule as tasks.report.report_id."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", dag_run_id)
    return re.sub(r"^\.", "_", name) or "_"


def resolve_report_dir(root: Path, report_id: str) -> Path | None:
    """The report folder for an id, or None unless it is a real folder directly under root."""
    if not REPORT_ID.fullmatch(report_id):
        return None
    if not _is_local(root):  # object keys: the id has no '/' and no leading dot, so it stays under root
        folder = root / report_id
        return folder if folder.is_dir() else None
    root = root.resolve()
    folder = (root / report_id).resolve()
    # Resolving follows symlinks: a link pointing outside the root fails this check.
    if folder.parent != root or not folder.is_dir():
        return None
    return folder


def resolve_report_file(root: Path, report_id: str, name: str) -> Path | None:
    """`<root>/<report_id>/<name>` if it is a regular file inside that folder, else None."""
    folder = resolve_report_dir(root, report_id)
    if folder is None or not REPORT_ID.fullmatch(name):
        return None
    if not _is_local(root):
        path = folder / name
        return path if path.is_file() else None
    path = (folder / name).resolve()
    if path.parent != folder or not path.is_file():
        return None
    return path


def _when(summary: dict[str, Any], path: Path) -> datetime:
    # The run's date as the DAG recorded it; else when the summary was written.
    try:
        when = datetime.fromisoformat(str(summary["run_date"]))
        return when if when.tzinfo else when.replace(tzinfo=UTC)
    except (KeyError, TypeError, ValueError):
        return datetime.fromtimestamp(path.stat().st_mtime, tz=UTC)


def _read_json(path: Path | None) -> dict[str, Any] | None:
    if path is None:
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # vanished or half-written: writers rename complete files into place, so rare
    return doc if isinstance(doc, dict) else None


def list_reports(root: Path) -> list[ReportEntry]:
    """Readable `*/summary.json` under root with the run's gate verdict, newest first (run date, then id)."""
    entries = []
    for path in root.glob("*/summary.json") if root.is_dir() else []:
        report_id = path.parent.name
        summary = _read_json(resolve_report_file(root, report_id, "summary.json"))
        if summary is not None:
            verdict = _read_json(resolve_report_file(root, report_id, VERDICT_FILE))
            entries.append(ReportEntry(report_id, _when(summary, path), summary, verdict))
    return sorted(entries, key=lambda e: (e.when, e.report_id), reverse=True)


def top_drifted(columns: Any, limit: int = TOP_COLUMNS) -> list[dict[str, Any]]:
    """The drifted columns in the summary's order (tasks.drift.summarize puts them first)."""
    if not isinstance(columns, list):
        return []
    return [c for c in columns if isinstance(c, dict) and c.get("drifted")][:limit]


def _fmt_share(value: Any) -> str:
    return f"{value:.0%}" if isinstance(value, (int, float)) else "—"


def _fmt_column(col: dict[str, Any]) -> str:
    """A drifted column's name, with its test in a tooltip (people want the name, analysts the test)."""
    score, threshold = col.get("score"), col.get("threshold")
    score_text = f"{score:.3g}" if isinstance(score, (int, float)) else "?"
    threshold_text = f"{threshold:.3g}" if isinstance(threshold, (int, float)) else "?"
    test = f"{col.get('method', '?')}: {score_text} (threshold {threshold_text})"
    return f"<span title=\"{html.escape(test)}\">{html.escape(str(col.get('column', '?')))}</span>"


def _fmt_features(s: dict[str, Any]) -> str:
    share = _fmt_share(s.get("drifted_share"))
    count, total = s.get("drifted_columns"), s.get("features")
    return f"{count} of {total} ({share})" if isinstance(count, int) and isinstance(total, int) else share


STYLE = (
    "body{font-family:system-ui,sans-serif;margin:1rem;color:#1a1a1a}table{border-collapse:collapse}"
    "td,th{border-bottom:1px solid #ccc;padding:.4rem .6rem;text-align:left;vertical-align:top}"
    "th{background:#f4f4f4}.status{font-weight:600;white-space:nowrap}.drift{color:#b00020}"
    ".warning{color:#9a6700}.ok{color:#1b5e20}.words{display:block;min-width:14rem;max-width:30rem}.muted{color:#666}"
    ".nowrap{white-space:nowrap}.reasons{margin:.2rem 0;padding-left:1.1rem;min-width:12rem;max-width:20rem}"
)
STATUS_WORDS = {"drift": "drifted", "warning": "some drift", "ok": "no drift"}
# tasks.gate statuses in words, and the colour each gets
GATE_WORDS = {"passed": ("passed", "ok"), "rejected": ("rejected", "drift"), "overridden": ("overridden", "warning"),
              "dry_run_passed": ("dry run: would pass", "muted"), "dry_run_rejected": ("dry run: would fail", "muted")}


def _fmt_gate(verdict: dict[str, Any] | None, link: str) -> str:
    """The gate's verdict in a word, what happened to the candidate, and the failed rules' sentences."""
    esc = html.escape
    if verdict is None:
        return '<span class="muted">no verdict</span>'
    status = str(verdict.get("status", "?"))
    word, css = GATE_WORDS.get(status, (status, "muted"))
    candidate = verdict.get("candidate", "?")
    moved = "promoted" if verdict.get("promote") else "not promoted"
    rules = verdict.get("rules") if isinstance(verdict.get("rules"), list) else []
    failed = [r for r in rules if isinstance(r, dict) and not r.get("passed")]
    reasons = "".join(f"<li>{esc(str(r.get('rule', '?')))}: {esc(str(r.get('reason', '')))}</li>" for r in failed)
    extra = [esc(str(verdict["reason"]))] if verdict.get("reason") else []
    if verdict.get("justification"):
        extra.append(f"justification: {esc(str(verdict['justification']))}"
                     + (f" ({esc(str(verdict['user']))})" if verdict.get("user") else ""))
    return (f"<span class=\"status {css}\">{esc(word)}</span> <span class=\"nowrap\">v{esc(str(candidate))} "
            f"{moved}</span>" + (f"<ul class=\"reasons\">{reasons}</ul>" if reasons else "")
            + "".join(f"<div class=\"muted\">{e}</div>" for e in extra)
            + f" <a href=\"{esc(link)}/{VERDICT_FILE}\">rules</a>")


def _row(e: ReportEntry, base: str) -> str:
    esc, s = html.escape, e.summary
    link = f"{base}/reports/{quote(e.report_id)}"
    status = str(s.get("status", "?"))
    css = status if status in STATUS_WORDS else "muted"
    drifted = ", ".join(_fmt_column(c) for c in top_drifted(s.get("columns"))) or "—"  # escaped inside
    cells = [
        f"<a class=\"nowrap\" href=\"{esc(link)}\">{esc(e.when.strftime('%Y-%m-%d %H:%M UTC'))}</a>",
        esc(str(s.get("dag_run_id", e.report_id))),
        esc(f"{s.get('model_name', '—')} v{s.get('model_version', '?')}"),
        f"<span class=\"status {css}\">{esc(STATUS_WORDS.get(status, status))}</span>",
        esc(_fmt_features(s)), drifted,
        _fmt_gate(e.verdict, link),
        f"<span class=\"words\">{esc(str(s.get('headline', '')))}</span>",
        f"<a href=\"{esc(link)}\">open</a> · <a href=\"{esc(link)}/summary.json\">json</a>",
    ]
    return "<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"


def render_index(entries: list[ReportEntry], base: str) -> str:
    """The report table as a standalone HTML page; every value from disk is escaped."""
    body = "".join(_row(e, base) for e in entries) or '<tr><td colspan="9">No drift reports yet.</td></tr>'
    head = "".join(f"<th>{h}</th>" for h in ("Date", "DAG run", "Model", "Status", "Drifted features",
                                              "Top drifted columns", "Promotion gate", "In words", "Report"))
    return (
        f"<!doctype html><html><head><meta charset=\"utf-8\"><title>Drift reports</title><style>{STYLE}</style>"
        "</head><body><h1>Drift reports</h1><p class=\"muted\">Each run compares the data of its window with the "
        "data the serving model (the champion) was trained on; the gate column says whether the run's candidate "
        "was promoted and which rules it failed. Newest first; open a report for the details.</p>"
        f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></body></html>"
    )


def render_missing(dag_id: str, run_id: str) -> str:
    """The DAG run tab of a run without a report (another DAG, or the run has not reached drift_report)."""
    return (
        f"<!doctype html><html><head><meta charset=\"utf-8\"><style>{STYLE}</style></head><body>"
        f"<p>No drift report for run <b>{html.escape(run_id)}</b> of <b>{html.escape(dag_id)}</b>. Runs of "
        "train_and_deploy write one in their drift_report task, after training; runs of monitor_production "
        "in report_drift, when the interval has predictions.</p></body></html>"
    )


def _request_token(request: Request) -> str | None:
    # Same precedence as Airflow's core API (security.get_user): an explicit bearer token wins,
    # else the `_token` cookie the UI login sets (sent by the browser to the iframe too).
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return request.cookies.get("_token") or None


async def require_user(request: Request) -> Any:
    """FastAPI dependency: the Airflow user behind the request's JWT, else 401 (403 if not allowed).

    Plugin apps are mounted without Airflow's auth, so every route must depend on this.
    """
    # Imported here: they pull in the auth manager and ORM models, which only the API server needs.
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import AccessView
    from jwt import InvalidTokenError

    unauthorized = HTTPException(401, "Not authenticated", headers={"WWW-Authenticate": "Bearer"})
    token = _request_token(request)
    if token is None:
        raise unauthorized
    auth_manager = get_auth_manager()
    try:
        # Checks signature, expiry, audience and the revoked-token table, then builds the user.
        user = await auth_manager.get_user_from_token(token)
    except InvalidTokenError:  # ExpiredSignatureError is a subclass
        raise unauthorized from None
    # Reports show DAG runs and data statistics: any user allowed to use the UI may read them.
    if not auth_manager.is_authorized_view(access_view=AccessView.WEBSITE, user=user):
        raise HTTPException(403, "Forbidden")
    return user


app = FastAPI(title="Drift reports", dependencies=[Depends(require_user)], docs_url=None,
              redoc_url=None, openapi_url=None)


@app.get("/", response_class=HTMLResponse)
def index(request: Request) -> HTMLResponse:
    # root_path is the mount point (plus any [api] base_url path), so links work behind a prefix.
    base = request.scope.get("root_path", URL_PREFIX).rstrip("/")
    return HTMLResponse(render_index(list_reports(reports_root()), base),
                        headers={"Cache-Control": "no-store"})


def _file_response(path: Path, media_type: str, headers: dict[str, str]) -> Response:
    if _is_local(path):
        return FileResponse(path, media_type=media_type, headers=headers)
    return Response(path.read_bytes(), media_type=media_type, headers=headers)  # object storage


@app.get("/reports/{report_id}")
def report_html(report_id: str) -> Response:
    path = resolve_report_file(reports_root(), report_id, "report.html")
    if path is None:
        raise HTTPException(404, "Report not found")
    return _file_response(path, "text/html", REPORT_HEADERS)


@app.get("/reports/{report_id}/summary.json")
def report_summary(report_id: str) -> Response:
    path = resolve_report_file(reports_root(), report_id, "summary.json")
    if path is None:
        raise HTTPException(404, "Report not found")
    return _file_response(path, "application/json", {"Cache-Control": "no-store"})


@app.get("/reports/{report_id}/verdict.json")
def report_verdict(report_id: str) -> Response:
    path = resolve_report_file(reports_root(), report_id, VERDICT_FILE)
    if path is None:
        raise HTTPException(404, "No gate verdict for this run")
    return _file_response(path, "application/json", {"Cache-Control": "no-store"})


@app.get("/runs/{dag_id}/{run_id}")
def run_report(request: Request, dag_id: str, run_id: str) -> Response:
    """The DAG run page's "Drift report" tab: that run's report, or a page saying there is none."""
    root = reports_root()
    # train_and_deploy's folders are named by the run id; other DAGs' (monitor_production, hourly) by
    # "<dag>__<run id>", since the two DAGs' scheduled runs can share a run id.
    for report_id in (report_id_for_run(f"{dag_id}__{run_id}"), report_id_for_run(run_id)):
        summary = resolve_report_file(root, report_id, "summary.json")
        if summary is not None and _dag_of(summary) in (None, dag_id):
            break
    else:
        return HTMLResponse(render_missing(dag_id, run_id), headers={"Cache-Control": "no-store"})
    base = request.scope.get("root_path", URL_PREFIX).rstrip("/")
    return RedirectResponse(f"{base}/reports/{quote(report_id)}", status_code=307)


def _dag_of(summary: Path) -> str | None:
    try:
        recorded = json.loads(summary.read_text(encoding="utf-8")).get("dag_id")
    except (OSError, ValueError, AttributeError):
        return None
    return str(recorded) if recorded else None  # older summaries did not record it


def _ui_path(path: str) -> str:
    # The API server mounts everything under the path of [api] base_url (often just "/").
    base_path = urlsplit(conf.get("api", "base_url", fallback="") or "/").path
    return f"{base_path.rstrip('/')}{URL_PREFIX}{path}"


class DriftReportsPlugin(AirflowPlugin):
    """Mounts the report app, adds "Drift reports" to the navigation and a "Drift report" tab to DAG runs."""

    name = "drift_reports"
    fastapi_apps = [{"app": app, "url_prefix": URL_PREFIX, "name": "Drift reports"}]
    # With url_route the UI shows href in an iframe: /plugin/drift-reports for the menu entry, and
    # /dags/<dag>/runs/<run>/plugin/drift-report for the run tab ({DAG_ID}, {RUN_ID} filled in by the UI).
    external_views = [
        {"name": "Drift reports", "href": _ui_path("/"), "destination": "nav", "url_route": "drift-reports"},
        {"name": "Drift report", "href": _ui_path("/runs/{DAG_ID}/{RUN_ID}"), "destination": "dag_run",
         "url_route": "drift-report"},
    ]
