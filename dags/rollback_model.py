"""rollback_model: the on-call engineer's one action to put an earlier model version back in service.

Wiring only: the checks and the alias move live in tasks/rollback.py and tasks/promotion.py.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import Param, dag, get_current_context, task

from dags import common

DOC = """
### Roll the served model back
Trigger with the **target version** (default `previous`: the champion before the last promotion) and a
**justification**. The run checks that the target's artifact is intact, loads and answers, then moves
alias `champion` to it in one registry call (the current champion becomes `previous`) and records
the move in the promotion log. The serving container follows within its poll interval.
"""


@dag(
    schedule=None,
    catchup=False,
    max_active_runs=1,
    doc_md=DOC,
    tags=["mlops", "flights", "on-call"],
    default_args=common.default_args(),
    params={
        "target_version": Param("previous", type="string", pattern=r"^(previous|[0-9]+)$", title="Target version",
                                description="`previous` or a version number of the registered model."),
        "justification": Param("", type="string", minLength=10, pattern=r"\S", title="Justification",
                               description="Why (incident, ticket); recorded in the promotion log."),
    },
)
def rollback_model() -> None:
    @task(doc_md="Resolve the target and check that its artifact is intact, loads and answers.")
    def check_target() -> str:
        from tasks.config import load_spec
        from tasks.rollback import RollbackError, check_target, resolve_target

        spec = load_spec()
        try:
            version = resolve_target(spec, get_current_context()["params"]["target_version"])
            print(check_target(spec, version))
        except RollbackError as exc:
            common.fail(exc)
        return version

    @task(retries=2, doc_md="Move alias `champion` to the target and record it in the promotion log.")
    def move_champion(version: str) -> dict[str, Any]:
        from tasks.config import load_spec
        from tasks.rollback import RollbackError, rollback

        context = get_current_context()
        try:
            return rollback(load_spec(), version, context["params"]["justification"],
                            context["dag_run"].triggering_user_name, context["run_id"])
        except RollbackError as exc:
            common.fail(exc)
            raise

    move_champion(check_target())


rollback_model()
