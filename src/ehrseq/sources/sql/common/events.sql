-- Attach every source event to an ICU stay and classify it: kept, or dropped for one
-- named reason. Reads src_events (canonical.sql), cohort_all (cohort.sql), admissions
-- and patients. Labs and microbiology have no stay_id in MIMIC: they attach by subject
-- (and admission when known) and time within [intime, outtime]. Before the cutoff, an
-- event shows only what was known by the cutoff (see `shown` below).
CREATE OR REPLACE TABLE events_classified AS
WITH stays AS (
    SELECT stay_id, subject_id, hadm_id, intime, outtime, cutoff, exclusion
    FROM cohort_all
    WHERE copy_number = 1 AND intime IS NOT NULL AND outtime IS NOT NULL
),
linked AS (  -- events that name their stay
    SELECT e.*, s.stay_id AS stay, s.hadm_id AS stay_hadm, s.intime, s.outtime, s.cutoff, s.exclusion,
           CASE WHEN e.time IS NULL THEN 'missing_time'
                WHEN s.stay_id IS NULL THEN 'orphan'
                WHEN e.time < CASE WHEN e.date_only THEN date_trunc('day', s.intime) ELSE s.intime END
                     OR e.time > s.outtime THEN 'outside_stay'
           END AS reason
    FROM src_events e LEFT JOIN stays s ON s.stay_id = e.stay_id
    WHERE e.stay_id IS NOT NULL
),
unlinked AS (  -- events found by subject, admission and time
    SELECT e.* EXCLUDE (event_number),
           s.stay_id AS stay, s.hadm_id AS stay_hadm, s.intime, s.outtime, s.cutoff, s.exclusion
    FROM (SELECT *, row_number() OVER () AS event_number FROM src_events WHERE stay_id IS NULL) e
    LEFT JOIN stays s
      ON s.subject_id = e.subject_id
     AND (e.hadm_id IS NULL OR s.hadm_id = e.hadm_id)
     AND e.time >= CASE WHEN e.date_only THEN date_trunc('day', s.intime) ELSE s.intime END
     AND e.time <= s.outtime
    -- overlapping stays (rare): the earliest one takes the event
    QUALIFY row_number() OVER (PARTITION BY e.event_number ORDER BY s.intime) = 1
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
           coalesce(reason, CASE WHEN exclusion IS NOT NULL THEN 'stay_not_in_cohort' END) AS reason2,
           -- date-only events of the ICU admission day are placed at the admission
           greatest(time, intime) AS placed_time
    FROM attached
),
-- An event placed before the cutoff whose value becomes known only at or after it
-- (known_time, canonical.sql) shows what was known at its start: a procedure or
-- ingredient without its duration/amount, a culture with its result pending. Events at
-- or after the cutoff keep the full result. `withheld` marks events whose shown content
-- differs from the source's (counted in extract.json).
shown AS (
    SELECT *,
           coalesce(reason2 IS NULL AND placed_time < cutoff AND known_time >= cutoff
                    AND (code IS DISTINCT FROM start_code OR text IS DISTINCT FROM start_text
                         OR value IS DISTINCT FROM start_value OR flag IS DISTINCT FROM start_flag),
                    false) AS withheld
    FROM in_cohort
),
-- Exact duplicates: same content and both shown in full or both withheld (two copies of
-- a row, one known before the cutoff and one after, show differently and are both kept,
-- so which copy survives never matters and the output is deterministic).
deduplicated AS (
    SELECT *,
           reason2 IS NULL AND row_number() OVER (
               PARTITION BY reason2 IS NULL, stay, time, event_type, code, text, value, unit, flag, withheld
               ORDER BY stay) > 1 AS is_duplicate
    FROM shown
),
final AS (
    SELECT *,
           CASE WHEN withheld THEN start_code ELSE code END AS shown_code,
           CASE WHEN withheld THEN start_text ELSE text END AS shown_text,
           CASE WHEN withheld THEN start_value ELSE value END AS shown_value,
           CASE WHEN withheld THEN start_flag ELSE flag END AS shown_flag
    FROM deduplicated
)
SELECT event_type,
       CASE WHEN reason2 IS NOT NULL THEN reason2
            WHEN is_duplicate THEN 'duplicate'
            -- source events that differ only in what is withheld look identical before the
            -- cutoff (e.g. one culture that grew two organisms): one pending event is kept,
            -- so the number of events does not reveal the result either
            WHEN row_number() OVER (
                     PARTITION BY reason2 IS NULL AND NOT is_duplicate, stay, time, event_type,
                                  shown_code, shown_text, shown_value, unit, shown_flag
                     ORDER BY withheld, code, text, value, flag) > 1 THEN 'merged_when_withheld'
       END AS reason,
       subject_id, stay_hadm AS hadm_id, stay AS stay_id,
       placed_time AS time, intime, cutoff, known_time, withheld,
       shown_code AS code, shown_text AS text, shown_value AS value, unit, shown_flag AS flag
FROM final;
