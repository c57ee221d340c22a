-- Helper queries for Horos's database and the horos-backup ledger.
--
-- How to use them (on the Horos Mac, in Terminal):
--
--   sqlite3 -readonly "/Volumes/PACS/Database/Horos Data/Database.sql"
--   sqlite> .headers on
--   sqlite> .mode column
--   sqlite> ATTACH 'file:/Volumes/PACS/Backup/export_state.sqlite?mode=ro' AS ledger;
--
-- then paste one query at a time. Replace both paths with yours ('horos_data' and 'backup_dir' in the
-- config; a space in a path is fine inside the quotes, but write '#' as %23 and '?' as %3F in the ATTACH
-- URI). Both files stay read-only: -readonly and mode=ro mean nothing is ever written.
--
-- Be quick: while a query runs (or its output is paused in a pager), Horos cannot save (rollback-journal
-- mode). Run these when Horos is idle, and quit sqlite3 (.quit) when done.
--
-- Dates in Horos are seconds since 2001-01-01 UTC; + 978307200 makes them Unix time, and 'localtime'
-- converts them in THIS Mac's time zone, which is how Horos stored them (see horos-database.md §5).
-- horos-backup uses the configured 'timezone' (default: this Mac's), so the months agree on the Horos Mac.


-- =====================================================================================================
-- Horos database (main)
-- =====================================================================================================

-- CT/MR studies per month (local study date). A study counts when any of its series is CT or MR, the
-- same rule horos-backup uses (ZSTUDY.ZMODALITY can hold "PT\CT", so never test it with = 'CT').
SELECT COALESCE(strftime('%Y_%m', datetime(st.ZDATE + 978307200, 'unixepoch', 'localtime')), 'undated') AS month,
       COUNT(*) AS ct_mr_studies
FROM ZSTUDY st
WHERE EXISTS (SELECT 1 FROM ZSERIES s
              WHERE s.ZSTUDY = st.Z_PK AND UPPER(TRIM(s.ZMODALITY)) IN ('CT', 'MR'))
GROUP BY month
ORDER BY month;

-- Studies with image rows that name no file at all (ZPATHNUMBER and ZPATHSTRING both NULL): these
-- images cannot be backed up; Horos's "Rebuild Database" may repair them.
SELECT st.Z_PK AS study_pk,
       st.ZSTUDYINSTANCEUID AS study_uid,
       datetime(st.ZDATE + 978307200, 'unixepoch', 'localtime') AS study_date,
       COUNT(*) AS rows_without_file
FROM ZIMAGE im
JOIN ZSERIES se ON im.ZSERIES = se.Z_PK
JOIN ZSTUDY st ON se.ZSTUDY = st.Z_PK
WHERE im.ZPATHNUMBER IS NULL AND im.ZPATHSTRING IS NULL
GROUP BY st.Z_PK
ORDER BY rows_without_file DESC;

-- Image rows per CT/MR study, largest first (one row per frame: a multi-frame file counts many times).
SELECT st.Z_PK AS study_pk,
       st.ZSTUDYINSTANCEUID AS study_uid,
       st.ZMODALITY AS modalities,
       datetime(st.ZDATE + 978307200, 'unixepoch', 'localtime') AS study_date,
       COUNT(im.Z_PK) AS image_rows,
       COUNT(DISTINCT se.Z_PK) AS series
FROM ZSTUDY st
JOIN ZSERIES se ON se.ZSTUDY = st.Z_PK
LEFT JOIN ZIMAGE im ON im.ZSERIES = se.Z_PK
WHERE EXISTS (SELECT 1 FROM ZSERIES s
              WHERE s.ZSTUDY = st.Z_PK AND UPPER(TRIM(s.ZMODALITY)) IN ('CT', 'MR'))
GROUP BY st.Z_PK
ORDER BY image_rows DESC
LIMIT 50;

-- Studies Horos received in the last 24 hours (ZDATEADDED is refreshed whenever images arrive);
-- horos-backup waits 'stability_minutes' after the last arrival before exporting a study.
SELECT st.ZSTUDYINSTANCEUID AS study_uid,
       datetime(st.ZDATEADDED + 978307200, 'unixepoch', 'localtime') AS last_added,
       st.ZMODALITY AS modalities
FROM ZSTUDY st
WHERE st.ZDATEADDED + 978307200 > strftime('%s', 'now') - 86400
ORDER BY st.ZDATEADDED DESC;


-- =====================================================================================================
-- Ledger (attached as "ledger": ATTACH 'file:/path/export_state.sqlite?mode=ro' AS ledger;)
-- =====================================================================================================

ATTACH 'file:/Volumes/PACS/Backup/export_state.sqlite?mode=ro' AS ledger;

-- Studies backed up per month folder, with their size.
SELECT month,
       COUNT(*) AS studies_done,
       ROUND(SUM(zip_size) / 1e9, 2) AS zip_gb,
       ROUND(SUM(bytes_in) / 1e9, 2) AS source_gb
FROM ledger.studies
WHERE state = 'done'
GROUP BY month
ORDER BY month;

-- Studies not (or not completely) backed up, with the issue code and when they are retried.
-- Codes: MISSING_FILES, NO_FILES, READ_ERROR, ZIP_FAIL, PARTIAL, ZIP_MISSING, ZIP_INVALID (README).
SELECT uid AS study_uid,
       month,
       state,
       code,
       attempts,
       datetime(next_attempt, 'unixepoch', 'localtime') AS next_attempt,
       detail
FROM ledger.studies
WHERE state != 'done' OR code != ''
ORDER BY month, uid;

-- What is left to back up, per month: eligible comes from Horos (CT/MR rule above), done from the
-- ledger. The ledger key is "<Study UID>|<ZPATIENTUID>" (two patients can share a UID).
WITH eligible AS (
    SELECT TRIM(st.ZSTUDYINSTANCEUID) || '|' || COALESCE(st.ZPATIENTUID, '') AS key,
           COALESCE(strftime('%Y_%m', datetime(st.ZDATE + 978307200, 'unixepoch', 'localtime')), 'undated') AS month
    FROM ZSTUDY st
    WHERE EXISTS (SELECT 1 FROM ZSERIES s
                  WHERE s.ZSTUDY = st.Z_PK AND UPPER(TRIM(s.ZMODALITY)) IN ('CT', 'MR'))
    GROUP BY key
)
SELECT e.month,
       COUNT(*) AS eligible,
       SUM(CASE WHEN l.state = 'done' THEN 1 ELSE 0 END) AS done,
       SUM(CASE WHEN l.state IS NULL OR l.state != 'done' THEN 1 ELSE 0 END) AS left_to_back_up
FROM eligible e
LEFT JOIN ledger.studies l ON l.key = e.key
GROUP BY e.month
ORDER BY e.month;

-- The eligible studies that are not done yet, one by one (the ones counted as left above).
SELECT TRIM(st.ZSTUDYINSTANCEUID) AS study_uid,
       datetime(st.ZDATE + 978307200, 'unixepoch', 'localtime') AS study_date,
       datetime(st.ZDATEADDED + 978307200, 'unixepoch', 'localtime') AS added,
       COALESCE(l.state, 'never tried') AS state,
       COALESCE(l.code, '') AS code
FROM ZSTUDY st
LEFT JOIN ledger.studies l
       ON l.key = TRIM(st.ZSTUDYINSTANCEUID) || '|' || COALESCE(st.ZPATIENTUID, '')
WHERE EXISTS (SELECT 1 FROM ZSERIES s
              WHERE s.ZSTUDY = st.Z_PK AND UPPER(TRIM(s.ZMODALITY)) IN ('CT', 'MR'))
  AND (l.state IS NULL OR l.state != 'done')
ORDER BY st.ZDATE;

-- The last 20 issues (the same rows as issues.csv).
SELECT datetime(ts, 'unixepoch', 'localtime') AS time, code, uid AS study_uid, detail
FROM ledger.issues
ORDER BY id DESC
LIMIT 20;

-- The last 10 runs: how each ended (exit codes in README "Exit codes").
SELECT id,
       datetime(started, 'unixepoch', 'localtime') AS started,
       ROUND((ended - started) / 60.0, 1) AS minutes,
       outcome, exit_code, studies_done, studies_failed,
       ROUND(bytes_in / 1e9, 2) AS gb_read
FROM ledger.runs
ORDER BY id DESC
LIMIT 10;

-- ZIPs not re-checked for 90 days or more: candidates for 'horos-backup verify --deep'.
SELECT zip_path,
       datetime(created_at, 'unixepoch', 'localtime') AS exported,
       datetime(verified_at, 'unixepoch', 'localtime') AS last_verified
FROM ledger.zips
WHERE status = 'ok' AND (verified_at IS NULL OR verified_at < strftime('%s', 'now') - 90 * 86400)
ORDER BY verified_at;

-- ZIPs found bad by verify or at the start of a run (moved to .quarantine/, study queued again).
SELECT zip_path, status, key
FROM ledger.zips
WHERE status != 'ok';
