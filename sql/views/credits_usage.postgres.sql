-- credits_usage: LeapOCR credits and pages per day and model. The day is the UTC day, whatever the session's TimeZone.
DROP VIEW IF EXISTS credits_usage;
CREATE VIEW credits_usage AS
SELECT
    to_char(r.fetched_at AT TIME ZONE 'UTC', 'YYYY-MM-DD') AS day,
    r.model,
    COUNT(*)                                   AS documents,
    SUM(r.total_pages)                         AS pages,
    SUM(r.credits_used)                        AS credits_used
FROM raw_extraction_results r
GROUP BY 1, r.model;
COMMENT ON VIEW credits_usage IS 'LeapOCR credits and pages per day (YYYY-MM-DD, UTC) and model.';
