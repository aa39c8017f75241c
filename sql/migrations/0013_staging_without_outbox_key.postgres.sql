-- PostgreSQL only (issue 5, load benchmark). The load no longer builds outbox rows from staging: first loads COPY
-- straight into the core tables and the outbox payloads are encoded by the loader (warehouse._outbox_values, the same
-- text as on SQLite). The idempotency key staged for that (0012) is unused.
ALTER TABLE staging_invoices DROP COLUMN IF EXISTS idempotency_key;
