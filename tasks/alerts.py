"""The one-line failure summary an on-call engineer reads first (no Airflow import: plain values in)."""

from __future__ import annotations

MAX_REASON = 300


def failure_summary(dag_id: str, task_id: str, run_id: str, reason: str, url: str, try_number: int = 1) -> str:
    """`FAILED dag.task (run, try n): first line of the reason -> log url`, on one line."""
    first = next((line.strip() for line in reason.splitlines() if line.strip()), "no reason given")
    if len(first) > MAX_REASON:
        first = first[:MAX_REASON - 3] + "..."
    return f"FAILED {dag_id}.{task_id} (run {run_id}, try {try_number}): {first} -> {url}"
