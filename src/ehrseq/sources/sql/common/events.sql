-- Attach every source event to an ICU stay and classify it: kept, or dropped for one
-- named reason. Reads src_event_parts and its spelling macros (source_events.sql),
-- cohort_all (cohort.sql), admissions and patients. Labs and microbiology have no stay_id
-- in MIMIC: they attach by subject (and admission when known) and time within
-- [intime, outtime]. Before the cutoff, an event shows only what was known by the cutoff
-- (`withheld` below).
--
-- Speed (issue 15): no window function and no wide sort or aggregate runs over all
-- events. Overlapping stays are found once on the (small) stay table, and the stay that
-- takes an event inside them once per (subject, admission, time); a 64-bit hash of the
-- shown content finds the few events that may collapse, and only those are grouped on
-- their full content. Codes and texts are spelled only for kept events, in the form they
-- are shown.

-- Stays events attach to. `shared_window`: another stay of the same subject shares part of
-- the attachment window (from the admission day's midnight, for date-only events, to
-- outtime). An event matching a stay without overlap matches no other stay, since a
-- second match would make both windows overlap.
CREATE OR REPLACE TEMP TABLE event_stays AS
WITH s AS (
    SELECT stay_id, subject_id, hadm_id, intime, outtime, cutoff, exclusion,
           date_trunc('day', intime) AS day_start
    FROM cohort_all
    WHERE copy_number = 1 AND intime IS NOT NULL AND outtime IS NOT NULL
)
SELECT s.*,
       EXISTS (SELECT 1 FROM s AS o
               WHERE o.subject_id = s.subject_id AND o.stay_id <> s.stay_id
                 AND o.day_start <= s.outtime AND s.day_start <= o.outtime) AS shared_window
FROM s;

-- Inside overlapping stays (rare) the earliest stay takes an event. Per subject with
-- overlapping stays, its shared stays in that order (a small table): an event of such a
-- subject that matches no other stay takes the first of them that matches it. Found per
-- event from its own subject, admission and time, without reading the events first (the
-- largest tables stream from their files, extract.py), and identical copies of an event
-- all go to the same stay, counted as duplicates below.
CREATE OR REPLACE TEMP TABLE shared_stays AS
SELECT subject_id,
       list(struct_pack(stay_id, hadm_id, day_start, intime, outtime, cutoff, exclusion)
            ORDER BY intime, stay_id) AS stays
FROM event_stays WHERE shared_window
GROUP BY subject_id;

-- One row per source event: its reason to be dropped (NULL: kept), and for kept events
-- what is shown. The stay's ids and times are joined back when the events are written.
-- extract.py counts its rows per kind, reason and system (an aggregate that spells no
-- content), then stores only the kept rows as event_rows, labs first, so that labevents
-- (the largest table) is freed before the other kinds are attached.
CREATE OR REPLACE TEMP VIEW classified_events AS
WITH linked AS (  -- events that name their stay
    SELECT e.*, s.stay_id AS stay, s.hadm_id AS stay_hadm, s.intime, s.cutoff, s.exclusion,
           CASE WHEN e.time IS NULL THEN 'missing_time'
                WHEN s.stay_id IS NULL THEN 'orphan'
                WHEN e.time < CASE WHEN e.date_only THEN s.day_start ELSE s.intime END
                     OR e.time > s.outtime THEN 'outside_stay'
           END AS reason
    FROM src_event_parts e LEFT JOIN event_stays s ON s.stay_id = e.stay_id
    WHERE e.stay_id IS NOT NULL
),
matched AS (  -- events found by subject, admission and time: a stay without overlap (at most one) ...
    SELECT e.*, s.stay_id AS plain_stay, s.hadm_id AS plain_hadm, s.intime AS plain_intime,
           s.cutoff AS plain_cutoff, s.exclusion AS plain_exclusion,
           -- ... or the first shared stay that matches (lazily: only for subjects with overlaps)
           CASE WHEN s.stay_id IS NULL AND o.stays IS NOT NULL THEN
               list_filter(o.stays, lambda x: (e.hadm_id IS NULL OR x.hadm_id = e.hadm_id)
                                         AND e.time >= CASE WHEN e.date_only THEN x.day_start ELSE x.intime END
                                         AND e.time <= x.outtime)[1]
           END AS shared
    FROM src_event_parts e
    LEFT JOIN event_stays s
      ON NOT s.shared_window
     AND s.subject_id = e.subject_id
     AND (e.hadm_id IS NULL OR s.hadm_id = e.hadm_id)
     AND e.time >= CASE WHEN e.date_only THEN s.day_start ELSE s.intime END
     AND e.time <= s.outtime
    LEFT JOIN shared_stays o ON o.subject_id = e.subject_id
    WHERE e.stay_id IS NULL
),
unlinked AS (
    SELECT * EXCLUDE (plain_stay, plain_hadm, plain_intime, plain_cutoff, plain_exclusion, shared),
           coalesce(plain_stay, shared.stay_id) AS stay,
           CASE WHEN plain_stay IS NOT NULL THEN plain_hadm ELSE shared.hadm_id END AS stay_hadm,
           CASE WHEN plain_stay IS NOT NULL THEN plain_intime ELSE shared.intime END AS intime,
           CASE WHEN plain_stay IS NOT NULL THEN plain_cutoff ELSE shared.cutoff END AS cutoff,
           CASE WHEN plain_stay IS NOT NULL THEN plain_exclusion ELSE shared.exclusion END AS exclusion
    FROM matched
),
unlinked_classified AS (
    SELECT *,
           CASE WHEN time IS NULL THEN 'missing_time'
                WHEN subject_id NOT IN (SELECT subject_id FROM patients)
                     OR (hadm_id IS NOT NULL AND hadm_id NOT IN (SELECT hadm_id FROM admissions))
                     THEN 'orphan'
                WHEN stay IS NULL THEN 'outside_stay'
           END AS reason
    FROM unlinked
),
attached AS (
    SELECT * FROM linked
    UNION ALL BY NAME
    SELECT * FROM unlinked_classified
),
in_cohort AS (
    SELECT *,
           coalesce(reason, CASE WHEN exclusion IS NOT NULL THEN 'stay_not_in_cohort' END) AS drop_reason,
           -- A date-only event (MIMIC-III prescriptions, cultures without a charttime)
           -- happened at some unknown time of its day, so it is known only at the day's
           -- end: before the cutoff only if its whole day is. One dated on the cutoff's
           -- day moves to the cutoff (after it: kept for survival, never a mortality
           -- input); an order written that evening must not reach the prediction.
           coalesce(date_only AND time < cutoff AND time + INTERVAL 1 DAY > cutoff, false) AS moved_to_cutoff
    FROM attached
),
placed AS (
    SELECT *,
           CASE WHEN moved_to_cutoff THEN cutoff
                -- date-only events of the ICU admission day are placed at the admission
                ELSE greatest(time, intime) END AS placed_time
    FROM in_cohort
),
-- An event placed before the cutoff whose value becomes known only at or after it
-- (known_time, source_events.sql) shows what was known at its start: a procedure or
-- ingredient without its duration/amount, a lab or culture with its result pending. Events at
-- or after the cutoff keep the full result. `withheld` marks events whose shown content
-- differs from the source's (counted in extract.json). Both forms are spelled only for the
-- rows this can happen to (CASE evaluates its THEN only where its WHEN holds).
shown AS (
    SELECT *,
           coalesce(CASE WHEN drop_reason IS NULL AND placed_time < cutoff AND known_time >= cutoff THEN
                        event_code(event_type, false, itemid, itemid2, s1, s2)
                            IS DISTINCT FROM event_code(event_type, true, itemid, itemid2, s1, s2)
                        OR event_text(event_type, false, itemid, label, s1, s2, s3, s4, num, unit, flag)
                            IS DISTINCT FROM
                           event_text(event_type, true, itemid, label, s1, s2, s3, s4, num, unit, flag)
                        OR event_value(false, num) IS DISTINCT FROM event_value(true, num)
                        OR event_flag(event_type, false, itemid2, flag)
                            IS DISTINCT FROM event_flag(event_type, true, itemid2, flag)
                    END, false) AS withheld
    FROM placed
),
-- what a kept event shows; dropped rows are only counted, so they carry no content
content AS (
    SELECT *,
           CASE WHEN drop_reason IS NULL THEN event_code(event_type, withheld, itemid, itemid2, s1, s2) END
               AS shown_code,
           CASE WHEN drop_reason IS NULL
                THEN event_text(event_type, withheld, itemid, label, s1, s2, s3, s4, num, unit, flag) END AS shown_text,
           CASE WHEN drop_reason IS NULL THEN event_value(withheld, num) END AS shown_value,
           CASE WHEN drop_reason IS NULL THEN unit END AS shown_unit,
           CASE WHEN drop_reason IS NULL THEN event_flag(event_type, withheld, itemid2, flag) END AS shown_flag
    FROM shown
)
SELECT event_type, drop_reason AS reason, stay AS stay_id, time, placed_time, moved_to_cutoff, withheld, system,
       drop_reason IS NULL AND placed_time >= cutoff AS after_cutoff,
       shown_code AS code, shown_text AS text, shown_value AS value, shown_unit AS unit, shown_flag AS flag,
       -- routes kept rows that may collapse (collapse.sql); equal hashes are then compared in full
       CASE WHEN drop_reason IS NULL
            THEN hash(stay, time, event_type, shown_code, shown_text, shown_value, shown_unit, shown_flag) END
           AS content_hash,
       -- the full content of withheld rows: tells two withheld source rows apart
       CASE WHEN withheld THEN event_code(event_type, false, itemid, itemid2, s1, s2) END AS full_code,
       CASE WHEN withheld THEN event_text(event_type, false, itemid, label, s1, s2, s3, s4, num, unit, flag) END
           AS full_text,
       CASE WHEN withheld THEN event_value(false, num) END AS full_value,
       CASE WHEN withheld THEN event_flag(event_type, false, itemid2, flag) END AS full_flag
FROM content;
