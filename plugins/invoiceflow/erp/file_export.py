"""File-export connector: CSV or JSON batch files for ERPs that import files.

Each batch is written to ``{path}/{prefix}{batch_key}.{csv|json}`` (``batch_key`` made file-name safe) on an
``airflow.sdk.ObjectStoragePath`` (local ``file://`` or any fsspec store such as ``s3://``), so a retried batch
overwrites the same file: idempotent. The file is written to a temporary name first and then moved into place where
the store supports it. CSV has one row per line item (header columns repeated); JSON holds the whole bills.
``remote_id`` is ``"<file path>#<row>"`` (1-based bill index in the file). :meth:`find_bill` scans the exported
files for the reference.

Every bill carries ``document_type`` (``invoice`` or ``credit_note``, normalised; a CSV column after
``purchase_order_number``): a credit note keeps the warehouse's negative amounts, so an importer must book it as a
credit, not as a bill. A bill with an unknown document type is ``rejected`` and left out of the file.
"""

from __future__ import annotations

import csv
import io
import json
import re
from typing import Any

from invoiceflow.erp.base import (
    BillOutcome,
    check_batch,
    document_type,
    json_default,
    log_outcomes,
    normalize_key,
)

CSV_COLUMNS = (
    "reference",
    "vendor_name",
    "invoice_number",
    "invoice_date",
    "due_date",
    "currency",
    "subtotal",
    "tax_amount",
    "total_amount",
    "purchase_order_number",
    "document_type",
    "line_no",
    "line_description",
    "line_quantity",
    "line_unit_price",
    "line_total",
)
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _storage_path(path: Any) -> Any:
    if not isinstance(path, str):
        return path
    from airflow.sdk import ObjectStoragePath

    return ObjectStoragePath(path if "://" in path else f"file://{path}")


class FileExportConnector:
    name = "file"

    def __init__(self, path: Any, *, fmt: str = "csv", prefix: str = "bills-", max_batch: int = 500) -> None:
        if fmt not in ("csv", "json"):
            raise ValueError("fmt must be 'csv' or 'json'")
        self.root = _storage_path(path)
        self.fmt = fmt
        self.prefix = prefix
        self.max_batch = max_batch

    def __enter__(self) -> FileExportConnector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        return None

    def file_for(self, batch_key: str) -> Any:
        return self.root / f"{self.prefix}{_UNSAFE.sub('_', batch_key.strip())}.{self.fmt}"

    def render(self, bills: list[dict]) -> str:
        if self.fmt == "json":
            return json.dumps({"bills": bills}, default=json_default, indent=1, sort_keys=True)
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for bill in bills:
            head = {k: bill.get(k) for k in CSV_COLUMNS[: CSV_COLUMNS.index("line_no")]}
            lines = bill.get("line_items") or [{}]
            for n, line in enumerate(lines, 1):
                writer.writerow(
                    {
                        **head,
                        "line_no": n,
                        "line_description": line.get("description"),
                        "line_quantity": line.get("quantity"),
                        "line_unit_price": line.get("unit_price"),
                        "line_total": line.get("line_total"),
                    }
                )
        return out.getvalue()

    def post_bills(self, bills: list[dict], batch_key: str) -> list[BillOutcome]:
        if not bills:
            return []
        references = check_batch(bills, batch_key, self.max_batch)
        target = self.file_for(batch_key)
        outcomes: list[BillOutcome] = []
        exported: list[dict] = []
        for bill, ref in zip(bills, references, strict=True):
            try:
                exported.append({**bill, "document_type": document_type(bill)})
            except ValueError as exc:
                outcomes.append(BillOutcome(ref, "rejected", None, f"not exported: {exc}"))
                continue
            outcomes.append(BillOutcome(ref, "posted", f"{target}#{len(exported)}", None))
        if exported:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.parent / f".{target.name}.tmp"
            tmp.write_text(self.render(exported))
            try:
                tmp.rename(target)
            except Exception:  # stores without an overwriting rename: write in place (still idempotent)
                target.write_text(self.render(exported))
                tmp.unlink(missing_ok=True)
        log_outcomes(self.name, batch_key, outcomes, 1)
        return outcomes

    def _exported(self) -> list[tuple[Any, list[dict[str, Any]]]]:
        files = []
        if not self.root.exists():
            return files
        for path in sorted(self.root.iterdir(), key=lambda p: str(p)):
            if not path.name.startswith(self.prefix) or not path.name.endswith(f".{self.fmt}"):
                continue
            text = path.read_text()
            if self.fmt == "json":
                bills = json.loads(text).get("bills", [])
            else:
                bills, seen = [], set()
                for row in csv.DictReader(io.StringIO(text)):
                    if row["reference"] not in seen:
                        seen.add(row["reference"])
                        bills.append(row)
            files.append((path, bills))
        return files

    def find_bill(self, reference: str, *, bill: dict | None = None) -> str | None:
        for path, bills in self._exported():
            for i, b in enumerate(bills, 1):
                if b.get("reference") == reference.strip():
                    return f"{path}#{i}"
        return None

    def find_bills(self, vendor_name: str, invoice_number: str) -> list[dict]:
        key = (normalize_key(vendor_name), normalize_key(invoice_number))
        return [
            {**b, "id": f"{path}#{i}"}
            for path, bills in self._exported()
            for i, b in enumerate(bills, 1)
            if (normalize_key(b.get("vendor_name")), normalize_key(b.get("invoice_number"))) == key
        ]

    def ensure_vendor(self, vendor_name: str) -> str:
        if not vendor_name or not vendor_name.strip():
            raise ValueError("vendor_name is required")
        return vendor_name.strip()
