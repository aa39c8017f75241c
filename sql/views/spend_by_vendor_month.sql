-- spend_by_vendor_month: what each vendor billed per month and currency (credit notes net it down).
-- Rejected invoices and blocked duplicates are not spend.
DROP VIEW IF EXISTS spend_by_vendor_month;
CREATE VIEW spend_by_vendor_month AS
SELECT
    COALESCE(v.name, i.vendor_name)                                              AS vendor,
    i.vendor_id,
    SUBSTR(CAST(i.invoice_date AS TEXT), 1, 7)                                   AS month,
    i.currency,
    COUNT(*)                                                                     AS documents,
    SUM(CASE WHEN i.document_type = 'credit_note' THEN 1 ELSE 0 END)             AS credit_notes,
    SUM(CASE WHEN i.document_type = 'credit_note' THEN 0 ELSE i.total_amount END) AS invoiced,
    SUM(CASE WHEN i.document_type = 'credit_note' THEN i.total_amount ELSE 0 END) AS credited,
    SUM(i.total_amount)                                                          AS net_total,
    SUM(CASE WHEN i.review_status IN ('auto_approved', 'approved') THEN i.total_amount ELSE 0 END) AS approved_total
FROM invoices i
LEFT JOIN vendors v ON v.vendor_id = i.vendor_id
WHERE i.review_status NOT IN ('rejected', 'blocked') AND i.invoice_date IS NOT NULL
GROUP BY COALESCE(v.name, i.vendor_name), i.vendor_id, SUBSTR(CAST(i.invoice_date AS TEXT), 1, 7), i.currency;
COMMENT ON VIEW spend_by_vendor_month IS 'Spend per vendor, month (YYYY-MM of the invoice date) and currency. Credit notes net it down, rejected and blocked invoices are excluded.';
