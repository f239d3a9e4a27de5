"""A person's view: headless Chromium (Debian's package) logs into a real Airflow and reads the drift reports.

Chromium is driven over the DevTools protocol with `websockets` (already installed with Airflow): no
selenium, no browser download. Screenshots land in the test's tmp dir; docs/drift-reports.png is one.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import numpy as np
import pandas as pd
import pytest
from live_airflow import PASSWORD, REPO, api_server
from websockets.sync.client import connect

from tasks.config import Drift, Features, PipelineSpec
from tasks.dataset import LABEL
from tasks.drift import Side, build_drift_report
from tasks.report import report_id

pytestmark = pytest.mark.slow
WAIT_S = 60
EVIDENTLY_DRIFT_TITLE = "Share of Drifted Columns"  # a widget Evidently renders with JS: the report is not blank
# An iframe's target can be attached before its document has a body: not rendered yet, rather than an error.
RENDERED = f"!!document.body && document.body.innerText.includes({json.dumps(EVIDENTLY_DRIFT_TITLE)})"


class Page:
    """One Chromium tab over the DevTools protocol: navigate, evaluate, wait, screenshot, collect errors."""

    def __init__(self, ws: Any) -> None:
        self.ws, self.ids = ws, itertools.count(1)
        self.events: list[dict[str, Any]] = []  # DevTools events, in arrival order

    def _receive(self, timeout: float) -> dict[str, Any]:
        message: dict[str, Any] = json.loads(self.ws.recv(timeout=timeout))
        if "id" not in message:
            self.events.append(message)
        return message

    def send(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        call_id = next(self.ids)
        self.ws.send(json.dumps({"id": call_id, "method": method, "params": params,
                                 **({"sessionId": session} if session else {})}))
        while (message := self._receive(WAIT_S)).get("id") != call_id:
            pass
        if "error" in message:
            raise RuntimeError(f"{method}: {message['error']}")
        return dict(message.get("result", {}))

    def evaluate(self, expression: str, session: str | None = None) -> Any:
        result = self.send("Runtime.evaluate", session, expression=expression, returnByValue=True,
                           awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, what: str, session: str | None = None) -> Any:
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            if value := self.evaluate(expression, session):
                return value
            time.sleep(0.25)
        raise AssertionError(f"timed out waiting for {what}; page text: {self.text()[:500]!r}")

    def goto(self, url: str) -> int:
        """Open url and wait for its load event; the HTTP status of the document it ended on."""
        start = len(self.events)
        frame = self.send("Page.navigate", url=url)["frameId"]
        deadline = time.monotonic() + WAIT_S
        while not any(e.get("method") == "Page.loadEventFired" for e in self.events[start:]):
            assert time.monotonic() < deadline, f"{url} did not load"
            self._receive(deadline - time.monotonic())
        statuses = [e["params"]["response"]["status"] for e in self.events[start:]
                    if e.get("method") == "Network.responseReceived" and e["params"].get("type") == "Document"
                    and e["params"].get("frameId") == frame]
        assert statuses, f"no document response for {url}"
        return int(statuses[-1])  # redirects are not responses of their own here

    def frame_session(self, url_suffix: str) -> str:
        """A DevTools session in the iframe showing url_suffix. The report's CSP sandbox gives it an
        opaque origin, so Chromium runs it out of process: a target of its own, not the page's frame."""
        deadline = time.monotonic() + WAIT_S
        while True:
            frames = [t for t in self.send("Target.getTargets")["targetInfos"] if t["type"] == "iframe"]
            found = [t for t in frames if t["url"].endswith(url_suffix)]
            if found:
                return str(self.send("Target.attachToTarget", targetId=found[0]["targetId"], flatten=True)["sessionId"])
            assert time.monotonic() < deadline, f"no iframe shows {url_suffix}: {[t['url'] for t in frames]}"
            time.sleep(0.25)

    def text(self) -> str:
        return str(self.evaluate("document.body ? document.body.innerText : ''"))

    def type_into(self, selector: str, value: str) -> None:
        self.evaluate(f"document.querySelector({json.dumps(selector)}).focus()")
        self.send("Input.insertText", text=value)  # real input events, as React expects

    def screenshot(self, path: Path) -> Path:
        path.write_bytes(base64.b64decode(self.send("Page.captureScreenshot", format="png")["data"]))
        return path

    def errors(self) -> list[str]:
        """Uncaught exceptions and console errors seen so far."""
        found = []
        for e in self.events:
            if e.get("method") == "Runtime.exceptionThrown":
                details = e["params"]["exceptionDetails"]
                found.append(f"{details.get('url', '')}: {details.get('exception', {}).get('description', details)}")
            elif e.get("method") == "Runtime.consoleAPICalled" and e["params"]["type"] == "error":
                found.append(" ".join(str(a.get("value", a.get("description", ""))) for a in e["params"]["args"]))
        return found


@contextmanager
def chromium(profile: Path) -> Iterator[Page]:
    """Debian's chromium, headless, with DevTools on a free loopback port."""
    binary = shutil.which("chromium")
    assert binary, "Debian's chromium is not installed: apt-get install chromium chromium-driver (.ci/run does)"
    args = [binary, "--headless", "--disable-gpu", "--no-first-run", "--no-default-browser-check",
            "--disable-extensions", "--disable-dev-shm-usage", "--window-size=1440,900", "--hide-scrollbars",
            "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0", f"--user-data-dir={profile}"]
    if os.geteuid() == 0:
        args.append("--no-sandbox")  # Chromium refuses to run as root with its sandbox (CI containers)
    proc = subprocess.Popen([*args, "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + WAIT_S
        while not (port_file.exists() and port_file.read_text().strip()):
            assert proc.poll() is None and time.monotonic() < deadline, "chromium did not start"
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        (target,) = [t for t in httpx.get(f"http://127.0.0.1:{port}/json/list").json() if t["type"] == "page"]
        with connect(target["webSocketDebuggerUrl"], max_size=None) as ws:
            page = Page(ws)
            for domain in ("Page", "Runtime", "Network"):
                page.send(f"{domain}.enable")
            yield page
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)


def _frame(seed: int, shift: float, new_carrier_share: float) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    carrier = rng.choice(["AA", "UA", "DL", "B6"], 2000).astype(object)
    carrier[rng.random(2000) < new_carrier_share] = "ZZ"
    return pd.DataFrame({"distance": rng.normal(1000 + shift, 300, 2000), "temp": rng.normal(60 + shift / 10, 10, 2000),
                         "carrier": carrier, "origin": rng.choice(["JFK", "LGA", "EWR"], 2000),
                         LABEL: (rng.random(2000) < 0.2).astype("float32")})


def _write_report(spec: PipelineSpec, root: Path, run_id: str, run_date: str, version: str, shift: float) -> str:
    features = Features(numeric=["distance", "temp"], categorical=["carrier", "origin"])
    small = spec.model_copy(update={"features": features, "drift": Drift()})
    build_drift_report(small, Side(_frame(1, shift, shift / 1000), "this window"),
                       Side(_frame(2, 0, 0), f"the data champion v{int(version) - 1} was trained on"),
                       root / report_id(run_id), score=lambda f: 1 / (1 + np.exp(-(f["distance"] - 1000) / 300)),
                       context={"dag_id": "train_and_deploy", "dag_run_id": run_id, "run_date": run_date,
                                "model_name": "flights_delay", "model_version": version})
    return report_id(run_id)


def _write_verdict(root: Path, report: str, candidate: str, passed: bool) -> None:
    """A gate verdict as tasks.gate writes it into the run's report folder (the page shows it)."""
    rules = [{"rule": "parity", "passed": True, "reason": "ONNX vs torch max |diff| 1.2e-07 on the whole holdout"},
             {"rule": "champion_roc_auc", "passed": passed,
              "reason": f"candidate roc_auc {0.731 if passed else 0.702:.3f} vs champion v2 0.714 "
                        f"(at most 0.01 worse allowed)"}]
    verdict = {"status": "passed" if passed else "rejected", "promote": passed, "mode": "enforce", "reason": "",
               "candidate": candidate, "champion": "2", "rules": rules, "justification": None}
    (root / report / "verdict.json").write_text(json.dumps(verdict))


def _trigger(base: str, token: str) -> tuple[str, str]:
    resp = httpx.post(f"{base}/api/v2/dags/train_and_deploy/dagRuns", json={"logical_date": None},
                      headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert resp.status_code == 200, resp.text
    return str(resp.json()["dag_run_id"]), str(resp.json()["run_after"])


def test_a_logged_in_browser_reads_the_drift_reports(spec, tmp_path):
    reports = tmp_path / "state" / "reports"
    _write_report(spec, reports, "scheduled__2013-06-30T03:00:00+00:00", "2013-06-30T03:00:00+00:00", "2", 0)
    _write_report(spec, reports, "scheduled__2013-07-30T03:00:00+00:00", "2013-07-30T03:00:00+00:00", "2", 20)
    with api_server(tmp_path, REPO / "dags", {"STATE_DIR": str(tmp_path / "state"), "REPORTS_DIR": str(reports)},
                    reserialize=True) as (base, token), chromium(tmp_path / "profile") as page:
        run_id, run_after = _trigger(base, token)  # a real DAG run (no scheduler runs it): its page has the tab
        newest = _write_report(spec, reports, run_id, run_after, "3", 600)
        _write_verdict(reports, newest, "3", passed=False)
        _write_verdict(reports, report_id("scheduled__2013-07-30T03:00:00+00:00"), "2", passed=True)

        # Given no login, the plugin refuses.
        assert page.goto(f"{base}/drift-reports/") == 401 and "Not authenticated" in page.text()

        # When the user logs in through Airflow's login form, they land on the Drift reports page.
        page.goto(f"{base}/auth/login?next={quote(base + '/plugin/drift-reports')}")
        page.wait_for("!!document.querySelector('input[name=username]')", "the login form")
        page.type_into("input[name=username]", "admin")
        page.type_into("input[name=password]", PASSWORD)
        page.evaluate("document.querySelector('button[type=submit]').click()")
        page.wait_for("location.pathname === '/plugin/drift-reports'", "the redirect after login")
        rows = page.wait_for(
            "(() => { const f = document.querySelector('iframe[title=\"Drift reports\"]');"
            " const d = f && f.contentDocument; const rows = d ? d.querySelectorAll('tbody tr') : [];"
            " return rows.length >= 3 && [...rows].map(r => r.innerText); })()", "the report list in the UI")
        shot = page.screenshot(tmp_path / "drift-reports.png")

        # Then the list shows both runs, newest first, with status and top drifted columns.
        assert run_id in rows[0] and "flights_delay v3" in rows[0] and "drifted" in rows[0]
        assert "carrier" in rows[0] and "distance" in rows[0]
        assert "rejected" in rows[0] and "v3 not promoted" in rows[0] and "champion_roc_auc" in rows[0]
        assert "passed" in rows[1] and "v2 promoted" in rows[1] and "no verdict" in rows[2]
        assert "scheduled__2013-07-30" in rows[1] and "some drift" in rows[1] and "temp" in rows[1]
        assert "scheduled__2013-06-30" in rows[2] and "no drift" in rows[2]

        # And a report opens in full: Evidently renders its widgets, not an empty or error page.
        assert page.goto(f"{base}/drift-reports/reports/{newest}") == 200
        page.wait_for(RENDERED, "Evidently's widgets")
        assert "carrier" in page.text() and len(page.text()) > 500
        page.screenshot(tmp_path / "drift-report.png")

        # And the DAG run's "Drift report" tab shows that run's report.
        page.goto(f"{base}/dags/train_and_deploy/runs/{quote(run_id, safe='')}/plugin/drift-report")
        page.wait_for("!!document.querySelector('iframe[title=\"Drift report\"]')", "the run's Drift report tab")
        # The tab's iframe asks for /drift-reports/runs/<dag>/<run>, is redirected to the report, renders it.
        frame = page.frame_session(f"/drift-reports/reports/{newest}")
        page.wait_for(RENDERED,
                      "the report inside the run tab", frame)
        page.screenshot(tmp_path / "dag-run-tab.png")

        errors = [e for e in page.errors() if "/drift-reports" in e or "Evidently" in e]
        assert errors == [], errors
    assert shot.stat().st_size > 20_000  # a rendered page, not a blank one
    if os.environ.get("UPDATE_DOCS_SCREENSHOT"):
        (REPO / "docs").mkdir(exist_ok=True)
        shutil.copy(shot, REPO / "docs" / "drift-reports.png")
