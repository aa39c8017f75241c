"""ERP posting: the connector interface (``base``), the connectors, and a local stand-in ERP (``sandbox``).

``connector_from_connection(conn)`` picks the connector for an Airflow connection (see ``connectors`` for the
connection fields per ERP). Connectors and the web-server stack load lazily, so Airflow workers importing
``invoiceflow.erp`` stay light.
"""

from invoiceflow.erp.base import (
    BillOutcome,
    ErpAuthError,
    ErpConnector,
    ErpError,
    ErpRateLimitedError,
    ErpRequestError,
    ErpUnavailableError,
)
from invoiceflow.erp.client import SandboxErpClient
from invoiceflow.erp.connectors import connector_from_connection, connector_kind

__all__ = [
    "BillOutcome",
    "ErpAuthError",
    "ErpConnector",
    "ErpError",
    "ErpRateLimitedError",
    "ErpRequestError",
    "ErpUnavailableError",
    "SandboxErpClient",
    "connector_from_connection",
    "connector_kind",
]
