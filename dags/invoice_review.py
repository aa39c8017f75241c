"""
### invoice_review

Puts invoices that validation sent to review (`needs_review`, or `blocked` as a hard duplicate) in front of a person,
in the Airflow UI (**Required Actions**), with the standard provider's human-in-the-loop operator. Scheduled on the
`invoiceflow://warehouse/invoices` asset (after each load) and hourly as a sweep.

1. **plan_reviews** picks up to `max_reviews` (param) waiting invoices, oldest first.
2. **review_invoice** (one mapped `HITLOperator` per invoice) shows the invoice, its issue codes and messages; the
   reviewer chooses **Approve**, **Reject** or **Correct** and may fill any header field to correct it (empty fields
   stay as they are) plus a comment. Unanswered requests time out after `response_timeout` (3 days): nothing changes.
3. **apply_decision** stores corrections as a new version in `invoice_versions` (who, when, what changed), approves
   (status `approved`, ERP outbox row in the same transaction) or rejects (terminal, never sent). A blocked duplicate
   cannot be approved until its number is corrected.

Terminal alternative: `invoiceflow review list|show|approve|reject ID`.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

from airflow.providers.standard.operators.hitl import HITLOperator
from airflow.sdk import Asset, Param, dag, get_current_context, task

from invoiceflow import config, warehouse

FIELDS = warehouse.HEADER_COLUMNS


@dag(
    dag_id="invoice_review",
    schedule=[Asset(name="invoices", uri=config.INVOICES_ASSET_URI)],
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["invoiceflow", "review", "hitl"],
    default_args={"owner": "invoiceflow", "retries": 2, "retry_delay": timedelta(seconds=30)},
    params={"max_reviews": Param(20, type="integer", minimum=1, maximum=200, description="Invoices per run")},
)
def invoice_review() -> None:
    @task
    def plan_reviews() -> list[dict[str, Any]]:
        from invoiceflow import review

        limit = int(get_current_context()["params"]["max_reviews"])
        items = []
        for row in review.pending(warehouse.get_engine(), limit):
            detail = review.show(warehouse.get_engine(), row["document_sha256"])
            issues = "\n".join(
                f"- **{i['code']}** ({i['severity']}): {i['message']}" for i in detail["issues"]
            )
            lines = "\n".join(
                f"| {li['description']} | {li['quantity']} | {li['unit_price']} | {li['line_total']} |"
                for li in detail["line_items"]
            )
            header = "\n".join(f"| {f} | {detail.get(f)} |" for f in FIELDS)
            items.append(
                {
                    "sha": row["document_sha256"],
                    "subject": f"Review {row['file_name']}: {row['vendor_name'] or '?'} {row['invoice_number'] or '?'}",
                    "body": (
                        f"Document `{row['document_sha256']}` — status **{row['review_status']}**, version "
                        f"{row['version']}.\n\n### Issues\n{issues or '- none'}\n\n### Header\n| field | value |\n"
                        f"|---|---|\n{header}\n\n### Line items\n| description | qty | unit price | total |\n"
                        f"|---|---|---|---|\n{lines}\n\nTo correct, fill only the fields that are wrong."
                    ),
                }
            )
        return items

    @task
    def subjects(items: list[dict[str, Any]]) -> list[dict[str, str]]:
        return [{"subject": i["subject"], "body": i["body"]} for i in items]

    plan = plan_reviews()
    decisions = HITLOperator.partial(
        task_id="review_invoice",
        options=["Approve", "Correct", "Reject"],
        defaults=None,
        params={
            **{
                f: Param(None, type=["null", "string", "number"], description=f"corrected {f}")
                for f in FIELDS
            },
            "comment": Param(None, type=["null", "string"], description="why (stored with the version)"),
        },
        response_timeout=timedelta(days=3),
        max_active_tis_per_dagrun=50,
    ).expand_kwargs(subjects(plan))

    @task
    def apply_decision(pair: list[Any]) -> dict[str, Any]:
        from invoiceflow import review

        item, decision = pair
        if isinstance(decision, str):
            decision = json.loads(decision)
        return review.apply_decision(warehouse.get_engine(), item["sha"], decision)

    apply_decision.expand(pair=plan.zip(decisions.output))


invoice_review()
