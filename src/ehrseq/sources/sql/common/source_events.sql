-- Every source's events in one shape, with their code and text built here, once: the text
-- is both the embedding-cache key and a vocabulary token, so MIMIC-III, MIMIC-IV and the
-- synthetic source must spell an event the same way.
--
-- Reads the canonical views each source's canonical.sql defines (its own column names
-- renamed, its own facts about when a result became known):
--   src_prescriptions (subject_id, hadm_id, time, date_only, drug, ndc, prod_strength,
--                      dose_val_rx, dose_unit_rx, route)
--   src_procedures    (subject_id, hadm_id, stay_id, starttime, endtime, itemid, value, valueuom)
--   src_ingredients   (subject_id, hadm_id, stay_id, starttime, endtime, itemid, amount, amountuom,
--                      system: the charting system, counted in extract.json)
--   src_labs          (subject_id, hadm_id, time, itemid, value, valuenum, valueuom, flag, known_time)
--   src_cultures      (subject_id, hadm_id, time, date_only, spec_itemid, spec_type_desc,
--                      org_itemid, org_name, known_time): one row per culture result
-- and the item dictionaries d_items and d_labitems (itemid, label).
--
-- Every event sits at its start `time`, but some values are only known later. Each row
-- therefore also carries `known_time`, when its full text/code/value/flag became known
-- (NULL: at `time`; 'infinity': not known when, so never before the cutoff), and the
-- start_code/start_text/start_value/start_flag it has until then. common/events.sql
-- shows an event that starts before the cutoff but becomes known at or after it in its
-- start form, so no pre-cutoff event carries post-cutoff information.
--   procedures:  the value (e.g. a ventilation duration) is known at endtime
--   ingredients: the amount is what was delivered by endtime
--   labs:        the value, flag and value bin are known when the result is stored: a lab
--                drawn before the cutoff and stored after it shows as pending,
--                LAB//<itemid>//PENDING (not the bare LAB//<itemid>, which already is the
--                token of a lab with a non-numeric result or of an unbinned code)
--   cultures:    the result (organism or no growth) is known when it is stored
CREATE OR REPLACE TEMP VIEW src_events AS
WITH intervals AS (  -- procedures and ingredients: one shape, one rule for when the amount is known
    SELECT 'procedure' AS event_type, 'Procedure:' AS prefix, subject_id, hadm_id, stay_id, starttime, endtime,
           itemid, value AS amount, valueuom AS unit, CAST(NULL AS VARCHAR) AS system
    FROM src_procedures
    UNION ALL
    SELECT 'ingredient', 'Ingredient:', subject_id, hadm_id, stay_id, starttime, endtime, itemid, amount, amountuom,
           system
    FROM src_ingredients
)
SELECT 'prescription' AS event_type, subject_id, hadm_id, CAST(NULL AS BIGINT) AS stay_id, time,
       CASE WHEN ndc IS NOT NULL AND ndc NOT IN ('0', '00000000000') THEN 'NDC//' || ndc
            ELSE 'DRUG//' || upper(coalesce(drug, 'UNKNOWN')) END AS code,
       concat_ws(' ', 'Prescription:', coalesce(drug, 'unknown drug'), prod_strength, route) AS text,
       TRY_CAST(dose_val_rx AS DOUBLE) AS value, dose_unit_rx AS unit, CAST(NULL AS VARCHAR) AS flag,
       date_only,
       CAST(NULL AS TIMESTAMP) AS known_time, CAST(NULL AS VARCHAR) AS start_code,
       CAST(NULL AS VARCHAR) AS start_text, CAST(NULL AS DOUBLE) AS start_value,
       CAST(NULL AS VARCHAR) AS start_flag, CAST(NULL AS VARCHAR) AS system
FROM src_prescriptions
UNION ALL
SELECT i.event_type, i.subject_id, i.hadm_id, i.stay_id, i.starttime,
       'ITEM//' || i.itemid,
       concat_ws(' ', i.prefix, coalesce(d.label, 'item ' || i.itemid),
                 CASE WHEN i.amount IS NOT NULL THEN round(i.amount, 1) || ' ' || coalesce(i.unit, '') END),
       i.amount, i.unit, NULL, false,
       coalesce(i.endtime, 'infinity'::TIMESTAMP), 'ITEM//' || i.itemid,
       concat_ws(' ', i.prefix, coalesce(d.label, 'item ' || i.itemid)), NULL, NULL, i.system
FROM intervals i LEFT JOIN d_items d ON d.itemid = i.itemid
UNION ALL
SELECT 'lab', l.subject_id, l.hadm_id, NULL, l.time,
       'LAB//' || l.itemid,
       concat_ws(' ', 'Lab:', coalesce(d.label, 'item ' || l.itemid),
                 coalesce(l.value, CAST(l.valuenum AS VARCHAR)), l.valueuom,
                 CASE WHEN l.flag IS NOT NULL THEN '(' || lower(l.flag) || ')' END),
       l.valuenum, l.valueuom, lower(l.flag), false,
       l.known_time, 'LAB//' || l.itemid || '//PENDING',
       concat_ws(' ', 'Lab:', coalesce(d.label, 'item ' || l.itemid), 'pending'), NULL, NULL, NULL
FROM src_labs l LEFT JOIN d_labitems d ON d.itemid = l.itemid
UNION ALL
SELECT 'microbiology', subject_id, hadm_id, NULL, time,
       'MICRO//' || coalesce(CAST(spec_itemid AS VARCHAR), 'NA') || '//' || coalesce(CAST(org_itemid AS VARCHAR), 'NEG'),
       concat_ws(' ', 'Microbiology:', spec_type_desc, '-', coalesce(org_name, 'no growth')),
       NULL, NULL, CASE WHEN org_itemid IS NOT NULL THEN 'positive' END,
       date_only, known_time,
       'MICRO//' || coalesce(CAST(spec_itemid AS VARCHAR), 'NA') || '//PENDING',
       concat_ws(' ', 'Microbiology:', spec_type_desc, '-', 'pending'), NULL, NULL, NULL
FROM src_cultures;
