"""The trigger form's rules hold over Airflow's REST API too: bad values never start a run."""

from __future__ import annotations

import httpx
import pytest
from live_airflow import REPO, api_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    with api_server(tmp_path_factory.mktemp("api"), REPO / "dags", reserialize=True) as (base, token):
        with httpx.Client(base_url=base, timeout=30, headers={"Authorization": f"Bearer {token}"}) as client:
            yield client


def _trigger(api: httpx.Client, dag_id: str, conf: dict) -> httpx.Response:
    return api.post(f"/api/v2/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": conf})


@pytest.mark.parametrize(("conf", "named"), [
    ({"window_end": "2013-13-45"}, "window_end"),
    ({"window_start": "yesterday"}, "window_start"),
    ({"window_end": "2013-06-01'; DROP TABLE flights; --"}, "window_end"),  # injection-shaped: refused, never run
    ({"window_days": "30; DELETE FROM flights"}, "window_days"),
    ({"window_days": 10_000}, "window_days"),
    ({"learning_rate": -0.1}, "learning_rate"),
    ({"epochs": 0}, "epochs"),
    ({"gate": {"mode": "override"}}, "justification"),
    ({"gate": {"mode": "override", "justification": ""}}, "gate"),
    ({"gate": {"mode": "yolo"}}, "gate"),
])
def test_bad_trigger_values_are_refused_with_the_param_named(api, conf, named):
    resp = _trigger(api, "train_and_deploy", conf)
    assert resp.status_code == 400, resp.text
    assert named in resp.text


def test_good_values_start_a_run(api):
    resp = _trigger(api, "train_and_deploy", {"window_end": "2013-07-01", "epochs": 3,
                                              "gate": {"mode": "dry_run"}})
    assert resp.status_code == 200, resp.text
    assert resp.json()["conf"]["gate"] == {"mode": "dry_run"}


def test_a_rollback_needs_a_justification(api):
    assert _trigger(api, "rollback_model", {}).status_code == 400
    assert _trigger(api, "rollback_model", {"justification": "INC-5: v9 is broken"}).status_code == 200


def test_the_api_refuses_anonymous_callers(api):
    anonymous = httpx.post(str(api.base_url.join("/api/v2/dags/train_and_deploy/dagRuns")), json={"logical_date": None})
    assert anonymous.status_code in (401, 403)
