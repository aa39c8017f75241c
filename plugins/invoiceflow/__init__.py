"""invoiceflow: accounts-payable automation on Airflow."""

__version__ = "0.1.0"
