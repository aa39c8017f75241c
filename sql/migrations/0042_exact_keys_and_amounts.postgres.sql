-- PostgreSQL only (issue 5). Two column changes that share one detour through the views.
--
-- 1. Content hashes and duplicate keys compare in byte order (COLLATE "C"), for the load benchmark. Under the
-- database's collation every comparison of two keys goes through strcoll, C.UTF-8 included (PostgreSQL 15 treats
-- only "C" and "POSIX" as byte order); in a bulk load the primary-key and duplicate-key index comparisons spent about
-- a tenth of the server's time there. Measured on 100k invoices: 0.35-0.4 s less server time per load. Nothing users
-- see changes: every collation involved is deterministic (equal means byte-equal) and these columns hold hex hashes
-- and normalised keys, which nobody reads in collation order. The tables are not rewritten, but every index on these
-- columns is rebuilt under an exclusive lock: on a large warehouse, upgrade in a quiet hour.
--
-- 2. Amounts keep their currency's decimals. NUMERIC(18, 2) rounded the third decimal of BHD, IQD, JOD, KWD, LYD, OMR
-- and TND amounts (and the fourth of CLF and UYW) away on load, although validation had rounded each amount to its
-- currency's minor unit. The columns now take the amount as validated (NUMERIC without a scale: 12.345 KWD stays
-- 12.345, 11.90 EUR is stored as 11.9). Lifting the limit rewrites no table and no index. SQLite stores these
-- columns as REAL and needs nothing.
--
-- Columns used by a view cannot change, so the views reading them go first: erp_outbox_attention is recreated below,
-- the analyst views (with the analyst role's grants) by the views step of this same upgrade. A view of your own on
-- these columns makes this migration fail, with nothing changed: drop it, upgrade, recreate it.
DROP VIEW IF EXISTS extraction_issues, extraction_quality, invoices_flat, line_items_flat, spend_by_vendor_month,
    review_backlog, processing_sla, credits_usage, erp_outbox_attention;
DELETE FROM schema_migrations WHERE starts_with(version, 'views@');

-- 1. byte-order keys
ALTER TABLE documents ALTER COLUMN sha256 TYPE TEXT COLLATE "C";
ALTER TABLE document_paths ALTER COLUMN sha256 TYPE TEXT COLLATE "C";
ALTER TABLE extraction_jobs ALTER COLUMN document_sha256 TYPE TEXT COLLATE "C";
ALTER TABLE raw_extraction_results ALTER COLUMN document_sha256 TYPE TEXT COLLATE "C";
ALTER TABLE staging_invoices
    ALTER COLUMN document_sha256 TYPE TEXT COLLATE "C",
    ALTER COLUMN vendor_key TYPE TEXT COLLATE "C",
    ALTER COLUMN invoice_number_norm TYPE TEXT COLLATE "C",
    ALTER COLUMN duplicate_of TYPE TEXT COLLATE "C";
ALTER TABLE staging_invoice_line_items ALTER COLUMN document_sha256 TYPE TEXT COLLATE "C";
ALTER TABLE invoices
    ALTER COLUMN document_sha256 TYPE TEXT COLLATE "C",
    ALTER COLUMN vendor_key TYPE TEXT COLLATE "C",
    ALTER COLUMN invoice_number_norm TYPE TEXT COLLATE "C",
    ALTER COLUMN duplicate_of TYPE TEXT COLLATE "C";
ALTER TABLE invoice_line_items ALTER COLUMN document_sha256 TYPE TEXT COLLATE "C";
ALTER TABLE validation_issues ALTER COLUMN document_sha256 TYPE TEXT COLLATE "C";
ALTER TABLE invoice_versions ALTER COLUMN document_sha256 TYPE TEXT COLLATE "C";
ALTER TABLE erp_outbox
    ALTER COLUMN idempotency_key TYPE TEXT COLLATE "C",
    ALTER COLUMN document_sha256 TYPE TEXT COLLATE "C";

-- 2. amounts as validated
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
