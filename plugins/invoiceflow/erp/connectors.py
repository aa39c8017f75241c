"""Pick the ERP connector for an Airflow connection (``airflow.sdk.Connection`` or anything with the same fields).

The kind comes from ``extra["erp"]`` or else ``conn_type``: ``http``/``erp_sandbox``/``sandbox`` → the native sandbox
client, or ``xero``, ``quickbooks`` (alias ``qbo``), ``tryton``, ``webhook``, ``file``. Secrets come from the
connection (``password`` and the ``*_secret``/``*_token`` extras) and are never logged.

Connection fields per kind (``host`` may be a full URL; otherwise ``http(s)://host[:port]``):

================  ====================================================================================================
sandbox           host = base URL; password = bearer token (optional).
xero              host = API base (default ``https://api.xero.com``); login = client id; password = client secret;
                  extra: ``tenant_id`` (required), ``token_url`` (default ``{host}/connect/token``; real Xero:
                  ``https://identity.xero.com/connect/token``), ``scope``, ``account_code`` ("400"), ``tax_type``
                  ("INPUT", or null for NoTax), ``status`` ("AUTHORISED"/"DRAFT"), ``marker_url``, ``max_batch`` (50),
                  ``precheck_duplicates`` (true), ``max_retry_after`` (120 s).
quickbooks        host = API base (default ``https://quickbooks.api.intuit.com``); login = client id; password =
                  client secret; extra: ``realm_id`` (required), ``refresh_token`` (or ``access_token``),
                  ``token_url`` (default ``{host}/oauth2/v1/tokens/bearer``; real Intuit:
                  ``https://oauth.platform.intuit.com/oauth2/v1/tokens/bearer``), ``expense_account`` ("7"),
                  ``minor_version`` (75), ``max_batch`` (30), ``throttle_wait`` (60 s), ``lookback_days`` (30),
                  ``batch_calls_per_minute`` (40: the relay paces batch calls per realm; 0 = off).
tryton            host = server URL; schema (or extra ``database``) = database; login/password = Tryton user;
                  extra: ``expense_account`` / ``tax_account`` (account codes; default: first P&L expense account),
                  ``post`` (true: validate and post; false: leave validated drafts).
webhook           host = receiver URL; password = signing secret; extra: ``status_url`` (optional read-back),
                  ``max_batch`` (50).
file              host (or extra ``path``) = storage path (``/dir``, ``file:///dir``, ``s3://bucket/dir``);
                  extra: ``format`` ("csv"/"json"), ``prefix`` ("bills-"), ``max_batch`` (500).
================  ====================================================================================================

Credit notes (payload ``document_type`` = ``credit_note``, amounts negative) are never posted as bills: Xero gets an
``ACCPAYCREDIT`` credit note (``/CreditNotes``, positive amounts), QuickBooks a ``VendorCredit`` (positive amounts),
Tryton a supplier credit note (``type='in'``, negative lines); the webhook and the file export carry
``document_type`` with the warehouse's signs; the sandbox stores it per bill.
"""

from __future__ import annotations

from typing import Any

from invoiceflow.erp.base import ErpConnector, base_url_from_connection, extras

KINDS = ("sandbox", "xero", "quickbooks", "tryton", "webhook", "file")
_ALIASES = {
    "http": "sandbox",
    "https": "sandbox",
    "erp_sandbox": "sandbox",
    "qbo": "quickbooks",
    "erp": "sandbox",
}


def connector_kind(conn: Any) -> str:
    extra = extras(conn)
    raw = (
        str(extra.get("erp") or getattr(conn, "conn_type", None) or "sandbox")
        .strip()
        .lower()
        .replace("-", "_")
    )
    kind = _ALIASES.get(raw, raw)
    if kind not in KINDS:
        raise ValueError(f"unknown ERP connector {raw!r}; expected one of {KINDS}")
    return kind


def _int(extra: dict[str, Any], key: str, default: int) -> int:
    return int(extra.get(key, default))


def connector_from_connection(conn: Any, **overrides: Any) -> ErpConnector:
    """The connector for ``conn``; ``overrides`` go to its constructor (e.g. ``sleep=``, ``transport=`` in tests)."""
    kind = connector_kind(conn)
    extra = extras(conn)
    if kind == "sandbox":
        from invoiceflow.erp.client import SandboxErpClient

        return SandboxErpClient(base_url_from_connection(conn), token=conn.password or None, **overrides)
    if kind == "xero":
        from invoiceflow.erp.xero import XeroConnector

        if not extra.get("tenant_id"):
            raise ValueError("a xero connection needs extra.tenant_id")
        kwargs: dict[str, Any] = {
            "tenant_id": str(extra["tenant_id"]),
            "client_id": conn.login or "",
            "client_secret": conn.password or "",
            "token_url": extra.get("token_url"),
            "account_code": str(extra.get("account_code", "400")),
            "tax_type": extra.get("tax_type", "INPUT"),
            "status": extra.get("status", "AUTHORISED"),
            "max_batch": _int(extra, "max_batch", 50),
            "precheck_duplicates": bool(extra.get("precheck_duplicates", True)),
            "max_retry_after": float(extra.get("max_retry_after", 120.0)),
        }
        for key in ("scope", "marker_url"):
            if key in extra:
                kwargs[key] = extra[key]
        return XeroConnector(
            base_url_from_connection(conn, "https://api.xero.com"), **{**kwargs, **overrides}
        )
    if kind == "quickbooks":
        from invoiceflow.erp.quickbooks import QuickBooksConnector

        if not extra.get("realm_id"):
            raise ValueError("a quickbooks connection needs extra.realm_id")
        kwargs = {
            "realm_id": str(extra["realm_id"]),
            "client_id": conn.login or None,
            "client_secret": conn.password or None,
            "refresh_token": extra.get("refresh_token"),
            "access_token": extra.get("access_token"),
            "token_url": extra.get("token_url"),
            "expense_account": str(extra.get("expense_account", "7")),
            "minor_version": _int(extra, "minor_version", 75),
            "max_batch": _int(extra, "max_batch", 30),
            "throttle_wait": float(extra.get("throttle_wait", 60.0)),
            "batch_calls_per_minute": float(extra.get("batch_calls_per_minute", 40.0)),
            "lookback_days": _int(extra, "lookback_days", 30),
        }
        return QuickBooksConnector(
            base_url_from_connection(conn, "https://quickbooks.api.intuit.com"), **{**kwargs, **overrides}
        )
    if kind == "tryton":
        from invoiceflow.erp.tryton import TrytonConnector

        database = getattr(conn, "schema", None) or extra.get("database")
        if not database:
            raise ValueError("a tryton connection needs the database in schema (or extra.database)")
        return TrytonConnector(
            base_url_from_connection(conn),
            database,
            conn.login or "admin",
            conn.password or "",
            **{
                "expense_account": extra.get("expense_account"),
                "tax_account": extra.get("tax_account"),
                "post": bool(extra.get("post", True)),
                **overrides,
            },
        )
    if kind == "webhook":
        from invoiceflow.erp.webhook import WebhookConnector

        return WebhookConnector(
            base_url_from_connection(conn),
            conn.password or "",
            **{"status_url": extra.get("status_url"), "max_batch": _int(extra, "max_batch", 50), **overrides},
        )
    from invoiceflow.erp.file_export import FileExportConnector

    path = extra.get("path") or getattr(conn, "host", None)
    if not path:
        raise ValueError("a file connection needs host or extra.path")
    return FileExportConnector(
        path,
        **{
            "fmt": extra.get("format", "csv"),
            "prefix": extra.get("prefix", "bills-"),
            "max_batch": _int(extra, "max_batch", 500),
            **overrides,
        },
    )
