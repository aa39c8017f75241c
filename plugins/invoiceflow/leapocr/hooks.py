"""Build the official ``leapocr`` SDK client from an Airflow connection.

Connection ``leapocr_default``: the API key in the password field, the base URL in host (default: the LeapOCR
cloud). The triggerer must use :meth:`LeapOcrHook.aget_client`: a synchronous connection lookup inside its event
loop fails in Airflow 3 (``You cannot use AsyncToSync in the same thread as an async event loop``).
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseHook
from leapocr import ClientConfig, LeapOCR

DEFAULT_BASE_URL = "https://api.leapocr.com/api/v1"


class LeapOcrHook(BaseHook):
    """Interact with the LeapOCR API (or the offline ``invoiceflow leapocr-server``) through the official SDK."""

    conn_name_attr = "leapocr_conn_id"
    default_conn_name = "leapocr_default"
    conn_type = "leapocr"
    hook_name = "LeapOCR"

    def __init__(self, leapocr_conn_id: str = default_conn_name, timeout: float = 60.0) -> None:
        super().__init__()
        self.leapocr_conn_id = leapocr_conn_id
        self.timeout = timeout

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        return {
            "hidden_fields": ["schema", "port", "login", "extra"],
            "relabeling": {"host": "Base URL", "password": "API key"},
            "placeholders": {"host": DEFAULT_BASE_URL},
        }

    @staticmethod
    def base_url(conn: Any) -> str:
        """The API base URL of a connection: ``host`` as given when it has a scheme, else HTTPS on that host."""
        host = (conn.host or "").strip()
        if not host:
            return DEFAULT_BASE_URL
        if "://" not in host:
            port = f":{conn.port}" if conn.port else ""
            host = f"https://{host}{port}/api/v1"
        return host.rstrip("/")

    def client_from_connection(self, conn: Any) -> LeapOCR:
        if not conn.password:
            raise ValueError(f"connection {self.leapocr_conn_id!r} has no API key (password field is empty)")
        return LeapOCR(conn.password, ClientConfig(base_url=self.base_url(conn), timeout=self.timeout))

    def get_client(self) -> LeapOCR:
        """For workers: synchronous connection lookup."""
        return self.client_from_connection(self.get_connection(self.leapocr_conn_id))

    async def aget_client(self) -> LeapOCR:
        """For the triggerer: asynchronous connection lookup, never blocking the event loop."""
        return self.client_from_connection(await self.aget_connection(self.leapocr_conn_id))
