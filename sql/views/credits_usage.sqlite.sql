-- credits_usage: LeapOCR credits and pages per day and model. SQLite stores CURRENT_TIMESTAMP in UTC.
DROP VIEW IF EXISTS credits_usage;
CREATE VIEW credits_usage AS
SELECT
    SUBSTR(CAST(r.fetched_at AS TEXT), 1, 10)  AS day,
    r.model,
    COUNT(*)                                   AS documents,
    SUM(r.total_pages)                         AS pages,
    SUM(r.credits_used)                        AS credits_used
FROM raw_extraction_results r
GROUP BY SUBSTR(CAST(r.fetched_at AS TEXT), 1, 10), r.model;
COMMENT ON VIEW credits_usage IS 'LeapOCR credits and pages per day (YYYY-MM-DD, UTC) and model.';
