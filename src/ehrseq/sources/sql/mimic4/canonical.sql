-- MIMIC-IV (and the synthetic source, which writes MIMIC-IV tables) -> canonical views.
-- Only renaming and row-level text building happens here; attaching events to stays,
-- dropping and counting is shared by every source (common/events.sql).

CREATE OR REPLACE TEMP VIEW src_stays AS
SELECT
    i.subject_id, i.hadm_id, i.stay_id, i.intime, i.outtime, i.first_careunit,
    -- MIMIC-IV ages: anchor_age at anchor_year, capped at 91 for patients over 89.
    CAST(p.anchor_age + (year(i.intime) - p.anchor_year) AS DOUBLE) AS age,
    p.gender, a.race, a.admission_type, a.insurance, a.marital_status,
    a.admittime, a.dischtime,
    -- In-hospital death: deathtime, or discharge time when only the flag is set.
    CASE WHEN a.deathtime IS NOT NULL THEN a.deathtime
         WHEN a.hospital_expire_flag = 1 THEN a.dischtime END AS death_time,
    a.hadm_id IS NOT NULL AS has_admission, p.subject_id IS NOT NULL AS has_patient
FROM icustays i
LEFT JOIN admissions a ON a.hadm_id = i.hadm_id
LEFT JOIN patients p ON p.subject_id = i.subject_id;

-- Every event sits at its start `time`, but some values are only known later. Each row
-- therefore also carries `known_time`, when its full text/code/value/flag became known
-- (NULL: at `time`; 'infinity': not known when, so never before the cutoff), and the
-- start_text/start_code/start_value/start_flag it has until then. common/events.sql
-- shows an event that starts before the cutoff but becomes known at or after it in its
-- start form, so no pre-cutoff event carries post-cutoff information.
--   procedures:  the value (e.g. a ventilation duration) is known at endtime
--   ingredients: the amount is what was delivered by endtime
--   cultures:    the result (organism or no growth) is known when it is stored
CREATE OR REPLACE TEMP VIEW src_events AS
SELECT 'prescription' AS event_type, r.subject_id, r.hadm_id, CAST(NULL AS BIGINT) AS stay_id,
       r.starttime AS time,
       CASE WHEN r.ndc IS NOT NULL AND r.ndc NOT IN ('0', '00000000000') THEN 'NDC//' || r.ndc
            ELSE 'DRUG//' || upper(coalesce(r.drug, 'UNKNOWN')) END AS code,
       concat_ws(' ', 'Prescription:', coalesce(r.drug, 'unknown drug'), r.prod_strength, r.route) AS text,
       TRY_CAST(r.dose_val_rx AS DOUBLE) AS value, r.dose_unit_rx AS unit, CAST(NULL AS VARCHAR) AS flag,
       false AS date_only,
       CAST(NULL AS TIMESTAMP) AS known_time, CAST(NULL AS VARCHAR) AS start_code,
       CAST(NULL AS VARCHAR) AS start_text, CAST(NULL AS DOUBLE) AS start_value,
       CAST(NULL AS VARCHAR) AS start_flag
FROM prescriptions r
UNION ALL
SELECT 'procedure', e.subject_id, e.hadm_id, e.stay_id, e.starttime,
       'ITEM//' || e.itemid,
       concat_ws(' ', 'Procedure:', coalesce(d.label, 'item ' || e.itemid),
                 CASE WHEN e.value IS NOT NULL THEN round(e.value, 1) || ' ' || coalesce(e.valueuom, '') END),
       e.value, e.valueuom, NULL, false,
       coalesce(e.endtime, 'infinity'::TIMESTAMP), 'ITEM//' || e.itemid,
       concat_ws(' ', 'Procedure:', coalesce(d.label, 'item ' || e.itemid)), NULL, NULL
FROM procedureevents e LEFT JOIN d_items d ON d.itemid = e.itemid
UNION ALL
SELECT 'lab', l.subject_id, l.hadm_id, NULL, l.charttime,
       'LAB//' || l.itemid,
       concat_ws(' ', 'Lab:', coalesce(d.label, 'item ' || l.itemid),
                 coalesce(l.value, CAST(l.valuenum AS VARCHAR)), l.valueuom,
                 CASE WHEN l.flag IS NOT NULL THEN '(' || lower(l.flag) || ')' END),
       l.valuenum, l.valueuom, lower(l.flag), false,
       NULL, NULL, NULL, NULL, NULL
FROM labevents l LEFT JOIN d_labitems d ON d.itemid = l.itemid
UNION ALL
-- One event per culture result (specimen, test, organism); the antibiotic
-- susceptibility rows of the same result are merged into it (counted in extract.json).
-- The result is known when the first row naming it is stored: storetime, else the end of
-- storedate (a date only says "by the end of that day"); no store time at all: never
-- before the cutoff.
SELECT 'microbiology', m.subject_id, any_value(m.hadm_id), NULL,
       coalesce(m.charttime, m.chartdate),
       'MICRO//' || m.spec_itemid || '//' || coalesce(CAST(m.org_itemid AS VARCHAR), 'NEG'),
       concat_ws(' ', 'Microbiology:', any_value(m.spec_type_desc), '-',
                 coalesce(any_value(m.org_name), 'no growth')),
       NULL, NULL, CASE WHEN m.org_itemid IS NOT NULL THEN 'positive' END,
       bool_and(m.charttime IS NULL),
       coalesce(min(coalesce(m.storetime, m.storedate + INTERVAL 1 DAY)), 'infinity'::TIMESTAMP),
       'MICRO//' || m.spec_itemid || '//PENDING',
       concat_ws(' ', 'Microbiology:', any_value(m.spec_type_desc), '-', 'pending'), NULL, NULL
FROM microbiologyevents m
GROUP BY m.subject_id, m.micro_specimen_id, coalesce(m.charttime, m.chartdate), m.spec_itemid,
         m.test_itemid, m.org_itemid
UNION ALL
SELECT 'ingredient', g.subject_id, g.hadm_id, g.stay_id, g.starttime,
       'ITEM//' || g.itemid,
       concat_ws(' ', 'Ingredient:', coalesce(d.label, 'item ' || g.itemid),
                 CASE WHEN g.amount IS NOT NULL THEN round(g.amount, 1) || ' ' || coalesce(g.amountuom, '') END),
       g.amount, g.amountuom, NULL, false,
       coalesce(g.endtime, 'infinity'::TIMESTAMP), 'ITEM//' || g.itemid,
       concat_ws(' ', 'Ingredient:', coalesce(d.label, 'item ' || g.itemid)), NULL, NULL
FROM ingredientevents g LEFT JOIN d_items d ON d.itemid = g.itemid;

-- Discharge diagnoses with their admission: only for the patient-level code models
-- (PromptEHR, Med2Vec). Never joined to the in-hospital prediction inputs.
CREATE OR REPLACE TEMP VIEW src_diagnoses AS
SELECT a.subject_id, a.hadm_id, a.admittime, a.dischtime,
       CAST(p.anchor_age + (year(a.admittime) - p.anchor_year) AS DOUBLE) AS age,
       p.gender, a.race, d.seq_num,
       'ICD' || d.icd_version || '//' || d.icd_code AS code
FROM diagnoses_icd d
JOIN admissions a ON a.hadm_id = d.hadm_id
JOIN patients p ON p.subject_id = a.subject_id
WHERE d.icd_code IS NOT NULL;
