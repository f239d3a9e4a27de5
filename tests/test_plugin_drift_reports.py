"""Tests for the drift-reports Airflow plugin: helpers, auth dependency, and a live API server."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from plugins import drift_reports as dr

REPO_ROOT = Path(__file__).resolve().parent.parent


def _write_report(root: Path, report_id: str, mtime: float, **summary: Any) -> Path:
    folder = root / report_id
    folder.mkdir(parents=True)
    (folder / "report.html").write_text(f"<html><body>report {report_id}</body></html>")
    path = folder / "summary.json"
    path.write_text(json.dumps(summary))
    os.utime(path, (mtime, mtime))
    return folder


@pytest.fixture()
def reports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "reports"
    cols = [{"column": "dep_delay", "method": "wasserstein", "score": 0.4, "threshold": 0.1,
             "drifted": True},
            {"column": "<b>carrier</b>", "method": "jensenshannon", "score": 0.2, "threshold": 0.1,
             "drifted": True},
            {"column": "distance", "method": "wasserstein", "score": 0.01, "threshold": 0.1,
             "drifted": False}]
    _write_report(root, "scheduled__2024-01-01", 1_000, dag_run_id="scheduled__2024-01-01",
                  model_name="delay", model_version="1", drifted_share=0.1, status="ok", columns=[])
    _write_report(root, "manual__2024-01-03", 3_000, dag_run_id="manual__2024-01-03T00:00",
                  model_name="delay", model_version="3", drifted_share=2 / 3, status="drift",
                  columns=cols)
    _write_report(root, "manual__2024-01-02", 2_000, dag_run_id="<script>x</script>",
                  model_name="delay", model_version="2", drifted_share=0.0, status="ok", columns=[])
    # The run date the DAG recorded wins over the file's mtime (object stores have none).
    _write_report(root, "manual__2024-01-05", 500, dag_run_id="manual__2024-01-05", dag_id="train_and_deploy",
                  run_date="2024-01-05T03:00:00+00:00", model_name="delay", model_version="5",
                  drifted_share=0.2, drifted_columns=1, features=5, status="warning",
                  headline="Mostly unchanged: 1 of 5 features differ.", columns=[])
    # A writer's in-progress temp folder and a corrupt summary are not listed.
    _write_report(root, ".manual__2024-01-04.tmp-abcd1234", 4_000, status="ok")
    (root / "broken").mkdir()
    (root / "broken" / "summary.json").write_text("{not json")
    # A file outside the root that traversal attempts aim at.
    (tmp_path / "secret.txt").write_text("secret")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "report.html").write_text("outside")
    (root / "escape").symlink_to(tmp_path / "outside")
    monkeypatch.setenv("REPORTS_DIR", str(root))
    return root


def test_reports_root_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REPORTS_DIR", raising=False)
    monkeypatch.setenv("STATE_DIR", str(tmp_path))
    assert dr.reports_root() == (tmp_path / "reports").resolve()
    monkeypatch.setenv("REPORTS_DIR", str(tmp_path / "elsewhere"))
    assert dr.reports_root() == (tmp_path / "elsewhere").resolve()
    monkeypatch.delenv("REPORTS_DIR")
    monkeypatch.delenv("STATE_DIR")
    assert dr.reports_root() == REPO_ROOT / ".state" / "reports"


def test_list_reports_newest_first_skips_hidden_and_broken(reports: Path) -> None:
    entries = dr.list_reports(reports)
    assert [e.report_id for e in entries] == [
        "manual__2024-01-05", "manual__2024-01-03", "manual__2024-01-02", "scheduled__2024-01-01"]
    assert entries[1].summary["model_version"] == "3"
    assert entries[0].when.isoformat() == "2024-01-05T03:00:00+00:00"
    assert dr.list_reports(reports / "missing") == []


@pytest.mark.parametrize("report_id", [
    "..", ".", "../secret.txt", "..%2Fsecret.txt", "%2e%2e", "a/../..", "/etc", "", "escape",
    ".manual__2024-01-04.tmp-abcd1234", "nope", "x" * 300, "manual__2024-01-03\x00",
])
def test_resolve_rejects_traversal_and_unknown(reports: Path, report_id: str) -> None:
    assert dr.resolve_report_dir(reports, report_id) is None
    assert dr.resolve_report_file(reports, report_id, "report.html") is None


def test_resolve_accepts_report_files(reports: Path) -> None:
    folder = reports / "manual__2024-01-03"
    assert dr.resolve_report_dir(reports, "manual__2024-01-03") == folder.resolve()
    assert dr.resolve_report_file(reports, "manual__2024-01-03", "report.html") == (
        folder / "report.html").resolve()
    assert dr.resolve_report_file(reports, "manual__2024-01-03", "../secret.txt") is None
    assert dr.resolve_report_file(reports, "manual__2024-01-03", "missing.html") is None


def test_render_index_escapes_and_links(reports: Path) -> None:
    page = dr.render_index(dr.list_reports(reports), "/drift-reports")
    assert "<script>x</script>" not in page and "&lt;script&gt;" in page
    assert "&lt;b&gt;carrier&lt;/b&gt;" in page and "distance" not in page  # only drifted columns
    assert 'href="/drift-reports/reports/manual__2024-01-03"' in page
    assert "67%" in page and "delay v3" in page
    assert "1 of 5 (20%)" in page and "Mostly unchanged: 1 of 5 features differ." in page
    assert '<span class="status warning">some drift</span>' in page
    assert '<span class="status drift">drifted</span>' in page
    assert page.index("manual__2024-01-05") < page.index("manual__2024-01-03T00:00") < page.index(
        "scheduled__2024-01-01")
    assert "2024-01-05 03:00 UTC" in page
    assert "No drift reports yet" in dr.render_index([], "/drift-reports")


def test_the_gate_verdict_shows_next_to_the_runs_report(reports: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The gate writes verdict.json into the run's report folder (tasks.gate); the page reads it.
    verdict = {"status": "rejected", "promote": False, "candidate": "3", "mode": "enforce", "reason": "",
               "rules": [{"rule": "champion_roc_auc", "passed": False,
                          "reason": "candidate roc_auc 0.61 vs champion v2 0.69: <worse>"},
                         {"rule": "parity", "passed": True, "reason": "ONNX vs torch max |diff| 1e-07"}]}
    (reports / "manual__2024-01-03" / "verdict.json").write_text(json.dumps(verdict))
    overridden = {**verdict, "status": "overridden", "promote": True, "candidate": "5", "mode": "override",
                  "justification": "hotfix for the holiday schedule", "user": "ana"}
    (reports / "manual__2024-01-05" / "verdict.json").write_text(json.dumps(overridden))
    (reports / "scheduled__2024-01-01" / "verdict.json").write_text("{half a fi")  # being written: ignored

    entries = {e.report_id: e for e in dr.list_reports(reports)}
    assert entries["manual__2024-01-03"].verdict == verdict and entries["scheduled__2024-01-01"].verdict is None
    page = dr.render_index(list(entries.values()), "/drift-reports")
    row = next(r for r in page.split("<tr>") if "manual__2024-01-03T00:00" in r)
    assert '<span class="status drift">rejected</span>' in row and "v3 not promoted" in row
    assert "champion_roc_auc: candidate roc_auc 0.61 vs champion v2 0.69: &lt;worse&gt;" in row
    assert "parity" not in row  # passed rules stay off the list; the rules link has them all
    assert 'href="/drift-reports/reports/manual__2024-01-03/verdict.json"' in row
    row = next(r for r in page.split("<tr>") if "manual__2024-01-05" in r)
    assert "overridden" in row and "v5 promoted" in row and "hotfix for the holiday schedule (ana)" in row
    row = next(r for r in page.split("<tr>") if "scheduled__2024-01-01" in r)
    assert "no verdict" in row

    # The verdict file is served like the report, behind the same checks.
    from fastapi.testclient import TestClient

    app = dr.app
    app.dependency_overrides[dr.require_user] = lambda: "someone"
    try:
        client = TestClient(app)
        assert client.get("/reports/manual__2024-01-03/verdict.json").json()["status"] == "rejected"
        assert client.get("/reports/manual__2024-01-02/verdict.json").status_code == 404
        assert client.get("/reports/..%2F..%2Fsecret.txt/verdict.json").status_code == 404
    finally:
        app.dependency_overrides.clear()


def test_top_drifted_limits_and_tolerates_bad_input() -> None:
    cols = [{"column": str(i), "drifted": True} for i in range(5)] + [{"column": "n"}, "junk"]
    assert [c["column"] for c in dr.top_drifted(cols)] == ["0", "1", "2"]
    assert dr.top_drifted(None) == [] and dr.top_drifted("x") == []


class _FakeAuthManager:
    """Accepts the token 'good' (and 'viewer-no-ui' without UI access); rejects the rest."""

    async def get_user_from_token(self, token: str) -> str:
        from jwt import ExpiredSignatureError, InvalidTokenError

        if token == "expired":
            raise ExpiredSignatureError("expired")
        if token not in {"good", "no-ui"}:
            raise InvalidTokenError("bad")
        return token

    def is_authorized_view(self, *, access_view: Any, user: str) -> bool:
        return user == "good"


def test_app_requires_valid_token(reports: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import airflow.api_fastapi.app as api_app

    monkeypatch.setattr(api_app, "get_auth_manager", lambda: _FakeAuthManager())
    client = TestClient(dr.app, root_path="/drift-reports")
    for headers, cookies in [({}, {}), ({"Authorization": "Bearer bad"}, {}),
                             ({"Authorization": "Bearer expired"}, {}), ({}, {"_token": "bad"}),
                             ({"Authorization": "Basic good"}, {})]:
        client.cookies.clear()
        client.cookies.update(cookies)
        for path in ("/", "/reports/manual__2024-01-03", "/reports/manual__2024-01-03/summary.json"):
            resp = client.get(path, headers=headers)
            assert resp.status_code == 401, (path, headers, cookies)
            assert resp.json() == {"detail": "Not authenticated"}
    client.cookies.clear()
    assert client.get("/", headers={"Authorization": "Bearer no-ui"}).status_code == 403
    # A valid bearer token wins over a bad cookie, like Airflow's own API.
    client.cookies.set("_token", "bad")
    assert client.get("/", headers={"Authorization": "Bearer good"}).status_code == 200
    client.cookies.set("_token", "good")
    page = client.get("/")
    assert page.status_code == 200 and "manual__2024-01-03T00:00" in page.text
    report = client.get("/reports/manual__2024-01-03")
    assert report.status_code == 200 and "report manual__2024-01-03" in report.text
    assert report.headers["content-security-policy"].startswith("sandbox")
    assert client.get("/reports/manual__2024-01-03/summary.json").json()["model_version"] == "3"
    # httpx normalizes a literal ".." away; the live test sends it raw with http.client.
    for bad in ("escape", "..%2F..%2Fsecret.txt", "%2e%2e", ".manual__2024-01-04.tmp-abcd1234"):
        assert client.get(f"/reports/{bad}").status_code == 404, bad
        assert client.get(f"/reports/{bad}/summary.json").status_code == 404, bad


def test_the_dag_run_tab_opens_that_runs_report(reports: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import airflow.api_fastapi.app as api_app

    monkeypatch.setattr(api_app, "get_auth_manager", lambda: _FakeAuthManager())
    client = TestClient(dr.app, root_path="/drift-reports", follow_redirects=False)
    client.cookies.set("_token", "good")
    # The UI fills in {DAG_ID} and {RUN_ID} URL-encoded; the run id maps to its report folder.
    tab = client.get("/runs/train_and_deploy/manual__2024-01-05")
    assert tab.status_code == 307 and tab.headers["location"] == "/drift-reports/reports/manual__2024-01-05"
    # A report without a recorded DAG (older summaries) opens for any DAG's run of that id.
    assert client.get("/runs/train_and_deploy/manual__2024-01-03").status_code == 307
    # monitor_production's folders carry the DAG id: its hourly runs share run ids with the nightly ones.
    _write_report(reports, "monitor_production__manual__2024-01-05", 600, dag_id="monitor_production",
                  dag_run_id="manual__2024-01-05", status="ok", columns=[])
    tab = client.get("/runs/monitor_production/manual__2024-01-05")
    assert tab.headers["location"] == "/drift-reports/reports/monitor_production__manual__2024-01-05"
    tab = client.get("/runs/train_and_deploy/manual__2024-01-05")
    assert tab.headers["location"] == "/drift-reports/reports/manual__2024-01-05"
    for dag_id, run_id in [("rollback_model", "manual__2024-01-05"), ("train_and_deploy", "manual__2099"),
                           ("train_and_deploy", "%2E%2E"), ("train_and_deploy", "escape")]:
        page = client.get(f"/runs/{dag_id}/{run_id}")
        assert page.status_code == 200 and "No drift report for run" in page.text, (dag_id, run_id)
    # An encoded slash becomes a path separator before routing: no route matches.
    assert client.get("/runs/train_and_deploy/..%2F..%2Fsecret.txt").status_code == 404
    assert "<script>" not in client.get("/runs/x/%3Cscript%3E").text
    client.cookies.clear()
    assert client.get("/runs/train_and_deploy/manual__2024-01-05").status_code == 401


def test_reports_on_object_storage(monkeypatch: pytest.MonkeyPatch) -> None:
    import airflow.api_fastapi.app as api_app
    from upath import UPath

    root = UPath("memory://plugin-test/reports")
    (root / "manual__1").mkdir(parents=True, exist_ok=True)
    (root / "manual__1" / "report.html").write_text("<html>object report</html>")
    (root / "manual__1" / "summary.json").write_text(json.dumps(
        {"dag_run_id": "manual__1", "run_date": "2024-02-01T00:00:00+00:00", "status": "ok"}))
    monkeypatch.setenv("REPORTS_DIR", "memory://plugin-test/reports")
    monkeypatch.setattr(api_app, "get_auth_manager", lambda: _FakeAuthManager())
    assert [e.report_id for e in dr.list_reports(dr.reports_root())] == ["manual__1"]
    assert dr.resolve_report_dir(dr.reports_root(), "..") is None
    client = TestClient(dr.app, root_path="/drift-reports")
    client.cookies.set("_token", "good")
    assert "manual__1" in client.get("/").text
    report = client.get("/reports/manual__1")
    assert report.text == "<html>object report</html>"
    assert report.headers["content-security-policy"].startswith("sandbox")
    assert client.get("/reports/nope").status_code == 404


def test_plugin_declares_app_nav_entry_and_run_tab() -> None:
    plugin = dr.DriftReportsPlugin
    assert plugin.fastapi_apps == [{"app": dr.app, "url_prefix": "/drift-reports",
                                    "name": "Drift reports"}]
    nav, run_tab = plugin.external_views
    assert nav["destination"] == "nav" and nav["url_route"] == "drift-reports"
    assert nav["href"].endswith("/drift-reports/")
    assert run_tab["destination"] == "dag_run" and run_tab["url_route"] == "drift-report"
    assert run_tab["href"].endswith("/drift-reports/runs/{DAG_ID}/{RUN_ID}")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_live_api_server_serves_reports_to_logged_in_users(tmp_path: Path) -> None:
    """Starts `airflow api-server` on loopback with the plugin; needs ~15-30 s."""
    port, home, state = _free_port(), tmp_path / "airflow", tmp_path / "state"
    home.mkdir()
    (tmp_path / "dags").mkdir()
    _write_report(state / "reports", "manual__2024-01-03", time.time(), dag_run_id="manual__live",
                  model_name="delay", model_version="7", drifted_share=0.5, status="drift",
                  columns=[])
    (tmp_path / "secret.txt").write_text("secret")
    passwords = home / "passwords.json"
    passwords.write_text(json.dumps({"admin": "test-password"}))
    base = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW") and k != "REPORTS_DIR"}
    env.update({
        "AIRFLOW_HOME": str(home), "STATE_DIR": str(state),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO_ROOT / "plugins"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(tmp_path / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__API__HOST": "127.0.0.1", "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{base}/execution/",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
        "AIRFLOW__API_AUTH__JWT_SECRET": os.urandom(32).hex(),
    })
    airflow = str(Path(sys.executable).parent / "airflow")
    subprocess.run([airflow, "db", "migrate"], env=env, check=True, timeout=120,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = (tmp_path / "api-server.log").open("w")
    proc = subprocess.Popen([airflow, "api-server", "-H", "127.0.0.1", "-p", str(port)], env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        with httpx.Client(base_url=base, timeout=10) as client:
            deadline = time.monotonic() + 90
            while True:
                assert proc.poll() is None, (tmp_path / "api-server.log").read_text()[-3000:]
                try:
                    if client.get("/api/v2/monitor/health").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "api-server did not start"
                time.sleep(0.5)

            anon = client.get("/drift-reports/")
            assert anon.status_code == 401 and anon.json() == {"detail": "Not authenticated"}
            assert client.get("/drift-reports/reports/manual__2024-01-03").status_code == 401
            assert client.get("/drift-reports/", headers={
                "Authorization": "Bearer not-a-jwt"}).status_code == 401

            resp = client.post("/auth/token", json={"username": "admin", "password": "test-password"})
            assert resp.status_code == 201, resp.text
            token = resp.json()["access_token"]

            # The UI login sets the same JWT as the `_token` cookie; both ways must work.
            page = client.get("/drift-reports/", cookies={"_token": token})
            assert page.status_code == 200, page.text
            auth = {"Authorization": f"Bearer {token}"}
            page = client.get("/drift-reports/", headers=auth)
            assert "manual__live" in page.text and "delay v7" in page.text
            assert 'href="/drift-reports/reports/manual__2024-01-03"' in page.text
            report = client.get("/drift-reports/reports/manual__2024-01-03", headers=auth)
            assert report.status_code == 200 and "report manual__2024-01-03" in report.text
            summary = client.get("/drift-reports/reports/manual__2024-01-03/summary.json",
                                 headers=auth)
            assert summary.json()["dag_run_id"] == "manual__live"
            # http.client sends the path as is (httpx would normalize the dot segments away).
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            for bad in ("..", "../../secret.txt", "..%2Fsecret.txt", "%2e%2e", "%2E%2E%2F..%2Fsecret.txt",
                        "..%2F..%2F..%2Fetc%2Fpasswd", ".", "..;", "..\\secret.txt"):
                conn.request("GET", f"/drift-reports/reports/{bad}", headers=auth)
                resp = conn.getresponse()
                body = resp.read().decode(errors="replace")
                assert resp.status == 404 and "secret" not in body, (bad, resp.status)
            conn.close()

            plugins = client.get("/api/v2/plugins", headers=auth).json()["plugins"]
            (ours,) = [p for p in plugins if p["name"] == "drift_reports"]
            views = {v["destination"]: v for v in ours["external_views"]}
            assert views["nav"]["url_route"] == "drift-reports"
            assert views["dag_run"]["href"] == "/drift-reports/runs/{DAG_ID}/{RUN_ID}"
            tab = client.get("/drift-reports/runs/train_and_deploy/manual__2024-01-03", headers=auth,
                             follow_redirects=True)
            assert tab.status_code == 200 and "report manual__2024-01-03" in tab.text
            assert client.get("/drift-reports/runs/train_and_deploy/manual__2024-01-03").status_code == 401
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
