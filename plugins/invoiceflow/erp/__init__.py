"""ERP posting: the DAG-facing connector (``client``) and a local stand-in ERP (``sandbox``).

Only the client is re-exported here, so Airflow workers importing ``invoiceflow.erp`` do not load the web
server stack.
"""

from invoiceflow.erp.client import (
    BillOutcome,
    ErpAuthError,
    ErpError,
    ErpRequestError,
    ErpUnavailableError,
    SandboxErpClient,
)

__all__ = [
    "BillOutcome",
    "ErpAuthError",
    "ErpError",
    "ErpRequestError",
    "ErpUnavailableError",
    "SandboxErpClient",
]
