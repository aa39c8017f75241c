-- PostgreSQL only (issue 5). Amounts keep their currency's decimals. NUMERIC(18, 2) rounded the third decimal of
-- BHD, IQD, JOD, KWD, LYD, OMR and TND amounts (and the fourth of CLF and UYW) away on load, although validation had
-- rounded each amount to its currency's minor unit. The columns now take the amount as validated (NUMERIC without a
-- scale: 12.345 KWD stays 12.345, 11.90 EUR is stored as 11.9). Lifting the limit rewrites no table and no index.
-- SQLite stores these columns as REAL and needs nothing.
--
-- As in 0042: the views over these columns go first and come back (erp_outbox_attention below, the analyst views
-- and their grants by the views step of this upgrade); a view of your own on them stops this migration.
DROP VIEW IF EXISTS extraction_issues, extraction_quality, invoices_flat, line_items_flat, spend_by_vendor_month,
    review_backlog, processing_sla, credits_usage, erp_outbox_attention;
DELETE FROM schema_migrations WHERE starts_with(version, 'views@');

ALTER TABLE invoices
    ALTER COLUMN subtotal TYPE NUMERIC,
    ALTER COLUMN tax_amount TYPE NUMERIC,
    ALTER COLUMN total_amount TYPE NUMERIC;
ALTER TABLE staging_invoices
    ALTER COLUMN subtotal TYPE NUMERIC,
    ALTER COLUMN tax_amount TYPE NUMERIC,
    ALTER COLUMN total_amount TYPE NUMERIC;
ALTER TABLE invoice_line_items ALTER COLUMN line_total TYPE NUMERIC;
ALTER TABLE staging_invoice_line_items ALTER COLUMN line_total TYPE NUMERIC;

-- as created by 0020_erp_outbox_relay.sql
CREATE VIEW erp_outbox_attention AS
SELECT
    o.idempotency_key,
    o.document_sha256,
    i.vendor_name,
    i.invoice_number,
    i.total_amount,
    i.currency,
    o.status,
    o.last_error,
    o.attempts,
    o.failures,
    o.remote_id,
    o.created_at,
    o.updated_at
FROM erp_outbox o
JOIN invoices i ON i.document_sha256 = o.document_sha256
WHERE o.status IN ('rejected', 'dead_letter');
