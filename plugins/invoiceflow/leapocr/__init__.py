"""LeapOCR integration: an offline LeapOCR-compatible server plus Airflow hooks, operators and triggers."""
