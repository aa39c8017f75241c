-- extraction_quality: extractor confidence and validation issues by vendor, month and model.
DROP VIEW IF EXISTS extraction_quality;
CREATE VIEW extraction_quality AS
WITH docs AS (
    SELECT
        r.document_sha256,
        r.model,
        (SELECT AVG((p.value ->> 'confidence')::float) FROM jsonb_array_elements(r.raw_pages::jsonb) p) AS confidence,
        COALESCE(i.vendor_name, '(unread)')         AS vendor_name,
        to_char(r.fetched_at AT TIME ZONE 'UTC', 'YYYY-MM') AS month,
        i.review_status
    FROM raw_extraction_results r
    LEFT JOIN invoices i ON i.document_sha256 = r.document_sha256
)
SELECT
    docs.vendor_name,
    docs.month,
    docs.model,
    COUNT(*)                                                                  AS documents,
    AVG(docs.confidence)                                                      AS avg_confidence,
    MIN(docs.confidence)                                                      AS min_confidence,
    SUM(CASE WHEN docs.review_status = 'auto_approved' THEN 1 ELSE 0 END)     AS auto_approved,
    SUM(CASE WHEN docs.review_status <> 'auto_approved' THEN 1 ELSE 0 END)    AS sent_to_review,
    SUM((SELECT COUNT(*) FROM validation_issues vi WHERE vi.document_sha256 = docs.document_sha256)) AS issues
FROM docs
GROUP BY docs.vendor_name, docs.month, docs.model;
COMMENT ON VIEW extraction_quality IS 'Per vendor, month and model: documents, mean and lowest extractor confidence, auto-approved vs sent to review, issue count. Issues by code: extraction_issues.';
DROP VIEW IF EXISTS extraction_issues;
CREATE VIEW extraction_issues AS
SELECT COALESCE(i.vendor_name, '(unread)') AS vendor_name, vi.code, vi.severity, COUNT(*) AS documents
FROM validation_issues vi
LEFT JOIN invoices i ON i.document_sha256 = vi.document_sha256
GROUP BY COALESCE(i.vendor_name, '(unread)'), vi.code, vi.severity;
COMMENT ON VIEW extraction_issues IS 'Validation issues by vendor and issue code (type): how many documents had each.';
