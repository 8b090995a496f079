-- De-duplication of the kept events. Reads only event_rows (the kept rows of events.sql's
-- classified_events): the source tables may be gone by now (extract.py frees them before
-- this runs).
--
-- Kept events, one row per distinct shown event. Two kinds of rows collapse here:
--   duplicate:            exact copies (same stay, time, kind, content, withheld or not)
--   merged_when_withheld: source rows that differ only in what is withheld look identical
--                         before the cutoff (e.g. one culture that grew two organisms):
--                         one pending event is kept, so the number of events does not
--                         reveal the result either.
-- Rows whose content hash is unique cannot collapse and pass through; the others (a hash
-- shared by copies, look-alikes or, very rarely, by different contents) are grouped on
-- their full content, so a hash collision never merges two different events.
-- Grouping on the raw `time` (not placed_time) keeps a date-only event and a timed one
-- placed at the same instant apart. `withheld` is false when any copy is shown in full.
-- `has_plain` marks groups with a copy shown in full; with the distinct withheld
-- contents (extract.py) it splits the collapsed rows into the two reasons.
--
-- Speed (issue 15): only the few collapsed groups are stored (`collapsed`); events_kept is a
-- view, so the pass-through rows are read from event_rows by the metrics and the final sort
-- instead of being copied into another table.
CREATE OR REPLACE TEMP TABLE collapsing AS
SELECT content_hash FROM event_rows GROUP BY content_hash HAVING count(*) > 1;

CREATE OR REPLACE TEMP TABLE collapsed AS
SELECT stay_id, time, event_type, code, text, value, unit, flag,
       -- a timed copy at the same instant is known then: the group is placed there
       min(placed_time) AS placed_time, bool_and(moved_to_cutoff) AS moved_to_cutoff,
       bool_and(after_cutoff) AS after_cutoff,
       count(*) AS source_rows, bool_and(withheld) AS withheld, bool_or(NOT withheld) AS has_plain
FROM event_rows SEMI JOIN collapsing USING (content_hash)
GROUP BY stay_id, time, event_type, code, text, value, unit, flag;

CREATE OR REPLACE TEMP VIEW events_kept AS
SELECT stay_id, time, event_type, code, text, value, unit, flag, placed_time, moved_to_cutoff, after_cutoff,
       1 AS source_rows, withheld, NOT withheld AS has_plain
FROM event_rows ANTI JOIN collapsing USING (content_hash)
UNION ALL
SELECT stay_id, time, event_type, code, text, value, unit, flag, placed_time, moved_to_cutoff, after_cutoff,
       source_rows, withheld, has_plain
FROM collapsed;
