-- Call slots of rate-limited ERP APIs, shared by every relay task, process and host (invoiceflow.erp.pacing):
-- the next call of a scope (ERP + tenant) may start no earlier than next_at (epoch seconds).
CREATE TABLE IF NOT EXISTS erp_call_slots (
    scope TEXT PRIMARY KEY,
    next_at DOUBLE PRECISION NOT NULL
);
