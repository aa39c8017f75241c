"""
### invoice_review

Puts invoices that validation sent to review (`needs_review`, or `blocked` as a hard duplicate) in front of a person,
in the Airflow UI (**Required Actions**), with the standard provider's human-in-the-loop operator. Scheduled on the
`invoiceflow://warehouse/invoices` asset (after each load) or hourly, whichever comes first (`AssetOrTimeSchedule`):
the hourly sweep offers again what is still waiting (left pending, corrected, or unanswered in an earlier run). One
run at a time: while a run waits for answers, the next one waits too.

1. **plan_reviews** picks up to `max_reviews` (param) waiting invoices, oldest first, and passes on their document
   hashes only.
2. **review_invoice** (one mapped `HITLOperator` per invoice) loads the invoice when it starts and shows it, its issue
   codes and messages; the reviewer chooses **Approve**, **Correct**, **Reject** or **Keep pending** and may fill any
   header field to correct it (empty fields stay as they are) plus a comment. Unanswered requests time out after
   `response_timeout` (3 days) and resolve to their default, **Keep pending**: nothing changes, the task and the run
   succeed, and the invoice is offered again by the next run.
3. **apply_decision** stores corrections as a new version in `invoice_versions` (who, when, what changed) after
   validating the corrected invoice again (issues, vendor match and duplicate check are recomputed), approves
   (status `approved`, ERP outbox row in the same transaction) or rejects (terminal, never sent). A blocked duplicate
   cannot be approved until its number is corrected; an invoice the ERP outbox cannot take (another document holds
   its vendor and number) is not approved: the task fails with the reason, without retries, and nothing changes.
   Each approval emits the `invoiceflow://warehouse/approved_invoices` asset (through the
   `invoice_review_approvals` alias), which schedules `erp_sync`: approved invoices are posted without waiting for
   the next load.

Terminal alternative: `invoiceflow review list|show|approve|reject ID`.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

from airflow.providers.standard.operators.hitl import HITLOperator
from airflow.sdk import (
    Asset,
    AssetAlias,
    AssetOrTimeSchedule,
    CronTriggerTimetable,
    Param,
    dag,
    get_current_context,
    task,
)
from airflow.sdk.exceptions import AirflowFailException

from invoiceflow import config, review, warehouse

FIELDS = warehouse.HEADER_COLUMNS
INVOICES = Asset(name="invoices", uri=config.INVOICES_ASSET_URI)
APPROVED_INVOICES = Asset(name="approved_invoices", uri=review.APPROVED_ASSET_URI)
#: ``apply_decision`` emits ``APPROVED_INVOICES`` through this alias, and only when it approved the invoice.
APPROVALS = AssetAlias(name="invoice_review_approvals")


def review_request(sha: str) -> tuple[str, str]:
    """Subject and Markdown body of the review request of one invoice, from the warehouse."""
    detail = review.show(warehouse.get_engine(), sha)
    issues = "\n".join(f"- **{i['code']}** ({i['severity']}): {i['message']}" for i in detail["issues"])
    lines = "\n".join(
        f"| {li['description']} | {li['quantity']} | {li['unit_price']} | {li['line_total']} |"
        for li in detail["line_items"]
    )
    header = "\n".join(f"| {f} | {detail.get(f)} |" for f in FIELDS)
    file_name = warehouse.document_paths(warehouse.get_engine(), [sha]).get(sha, (None, sha[:12], None))[1]
    subject = f"Review {file_name}: {detail['vendor_name'] or '?'} {detail['invoice_number'] or '?'}"
    body = (
        f"Document `{sha}` — status **{detail['review_status']}**, version {detail['version']}.\n\n"
        f"### Issues\n{issues or '- none'}\n\n### Header\n| field | value |\n|---|---|\n{header}\n\n"
        f"### Line items\n| description | qty | unit price | total |\n|---|---|---|---|\n{lines}\n\n"
        "To correct, fill only the fields that are wrong."
    )
    return subject, body


class InvoiceReviewOperator(HITLOperator):
    """``HITLOperator`` for one invoice, given by its document hash: subject and body are read from the warehouse
    when the task starts (so XCom carries hashes, not invoice texts, and invoice text is never rendered as a
    template), then written to the request the Required Actions page shows."""

    def __init__(self, *, document_sha256: str, **kwargs: Any) -> None:
        kwargs.setdefault("subject", f"Review invoice {document_sha256[:12]}")
        super().__init__(**kwargs)
        self.document_sha256 = document_sha256

    def execute(self, context: Any) -> Any:
        self.subject, self.body = review_request(self.document_sha256)
        return super().execute(context)


@dag(
    dag_id="invoice_review",
    schedule=AssetOrTimeSchedule(timetable=CronTriggerTimetable("@hourly", timezone="UTC"), assets=INVOICES),
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
    def plan_reviews() -> list[str]:
        limit = int(get_current_context()["params"]["max_reviews"])
        return [row["document_sha256"] for row in review.pending(warehouse.get_engine(), limit)]

    plan = plan_reviews()
    decisions = InvoiceReviewOperator.partial(
        task_id="review_invoice",
        options=list(review.OPTIONS),
        defaults=review.KEEP_PENDING,
        params={
            **{
                f: Param(None, type=["null", "string", "number"], description=f"corrected {f}")
                for f in FIELDS
            },
            "comment": Param(None, type=["null", "string"], description="why (stored with the version)"),
        },
        response_timeout=timedelta(days=3),
        max_active_tis_per_dagrun=50,
    ).expand(document_sha256=plan)

    @task(outlets=[APPROVALS])
    def apply_decision(pair: list[Any]) -> dict[str, Any]:
        sha, decision = pair
        if isinstance(decision, str):
            decision = json.loads(decision)
        try:
            result = review.apply_decision(warehouse.get_engine(), sha, decision)
        except review.ReviewError as exc:
            raise AirflowFailException(str(exc)) from exc  # the same answer fails the same way: no retries
        if result["status"] == review.APPROVED:
            get_current_context()["outlet_events"][APPROVALS].add(
                APPROVED_INVOICES, extra={"document_sha256": sha}
            )
        return result

    apply_decision.expand(pair=plan.zip(decisions.output))


invoice_review()
