-- invoiceflow warehouse, first schema. Portable SQL: runs unchanged on PostgreSQL and on SQLite (the embedded default).
-- Natural keys everywhere (content hash, idempotency key), so every load is an idempotent upsert.

-- raw: one row per distinct file content; a second path of the same bytes goes to document_paths.
CREATE TABLE IF NOT EXISTS documents (
    sha256          TEXT PRIMARY KEY,
    file_name       TEXT NOT NULL,
    first_path      TEXT NOT NULL,
    size_bytes      BIGINT NOT NULL,
    content_type    TEXT,
    status          TEXT NOT NULL,            -- registered | extracting | extracted | loaded | needs_review | rejected | failed
    status_reason   TEXT,
    landed_at       TIMESTAMP WITH TIME ZONE,
    registered_at   TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT CURRENT_TIMESTAMP,
    updated_at      TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT CURRENT_TIMESTAMP,
    dag_run_id      TEXT
);

CREATE TABLE IF NOT EXISTS document_paths (
    path            TEXT PRIMARY KEY,
    sha256          TEXT NOT NULL REFERENCES documents (sha256),
    size_bytes      BIGINT NOT NULL,
    modified_at     TEXT,
    seen_at         TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT CURRENT_TIMESTAMP
);
CREATE INDEX IF NOT EXISTS ix_document_paths_sha256 ON document_paths (sha256);

-- submission ledger: the LeapOCR job of each document, written before the operator defers.
CREATE TABLE IF NOT EXISTS extraction_jobs (
    document_sha256 TEXT PRIMARY KEY REFERENCES documents (sha256),
    job_id          TEXT NOT NULL,
    status          TEXT NOT NULL,            -- submitted | completed | failed | timeout
    error_message   TEXT,
    submitted_at    TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT CURRENT_TIMESTAMP,
    finished_at     TIMESTAMP WITH TIME ZONE,
    remote_deleted  INTEGER NOT NULL DEFAULT 0,
    dag_run_id      TEXT
);

-- raw audit copy of what the extractor returned (every page), plus the merged invoice it became.
CREATE TABLE IF NOT EXISTS raw_extraction_results (
    document_sha256 TEXT PRIMARY KEY REFERENCES documents (sha256),
    job_id          TEXT NOT NULL,
    model           TEXT,
    credits_used    INTEGER,
    total_pages     INTEGER,
    raw_pages       TEXT NOT NULL,            -- JSON list of the API's page objects
    merged_invoice  TEXT NOT NULL,            -- JSON object in the include/schemas/invoice.json shape
    fetched_at      TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT CURRENT_TIMESTAMP
);

-- staging: rebuilt per load batch inside the load transaction.
CREATE TABLE IF NOT EXISTS staging_invoices (
    batch_id              TEXT NOT NULL,
    document_sha256       TEXT NOT NULL,
    invoice_number        TEXT,
    vendor_name           TEXT,
    invoice_date          DATE,
    due_date              DATE,
    currency              TEXT,
    subtotal              NUMERIC(18, 2),
    tax_amount            NUMERIC(18, 2),
    total_amount          NUMERIC(18, 2),
    purchase_order_number TEXT,
    review_status         TEXT NOT NULL,
    review_issues         TEXT NOT NULL,
    PRIMARY KEY (batch_id, document_sha256)
);

CREATE TABLE IF NOT EXISTS staging_invoice_line_items (
    batch_id        TEXT NOT NULL,
    document_sha256 TEXT NOT NULL,
    line_number     INTEGER NOT NULL,
    description     TEXT,
    quantity        NUMERIC(18, 4),
    unit_price      NUMERIC(18, 4),
    line_total      NUMERIC(18, 2),
    PRIMARY KEY (batch_id, document_sha256, line_number)
);

-- core
CREATE TABLE IF NOT EXISTS invoices (
    document_sha256       TEXT PRIMARY KEY REFERENCES documents (sha256),
    invoice_number        TEXT,
    vendor_name           TEXT,
    invoice_date          DATE,
    due_date              DATE,
    currency              TEXT,
    subtotal              NUMERIC(18, 2),
    tax_amount            NUMERIC(18, 2),
    total_amount          NUMERIC(18, 2),
    purchase_order_number TEXT,
    review_status         TEXT NOT NULL,      -- auto_approved | needs_review
    review_issues         TEXT NOT NULL,      -- JSON list of issue codes
    loaded_at             TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT CURRENT_TIMESTAMP
);

CREATE TABLE IF NOT EXISTS invoice_line_items (
    document_sha256 TEXT NOT NULL REFERENCES invoices (document_sha256),
    line_number     INTEGER NOT NULL,
    description     TEXT,
    quantity        NUMERIC(18, 4),
    unit_price      NUMERIC(18, 4),
    line_total      NUMERIC(18, 2),
    PRIMARY KEY (document_sha256, line_number)
);

CREATE TABLE IF NOT EXISTS validation_issues (
    document_sha256 TEXT NOT NULL REFERENCES documents (sha256),
    code            TEXT NOT NULL,
    message         TEXT NOT NULL,
    PRIMARY KEY (document_sha256, code)
);

-- transactional outbox towards the ERP: one row per approved invoice, keyed by its idempotency key.
CREATE TABLE IF NOT EXISTS erp_outbox (
    idempotency_key TEXT PRIMARY KEY,
    document_sha256 TEXT NOT NULL UNIQUE REFERENCES invoices (document_sha256),
    payload         TEXT NOT NULL,
    payload_hash    TEXT NOT NULL,
    status          TEXT NOT NULL,            -- pending | posted | duplicate | rejected | unknown
    remote_id       TEXT,
    attempts        INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT,
    created_at      TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT CURRENT_TIMESTAMP,
    updated_at      TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT CURRENT_TIMESTAMP
);
CREATE INDEX IF NOT EXISTS ix_erp_outbox_status ON erp_outbox (status);
