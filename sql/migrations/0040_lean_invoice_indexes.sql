-- Issue 5 (load benchmark): each index on invoices costs every loaded invoice one more index insert and its WAL.
-- Two of the four served lookups another index can serve as well.
--
-- Validation reads the live invoices of a batch's vendors (validation.load_context: hard and soft duplicates). The
-- vendor + number index now holds every live invoice, numbered or not (NULL numbers never conflict in a unique
-- index), so it serves that lookup and the separate (vendor_key, total_amount, invoice_date) index goes.
DROP INDEX IF EXISTS ux_invoices_vendor_number;
CREATE UNIQUE INDEX IF NOT EXISTS ux_invoices_vendor_number ON invoices (vendor_key, invoice_number_norm)
    WHERE duplicate_of IS NULL AND review_status <> 'rejected' AND vendor_key IS NOT NULL;
DROP INDEX IF EXISTS ix_invoices_soft_duplicates;

-- Invoices are looked up by status only to list the review backlog (review list, review_backlog): index just those,
-- not the auto-approved, approved and rejected ones that make up nearly all of the table.
DROP INDEX IF EXISTS ix_invoices_review_status;
CREATE INDEX IF NOT EXISTS ix_invoices_review_backlog ON invoices (review_status)
    WHERE review_status IN ('needs_review', 'blocked');
