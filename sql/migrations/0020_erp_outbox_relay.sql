-- ERP relay bookkeeping (issue 6). Outbox states: pending, unknown (sent, no answer: read back before any resend),
-- posted, duplicate (the ERP already had it: remote_id links it), rejected (the ERP's reason in last_error) and
-- dead_letter (gave up after too many failures: last_error says why, an analyst decides).
-- failures counts sends without an answer, refused batches and failed read-backs since the row was queued.
ALTER TABLE erp_outbox ADD COLUMN failures INTEGER NOT NULL DEFAULT 0;
-- The idempotency key of the last request that carried the row, written before the request is sent.
ALTER TABLE erp_outbox ADD COLUMN batch_key TEXT;
-- When the row reached posted, duplicate, rejected or dead_letter.
ALTER TABLE erp_outbox ADD COLUMN finished_at TIMESTAMP WITH TIME ZONE;

-- What analysts look at: every invoice the ERP sync could not post, with the reason.
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
