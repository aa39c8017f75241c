-- line_items_flat: every line item with the invoice it belongs to.
DROP VIEW IF EXISTS line_items_flat;
CREATE VIEW line_items_flat AS
SELECT
    l.document_sha256,
    i.vendor_name,
    i.vendor_id,
    i.invoice_number,
    i.invoice_date,
    i.currency,
    i.document_type,
    i.review_status,
    l.line_number,
    l.description,
    l.quantity,
    l.unit_price,
    l.line_total
FROM invoice_line_items l
JOIN invoices i ON i.document_sha256 = l.document_sha256;
COMMENT ON VIEW line_items_flat IS 'Every invoice line item with its invoice (vendor, number, date, currency, review status).';
