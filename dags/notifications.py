"""Failure notifications for the DAGs: Airflow's notifier interface, so a team can swap in its own.

`RunFailureNotifier` writes one summary line (which task, why, link to the log) to the task log and,
when `ALERT_SMTP_CONN_ID` names an SMTP connection (off by default), mails it to `ALERT_EMAIL_TO`
through the SMTP provider's notifier. Another channel (Slack, Teams, PagerDuty) is one more
BaseNotifier passed in the DAG's `on_failure_callback` list.
"""

from __future__ import annotations

import html
import logging
import os
from typing import Any

from airflow.sdk.bases.notifier import BaseNotifier

from tasks.alerts import failure_summary

log = logging.getLogger("airflow.task")


class RunFailureNotifier(BaseNotifier):
    """One line per failed task, to the log and (when configured) by mail."""

    def notify(self, context: Any) -> None:
        ti = context["ti"]
        line = failure_summary(ti.dag_id, ti.task_id, context.get("run_id") or ti.run_id,
                               str(context.get("exception") or "see the task log"), ti.log_url,
                               int(getattr(ti, "try_number", 1) or 1))
        log.error(line)
        print(line, flush=True)  # the task log shows stdout too, whatever the logging setup
        conn_id = os.environ.get("ALERT_SMTP_CONN_ID")
        if conn_id:
            from airflow.providers.smtp.notifications.smtp import SmtpNotifier

            mail = SmtpNotifier(to=os.environ.get("ALERT_EMAIL_TO", "oncall@localhost"),
                                from_email=os.environ.get("ALERT_EMAIL_FROM", "airflow@localhost"),
                                subject=line[:200], html_content=f"<pre>{html.escape(line)}</pre>",
                                smtp_conn_id=conn_id)
            mail.notify(context)
