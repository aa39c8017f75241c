-- PostgreSQL only (issue 5, load benchmark). A document's row is updated once per state (registered, extracting,
-- extracted, then loaded or needs_review). At fillfactor 80 a page kept room for about 7 new row versions among its
-- 28 rows, so most of a load's updates left the page: a new version elsewhere and a primary-key insert for each
-- (measured: 100k loaded documents took 0.78 s to mark; at fillfactor 50, 0.40 s, every update HOT). The table is
-- small (one row per file), so the room costs little. Applies to pages written from now on.
ALTER TABLE documents SET (fillfactor = 50);
