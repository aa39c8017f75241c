"""The ``leapocr`` connection type: defaults and form metadata.

Kept free of Airflow imports: Airflow's provider manager reads it (through ``invoiceflow.provider``) while it is
still loading hooks, so importing the hook from there would be circular.
"""

from __future__ import annotations

from typing import Any

DEFAULT_BASE_URL = "https://api.leapocr.com/api/v1"
DEFAULT_MAX_JOBS_IN_FLIGHT = 8
DEFAULT_MAX_ATTEMPTS = 6
CONN_TYPE = "leapocr"
HOOK_CLASS = "invoiceflow.leapocr.hooks.LeapOcrHook"
HOOK_NAME = "LeapOCR"

#: Connection form: labels and hidden fields (also published as provider metadata, see invoiceflow.provider).
UI_FIELD_BEHAVIOUR: dict[str, Any] = {
    "hidden_fields": ["schema", "port", "login"],
    "relabeling": {"host": "Base URL", "password": "API key"},
    "placeholders": {"host": DEFAULT_BASE_URL},
}
#: Extra fields of the connection form, in Airflow's ``conn-fields`` metadata format.
CONN_FIELDS: dict[str, Any] = {
    "max_jobs_in_flight": {
        "label": "Max jobs in flight",
        "description": "Jobs submitted with this API key and not finished, across all tasks",
        "schema": {"type": ["integer", "null"], "minimum": 1, "default": DEFAULT_MAX_JOBS_IN_FLIGHT},
    },
    "max_attempts": {
        "label": "Max attempts",
        "description": "Tries per API call on 429, 5xx, timeouts and dropped connections",
        "schema": {"type": ["integer", "null"], "minimum": 1, "default": DEFAULT_MAX_ATTEMPTS},
    },
    "timeout": {
        "label": "Timeout (s)",
        "description": "HTTP timeout per API call",
        "schema": {"type": ["number", "null"], "minimum": 1, "default": 60},
    },
}
