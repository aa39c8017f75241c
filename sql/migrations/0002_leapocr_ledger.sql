-- The in-flight cap counts submitted jobs per API key (fingerprint, never the key); credits are reported per run.
ALTER TABLE extraction_jobs ADD COLUMN api_key_fingerprint TEXT;
CREATE INDEX IF NOT EXISTS ix_extraction_jobs_in_flight ON extraction_jobs (api_key_fingerprint, status);
CREATE INDEX IF NOT EXISTS ix_extraction_jobs_run ON extraction_jobs (dag_run_id);
