-- The read-only role analyst: SELECT on the analyst views of this schema and nothing else (no raw tables, no audit
-- payloads, no writes). Roles are cluster-wide: created once, granted per database. It logs in without a password
-- only where pg_hba trusts it; set one with ALTER ROLE analyst PASSWORD '...'.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'analyst') THEN
        CREATE ROLE analyst LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT;
    END IF;
    EXECUTE 'REVOKE ALL ON ALL TABLES IN SCHEMA ' || quote_ident(current_schema()) || ' FROM analyst';
    EXECUTE 'REVOKE ALL ON ALL SEQUENCES IN SCHEMA ' || quote_ident(current_schema()) || ' FROM analyst';
    EXECUTE 'REVOKE CREATE ON SCHEMA ' || quote_ident(current_schema()) || ' FROM analyst';
    EXECUTE 'GRANT USAGE ON SCHEMA ' || quote_ident(current_schema()) || ' TO analyst';
    EXECUTE 'ALTER ROLE analyst IN DATABASE ' || quote_ident(current_database())
        || ' SET search_path = ' || quote_ident(current_schema());
END
$$;
GRANT SELECT ON invoices_flat, line_items_flat, spend_by_vendor_month, review_backlog, processing_sla,
    extraction_quality, extraction_issues, credits_usage TO analyst;
