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
from fastapi.responses import FileResponse, HTMLResponse

# The plugins folder sits at <repo>/plugins; the repo is not necessarily importable from the API
# server, so the default state dir is derived here instead of importing tasks.settings.
REPO_ROOT = Path(__file__).resolve().parent.parent
URL_PREFIX = "/drift-reports"
# Report folders are named by tasks.report.report_dir (DAG run id reduced to [A-Za-z0-9_.-]).
# A leading dot is refused too: that excludes '.', '..' and the writer's hidden temp folders.
REPORT_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,254}")
TOP_COLUMNS = 3


@dataclass(frozen=True)
class ReportEntry:
    """One report folder: its id (folder name), summary.json mtime and parsed summary."""

    report_id: str
    mtime: float
    summary: dict[str, Any]


def reports_root() -> Path:
    """`$REPORTS_DIR`, else `$STATE_DIR/reports` (the same default as config/flights.yaml)."""
    if override := os.environ.get("REPORTS_DIR"):
        return Path(override).resolve()
    return (Path(os.environ.get("STATE_DIR") or REPO_ROOT / ".state") / "reports").resolve()


def resolve_report_dir(root: Path, report_id: str) -> Path | None:
    """The report folder for an id, or None unless it is a real folder directly under root."""
    if not REPORT_ID.fullmatch(report_id):
        return None
    root = root.resolve()
    folder = (root / report_id).resolve()
    # Resolving follows symlinks: a link pointing outside the root fails this check.
    if folder.parent != root or not folder.is_dir():
        return None
    return folder


def resolve_report_file(root: Path, report_id: str, name: str) -> Path | None:
    """`<root>/<report_id>/<name>` if it is a regular file inside that folder, else None."""
    folder = resolve_report_dir(root, report_id)
    if folder is None:
        return None
    path = (folder / name).resolve()
    if path.parent != folder or not path.is_file():
        return None
    return path


def list_reports(root: Path) -> list[ReportEntry]:
    """Readable `*/summary.json` under root, newest first (mtime, then id for ties)."""
    entries = []
    for path in root.glob("*/summary.json") if root.is_dir() else []:
        report_id = path.parent.name
        if resolve_report_file(root, report_id, "summary.json") is None:
            continue
        try:
            summary = json.loads(path.read_text(encoding="utf-8"))
            mtime = path.stat().st_mtime
        except (OSError, ValueError):
            continue  # vanished or half-written: the writer renames folders atomically, so rare
        if isinstance(summary, dict):
            entries.append(ReportEntry(report_id, mtime, summary))
    return sorted(entries, key=lambda e: (e.mtime, e.report_id), reverse=True)


def top_drifted(columns: Any, limit: int = TOP_COLUMNS) -> list[dict[str, Any]]:
    """The drifted columns in the summary's order (tasks.drift.summarize puts them first)."""
    if not isinstance(columns, list):
        return []
    return [c for c in columns if isinstance(c, dict) and c.get("drifted")][:limit]


def _fmt_share(value: Any) -> str:
    return f"{value:.0%}" if isinstance(value, (int, float)) else "—"


def _fmt_column(col: dict[str, Any]) -> str:
    score = col.get("score")
    score_text = f"{score:.3g}" if isinstance(score, (int, float)) else "?"
    return f"{col.get('column', '?')} ({col.get('method', '?')}: {score_text})"


def render_index(entries: list[ReportEntry], base: str) -> str:
    """The report table as a standalone HTML page; every value from disk is escaped."""
    esc = html.escape
    rows = []
    for e in entries:
        s = e.summary
        when = datetime.fromtimestamp(e.mtime, tz=UTC).strftime("%Y-%m-%d %H:%M UTC")
        link = f"{base}/reports/{quote(e.report_id)}"
        model = f"{s.get('model_name', '—')} v{s.get('model_version', '?')}"
        drifted = top_drifted(s.get("columns"))
        status = str(s.get("status", "?"))
        rows.append(
            f"<tr><td><a href=\"{esc(link)}\">{esc(when)}</a></td>"
            f"<td>{esc(str(s.get('dag_run_id', e.report_id)))}</td><td>{esc(model)}</td>"
            f"<td>{esc(_fmt_share(s.get('drifted_share')))}</td>"
            f"<td class=\"{'drift' if status == 'drift' else 'ok'}\">{esc(status)}</td>"
            f"<td>{esc(', '.join(_fmt_column(c) for c in drifted) or '—')}</td>"
            f"<td><a href=\"{esc(link)}/summary.json\">json</a></td></tr>"
        )
    body = "".join(rows) or '<tr><td colspan="7">No drift reports yet.</td></tr>'
    return (
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Drift reports</title><style>"
        "body{font-family:system-ui,sans-serif;margin:1rem}table{border-collapse:collapse}"
        "td,th{border-bottom:1px solid #ccc;padding:.3rem .6rem;text-align:left}"
        ".drift{color:#b00020;font-weight:600}.ok{color:#1b5e20}</style></head><body>"
        "<h1>Drift reports</h1><table><thead><tr><th>Date</th><th>DAG run</th><th>Model</th>"
        "<th>Drifted share</th><th>Status</th><th>Top drifted columns</th><th></th></tr></thead>"
        f"<tbody>{body}</tbody></table></body></html>"
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


@app.get("/reports/{report_id}")
def report_html(report_id: str) -> FileResponse:
    path = resolve_report_file(reports_root(), report_id, "report.html")
    if path is None:
        raise HTTPException(404, "Report not found")
    # The report runs Evidently's inline JS on Airflow's origin; the CSP sandbox gives it an opaque
    # origin, so it cannot call Airflow's API with the user's cookie. It needs no storage or cookies.
    return FileResponse(path, media_type="text/html", headers={
        "Content-Security-Policy": "sandbox allow-scripts allow-popups allow-downloads",
        "Cache-Control": "no-store"})


@app.get("/reports/{report_id}/summary.json")
def report_summary(report_id: str) -> FileResponse:
    path = resolve_report_file(reports_root(), report_id, "summary.json")
    if path is None:
        raise HTTPException(404, "Report not found")
    return FileResponse(path, media_type="application/json", headers={"Cache-Control": "no-store"})


def _ui_href() -> str:
    # The API server mounts everything under the path of [api] base_url (often just "/").
    base_path = urlsplit(conf.get("api", "base_url", fallback="") or "/").path
    return f"{base_path.rstrip('/')}{URL_PREFIX}/"


class DriftReportsPlugin(AirflowPlugin):
    """Mounts the report app and adds a "Drift reports" menu entry shown inside the UI."""

    name = "drift_reports"
    fastapi_apps = [{"app": app, "url_prefix": URL_PREFIX, "name": "Drift reports"}]
    # url_route makes the UI render href in an iframe at /plugin/drift-reports.
    external_views = [{"name": "Drift reports", "href": _ui_href(), "destination": "nav",
                       "url_route": "drift-reports"}]
