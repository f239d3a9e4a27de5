"""One `train_and_deploy` run for the demo (`make demo`), judged as an operator would judge it.

`python examples/demo_run.py 2013-07-30` runs the DAG with Airflow's dag.test() for the window
ending on that date and prints every task's state. Exit 0 when the run succeeded, or when the gate
refused the candidate (a designed outcome: the champion keeps serving); exit 1 on any other failure.
"""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main(day: str) -> int:
    from airflow.dag_processing.dagbag import DagBag

    dag = DagBag(dag_folder=str(REPO / "dags")).dags["train_and_deploy"]
    began = time.perf_counter()
    run = dag.test(logical_date=datetime.fromisoformat(day).replace(tzinfo=UTC))
    states = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
    print(f"run {run.run_id}: {run.state} in {time.perf_counter() - began:.0f} s")
    for task_id in dag.task_ids:
        print(f"  {task_id:<14} {states.get(task_id)}")
    if str(run.state) == "success":
        return 0
    upstream = [t for t in dag.task_ids if t not in ("gate", "promote")]
    if states.get("gate") == "failed" and all(states.get(t) == "success" for t in upstream):
        print("the gate refused the candidate (see its verdict table above): the champion keeps serving")
        return 0
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
