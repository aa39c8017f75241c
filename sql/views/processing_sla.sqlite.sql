-- processing_sla: file landed -> registered -> loaded -> posted to the ERP, with the durations in hours.
DROP VIEW IF EXISTS processing_sla;
CREATE VIEW processing_sla AS
SELECT
    d.sha256                                                        AS document_sha256,
    d.file_name,
    d.status                                                        AS document_status,
    d.landed_at,
    d.registered_at,
    i.loaded_at,
    CASE WHEN o.status IN ('posted', 'duplicate') THEN o.updated_at END AS posted_at,
    (julianday(i.loaded_at) - julianday(COALESCE(d.landed_at, d.registered_at))) * 24.0 AS hours_to_load,
    (julianday(CASE WHEN o.status IN ('posted', 'duplicate') THEN o.updated_at END
        ) - julianday(COALESCE(d.landed_at, d.registered_at))) * 24.0                            AS hours_to_post
FROM documents d
LEFT JOIN invoices i ON i.document_sha256 = d.sha256
LEFT JOIN erp_outbox o ON o.document_sha256 = d.sha256;
COMMENT ON VIEW processing_sla IS 'Per document: landed (file mtime, else registration) -> loaded -> posted to the ERP, durations in hours.';
