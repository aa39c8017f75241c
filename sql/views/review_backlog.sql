-- review_backlog: what waits for a person, oldest first.
DROP VIEW IF EXISTS review_backlog;
CREATE VIEW review_backlog AS
SELECT
    i.document_sha256,
    d.file_name,
    i.vendor_name,
    i.invoice_number,
    i.total_amount,
    i.currency,
    i.review_status,
    i.review_issues,
    i.duplicate_of,
    i.vendor_match_score,
    i.loaded_at,
    i.version
FROM invoices i
JOIN documents d ON d.sha256 = i.document_sha256
WHERE i.review_status IN ('needs_review', 'blocked');
COMMENT ON VIEW review_backlog IS 'Invoices waiting for a person (needs_review, or blocked as a hard duplicate) with their issue codes, oldest by loaded_at.';
