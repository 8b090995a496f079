-- Every source's events in one shape, with their code and text spelled here, once: the text
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
-- start form it has until then (the macros' `pending` argument). common/events.sql
-- shows an event that starts before the cutoff but becomes known at or after it in its
-- start form, so no pre-cutoff event carries post-cutoff information.
--   procedures:  the value (e.g. a ventilation duration) is known at endtime
--   ingredients: the amount is what was delivered by endtime
--   labs:        the value, flag and value bin are known when the result is stored: a lab
--                drawn before the cutoff and stored after it shows as pending,
--                LAB//<itemid>//PENDING (not the bare LAB//<itemid>, which already is the
--                token of a lab with a non-numeric result or of an unbinned code)
--   cultures:    the result (organism or no growth) is known when it is stored
--   prescriptions: known when written (no start form: the macros give NULL when pending)
--
-- Speed (issue 15): src_event_parts carries the raw parts of each event, and the macros
-- below spell its code, text, value and flag from them. common/events.sql calls them only
-- for the events it keeps (about half of the source rows fall outside every stay), in the
-- form it shows; src_events spells every row both ways (tests and inspection).
--
-- Parts per kind (NULL where not listed):
--   prescription: s1 ndc, s2 drug, s3 prod_strength, s4 route, num dose, unit
--   procedure, ingredient: itemid, label, num amount, unit
--   lab: itemid, label, s1 value (as written), num valuenum, unit valueuom, flag
--   microbiology: itemid spec_itemid, itemid2 org_itemid, s1 spec_type_desc, s2 org_name
CREATE OR REPLACE TEMP MACRO event_code(kind, pending, itemid, itemid2, s1, s2) AS
    CASE kind
        WHEN 'prescription' THEN
            CASE WHEN pending THEN NULL
                 WHEN s1 IS NOT NULL AND s1 NOT IN ('0', '00000000000') THEN 'NDC//' || s1
                 ELSE 'DRUG//' || upper(coalesce(s2, 'UNKNOWN')) END
        WHEN 'lab' THEN CASE WHEN pending THEN 'LAB//' || itemid || '//PENDING' ELSE 'LAB//' || itemid END
        WHEN 'microbiology' THEN
            'MICRO//' || coalesce(CAST(itemid AS VARCHAR), 'NA') || '//'
            || CASE WHEN pending THEN 'PENDING' ELSE coalesce(CAST(itemid2 AS VARCHAR), 'NEG') END
        ELSE 'ITEM//' || itemid
    END;

CREATE OR REPLACE TEMP MACRO event_text(kind, pending, itemid, label, s1, s2, s3, s4, num, unit, flag) AS
    CASE kind
        WHEN 'prescription' THEN
            CASE WHEN NOT pending THEN concat_ws(' ', 'Prescription:', coalesce(s2, 'unknown drug'), s3, s4) END
        WHEN 'lab' THEN
            CASE WHEN pending THEN concat_ws(' ', 'Lab:', coalesce(label, 'item ' || itemid), 'pending')
                 ELSE concat_ws(' ', 'Lab:', coalesce(label, 'item ' || itemid),
                                coalesce(s1, CAST(num AS VARCHAR)), unit,
                                CASE WHEN flag IS NOT NULL THEN '(' || lower(flag) || ')' END) END
        WHEN 'microbiology' THEN
            concat_ws(' ', 'Microbiology:', s1, '-',
                      CASE WHEN pending THEN 'pending' ELSE coalesce(s2, 'no growth') END)
        ELSE  -- procedure, ingredient
            concat_ws(' ', CASE kind WHEN 'procedure' THEN 'Procedure:' ELSE 'Ingredient:' END,
                      coalesce(label, 'item ' || itemid),
                      CASE WHEN NOT pending AND num IS NOT NULL THEN round(num, 1) || ' ' || coalesce(unit, '') END)
    END;

CREATE OR REPLACE TEMP MACRO event_value(pending, num) AS CASE WHEN NOT pending THEN num END;

CREATE OR REPLACE TEMP MACRO event_flag(kind, pending, itemid2, flag) AS
    CASE WHEN pending THEN NULL
         WHEN kind = 'microbiology' THEN CASE WHEN itemid2 IS NOT NULL THEN 'positive' END
         ELSE lower(flag) END;

CREATE OR REPLACE TEMP VIEW src_event_parts AS
WITH intervals AS (  -- procedures and ingredients: one shape, one rule for when the amount is known
    SELECT 'procedure' AS event_type, subject_id, hadm_id, stay_id, starttime, endtime,
           itemid, value AS amount, valueuom AS unit, CAST(NULL AS VARCHAR) AS system
    FROM src_procedures
    UNION ALL
    SELECT 'ingredient', subject_id, hadm_id, stay_id, starttime, endtime, itemid, amount, amountuom, system
    FROM src_ingredients
)
SELECT 'prescription' AS event_type, subject_id, hadm_id, CAST(NULL AS BIGINT) AS stay_id, time, date_only,
       CAST(NULL AS TIMESTAMP) AS known_time, CAST(NULL AS VARCHAR) AS system,
       CAST(NULL AS BIGINT) AS itemid, CAST(NULL AS BIGINT) AS itemid2, CAST(NULL AS VARCHAR) AS label,
       ndc AS s1, drug AS s2, prod_strength AS s3, route AS s4,
       TRY_CAST(dose_val_rx AS DOUBLE) AS num, dose_unit_rx AS unit, CAST(NULL AS VARCHAR) AS flag
FROM src_prescriptions
UNION ALL
SELECT i.event_type, i.subject_id, i.hadm_id, i.stay_id, i.starttime, false,
       coalesce(i.endtime, 'infinity'::TIMESTAMP), i.system,
       i.itemid, NULL, d.label, NULL, NULL, NULL, NULL, i.amount, i.unit, NULL
FROM intervals i LEFT JOIN d_items d ON d.itemid = i.itemid
UNION ALL
SELECT 'lab', l.subject_id, l.hadm_id, NULL, l.time, false, l.known_time, NULL,
       l.itemid, NULL, d.label, l.value, NULL, NULL, NULL, l.valuenum, l.valueuom, l.flag
FROM src_labs l LEFT JOIN d_labitems d ON d.itemid = l.itemid
UNION ALL
SELECT 'microbiology', subject_id, hadm_id, NULL, time, date_only, known_time, NULL,
       spec_itemid, org_itemid, NULL, spec_type_desc, org_name, NULL, NULL, NULL, NULL, NULL
FROM src_cultures;

-- Every event spelled in full and in its start form (start_*: NULL for prescriptions).
CREATE OR REPLACE TEMP VIEW src_events AS
SELECT event_type, subject_id, hadm_id, stay_id, time,
       event_code(event_type, false, itemid, itemid2, s1, s2) AS code,
       event_text(event_type, false, itemid, label, s1, s2, s3, s4, num, unit, flag) AS text,
       event_value(false, num) AS value, unit, event_flag(event_type, false, itemid2, flag) AS flag,
       date_only, known_time,
       event_code(event_type, true, itemid, itemid2, s1, s2) AS start_code,
       event_text(event_type, true, itemid, label, s1, s2, s3, s4, num, unit, flag) AS start_text,
       event_value(true, num) AS start_value, event_flag(event_type, true, itemid2, flag) AS start_flag,
       system
FROM src_event_parts;
