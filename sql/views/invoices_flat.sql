-- invoices_flat: one row per invoice with its file, matched vendor, review state and ERP state (no payloads).
DROP VIEW IF EXISTS invoices_flat;
CREATE VIEW invoices_flat AS
SELECT
    i.document_sha256,
    d.file_name,
    i.vendor_name,
    v.name                 AS vendor_master_name,
    i.vendor_id,
    i.vendor_match_score,
    i.invoice_number,
    i.document_type,
    i.invoice_date,
    i.due_date,
    i.currency,
    i.subtotal,
    i.tax_amount,
    i.total_amount,
    i.purchase_order_number,
    i.review_status,
    i.review_issues,
    i.duplicate_of,
    i.version,
    i.reviewed_by,
    i.reviewed_at,
    i.loaded_at,
    o.status               AS erp_status,
    o.remote_id            AS erp_remote_id
FROM invoices i
JOIN documents d ON d.sha256 = i.document_sha256
LEFT JOIN vendors v ON v.vendor_id = i.vendor_id
LEFT JOIN erp_outbox o ON o.document_sha256 = i.document_sha256;
COMMENT ON VIEW invoices_flat IS 'One row per invoice: file, vendor (as printed and as matched), amounts, review and ERP state. No payloads.';
