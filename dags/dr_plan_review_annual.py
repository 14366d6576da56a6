"""
### DR annual plan review (from the ledger)

Yearly (`test_schedule.annually.cron`) or by hand. One report for the recovery team, built
from what the ledger recorded - no invented numbers:

- achieved RTO / RPO per scenario over the period against targets, with a recommendation
  where the average misses the target;
- drills held vs scheduled (12 monthly, 4 quarterly), the missing months / quarters;
- failed runs and their reasons (the failed tasks);
- incidents by type: recovery runs outside drills, alerts received by source and name;
- contacts whose Airflow variable is missing or stale (`reviewed_at` older than a year);
- DAGs whose plan entries changed since the previous review.

Written as Markdown / HTML / JSON to the plan's report location; sent to the report
channels when `notify` is set.
"""

from __future__ import annotations

from datetime import UTC, datetime

from airflow.sdk import Param, dag, task

from tracktion_dr.airflow.support import DEFAULT_ARGS
from tracktion_dr.core.plan import load_plan

PLAN = load_plan()
SCHEDULE = PLAN.test_schedule["annually"].cron if "annually" in PLAN.test_schedule else None


@dag(
    dag_id="dr_plan_review_annual",
    schedule=SCHEDULE,
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    tags=["dr", "review"],
    default_args=DEFAULT_ARGS,
    params={
        "days": Param(
            365,
            type="integer",
            minimum=1,
            maximum=3660,
            title="Period (days)",
            description="Review the ledger over the last N days, ending now.",
            section="Review",
        ),
        "notify": Param(
            False,
            type="boolean",
            title="Notify",
            description="Send the review to the plan's report channels (best effort).",
            section="Run",
        ),
    },
    doc_md=__doc__,
)
def dr_plan_review_annual():
    @task(retries=0)
    def review(**context) -> dict:
        import json
        from datetime import timedelta

        import psycopg
        from airflow.sdk import Variable
        from psycopg.rows import dict_row

        from tracktion_dr.airflow.support import conninfo
        from tracktion_dr.evidence import ledger
        from tracktion_dr.evidence.reports import runs_between
        from tracktion_dr.evidence.review import (
            build_review,
            previous_fingerprints,
            render_review_markdown,
            save_review,
            write_review,
        )

        ledger_conninfo = conninfo(ledger.LEDGER_CONN_ID)
        end = datetime.now(UTC)
        start = end - timedelta(days=int(context["params"]["days"]))
        runs = runs_between(ledger_conninfo, start, end)
        with psycopg.connect(ledger_conninfo, connect_timeout=10, row_factory=dict_row) as conn:
            ledger.ensure_schema(conn)
            alerts = conn.execute(
                "SELECT source, labels FROM dr.alerts WHERE received_at >= %s AND received_at < %s",
                (start, end),
            ).fetchall()
        contacts = {}
        for role, spec in PLAN.contacts.items():
            raw = Variable.get(spec.variable, default=None)
            try:
                contacts[role] = json.loads(raw) if raw else None
            except ValueError:
                contacts[role] = None
        result = build_review(
            PLAN, runs, alerts, contacts, previous_fingerprints(ledger_conninfo, end), start, end
        )
        save_review(ledger_conninfo, result)
        paths = write_review(PLAN.reports.location, result) if PLAN.reports else {}
        markdown = render_review_markdown(result)
        print(markdown)
        print(f"review written to {paths}")
        if context["params"]["notify"] and PLAN.reports:
            from tracktion_dr.notify.delivery import deliver
            from tracktion_dr.notify.messages import DrMessage

            deliver(
                PLAN,
                DrMessage(title="DR annual plan review", text=markdown, severity="info"),
                channels=PLAN.reports.channels,
            )
        return {
            "paths": paths,
            "drills": result["drills"],
            "plan_changed_for": result["plan_changed_for"],
        }

    review()


dr_plan_review_annual()
