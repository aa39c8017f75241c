"""invoiceflow: accounts-payable automation on Airflow."""
