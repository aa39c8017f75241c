"""Airflow provider metadata: registers the ``leapocr`` connection type with labelled form fields.

The form is declared as metadata (``ui-field-behaviour``, ``conn-fields``) so Airflow's API server can render it
without importing the hook.
"""

from __future__ import annotations

from typing import Any

from invoiceflow import __version__
from invoiceflow.leapocr.connection import CONN_FIELDS, CONN_TYPE, HOOK_CLASS, HOOK_NAME, UI_FIELD_BEHAVIOUR


def get_provider_info() -> dict[str, Any]:
    return {
        "package-name": "invoiceflow",
        "name": "invoiceflow",
        "description": "Invoice pipeline: LeapOCR extraction, warehouse load and ERP sync.",
        "versions": [__version__],
        "connection-types": [
            {
                "hook-class-name": HOOK_CLASS,
                "connection-type": CONN_TYPE,
                "hook-name": HOOK_NAME,
                "ui-field-behaviour": {
                    key.replace("_", "-"): value for key, value in UI_FIELD_BEHAVIOUR.items()
                },
                "conn-fields": CONN_FIELDS,
            },
        ],
    }
