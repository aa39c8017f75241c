-- When a document started uploading (epoch seconds): a reservation older than the upload timeout belongs to a
-- process that died, and only then may another submit the document again.
ALTER TABLE extraction_jobs ADD COLUMN reserved_at DOUBLE PRECISION;
