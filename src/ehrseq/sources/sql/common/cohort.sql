-- Stay selection and labels, shared by every source. Reads src_stays (canonical.sql).
-- Parameters: $observation_hours, $min_age.
-- Every ICU stay gets exactly one outcome: kept (exclusion IS NULL) or one named reason,
-- so extract.json accounts for all of them.
CREATE OR REPLACE TABLE cohort_all AS
WITH s AS (
    SELECT *,
           intime + to_microseconds(CAST(round($observation_hours * 3600e6) AS BIGINT)) AS cutoff,
           row_number() OVER (PARTITION BY stay_id ORDER BY intime, outtime) AS copy_number
    FROM src_stays
)
SELECT *,
       CASE WHEN copy_number > 1 THEN 'duplicate_stay'
            WHEN NOT has_admission THEN 'orphan_admission'
            WHEN NOT has_patient THEN 'orphan_patient'
            WHEN intime IS NULL OR outtime IS NULL THEN 'missing_times'
            WHEN outtime <= intime THEN 'outtime_not_after_intime'
            WHEN age IS NULL OR age < $min_age THEN 'under_min_age'
            WHEN outtime < cutoff THEN 'shorter_than_window'
            -- died before the prediction time: nothing left to predict
            WHEN death_time < cutoff THEN 'died_before_cutoff'
       END AS exclusion,
       -- Survival over the rest of the hospital stay from ICU admission: death in
       -- hospital is the event, discharge censors.
       death_time IS NOT NULL AS died,
       date_diff('second', intime,
                 coalesce(death_time, greatest(coalesce(dischtime, outtime), outtime))) / 3600.0 AS end_hours
FROM s;
