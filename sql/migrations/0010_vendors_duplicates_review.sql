-- Validation and review (issue 5). Portable SQL: runs on PostgreSQL and SQLite.
-- Layers: raw (documents, raw_extraction_results) -> staging (staging_*) -> core (invoices, invoice_line_items,
-- validation_issues, invoice_versions, erp_outbox).

-- master data: the vendors invoices are matched against (fuzzy, by name or alias). Unknown vendors are flagged on
-- the invoice, never inserted here by the pipeline.
CREATE TABLE IF NOT EXISTS vendors (
    vendor_id       INTEGER PRIMARY KEY,
    name            TEXT NOT NULL UNIQUE,
    aliases         TEXT,                     -- JSON list of other names the vendor prints
    vat_id          TEXT,
    iban            TEXT,
    active          INTEGER NOT NULL DEFAULT 1,
    created_at      TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT CURRENT_TIMESTAMP
);

-- what validation derived beside the printed fields (same columns on staging and core)
ALTER TABLE staging_invoices ADD COLUMN document_type TEXT NOT NULL DEFAULT 'invoice';
ALTER TABLE staging_invoices ADD COLUMN vendor_id INTEGER;
ALTER TABLE staging_invoices ADD COLUMN vendor_match_score REAL;
ALTER TABLE staging_invoices ADD COLUMN vendor_key TEXT;
ALTER TABLE staging_invoices ADD COLUMN invoice_number_norm TEXT;
ALTER TABLE staging_invoices ADD COLUMN duplicate_of TEXT;
ALTER TABLE staging_invoices ADD COLUMN vendor_vat_id TEXT;
ALTER TABLE staging_invoices ADD COLUMN vendor_iban TEXT;

ALTER TABLE invoices ADD COLUMN document_type TEXT NOT NULL DEFAULT 'invoice';     -- invoice | credit_note
ALTER TABLE invoices ADD COLUMN vendor_id INTEGER REFERENCES vendors (vendor_id);
ALTER TABLE invoices ADD COLUMN vendor_match_score REAL;                          -- 0..100, NULL: no master data
ALTER TABLE invoices ADD COLUMN vendor_key TEXT;                                  -- matched vendor id or normalised name
ALTER TABLE invoices ADD COLUMN invoice_number_norm TEXT;                         -- casefolded, no spaces
ALTER TABLE invoices ADD COLUMN duplicate_of TEXT;                                -- hard duplicate: the original's hash
ALTER TABLE invoices ADD COLUMN vendor_vat_id TEXT;
ALTER TABLE invoices ADD COLUMN vendor_iban TEXT;
ALTER TABLE invoices ADD COLUMN version INTEGER NOT NULL DEFAULT 1;
ALTER TABLE invoices ADD COLUMN reviewed_by TEXT;
ALTER TABLE invoices ADD COLUMN reviewed_at TIMESTAMP WITH TIME ZONE;

-- One live invoice per vendor and normalised number. Hard duplicates stay recorded (duplicate_of set, status
-- blocked) and rejected invoices free their number.
CREATE UNIQUE INDEX IF NOT EXISTS ux_invoices_vendor_number ON invoices (vendor_key, invoice_number_norm)
    WHERE duplicate_of IS NULL AND review_status <> 'rejected' AND vendor_key IS NOT NULL
    AND invoice_number_norm IS NOT NULL;
CREATE INDEX IF NOT EXISTS ix_invoices_soft_duplicates ON invoices (vendor_key, total_amount, invoice_date);
CREATE INDEX IF NOT EXISTS ix_invoices_review_status ON invoices (review_status);

ALTER TABLE validation_issues ADD COLUMN severity TEXT NOT NULL DEFAULT 'review';  -- review | blocked
ALTER TABLE validation_issues ADD COLUMN detected_at TIMESTAMP WITH TIME ZONE;

-- every state of an invoice a person touched: version 1 is what the pipeline loaded, each correction adds one.
CREATE TABLE IF NOT EXISTS invoice_versions (
    document_sha256 TEXT NOT NULL REFERENCES invoices (document_sha256),
    version         INTEGER NOT NULL,
    action          TEXT NOT NULL,            -- loaded | corrected | approved | rejected
    changed_by      TEXT NOT NULL,
    changed_at      TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT CURRENT_TIMESTAMP,
    changes         TEXT NOT NULL,            -- JSON {field: [old, new]}
    header          TEXT NOT NULL,            -- JSON: the full header after this version
    comment         TEXT,
    PRIMARY KEY (document_sha256, version, action)
);
