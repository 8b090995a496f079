-- MIMIC-III -> the same canonical views as mimic4/canonical.sql.

CREATE OR REPLACE TEMP VIEW src_stays AS
SELECT
    i.subject_id, i.hadm_id, i.icustay_id AS stay_id, i.intime, i.outtime, i.first_careunit,
    -- MIMIC-III shifts the dates of birth of patients over 89 so that they appear ~300
    -- years old; they are set to 90 (the shifted value carries no information).
    least(datediff('day', p.dob, i.intime) / 365.25, 90.0) AS age,
    p.gender, a.ethnicity AS race, a.admission_type, a.insurance, a.marital_status,
    a.admittime, a.dischtime,
    CASE WHEN a.deathtime IS NOT NULL THEN a.deathtime
         WHEN a.hospital_expire_flag = 1 THEN a.dischtime END AS death_time,
    a.hadm_id IS NOT NULL AS has_admission, p.subject_id IS NOT NULL AS has_patient
FROM icustays i
LEFT JOIN admissions a ON a.hadm_id = i.hadm_id
LEFT JOIN patients p ON p.subject_id = i.subject_id;

-- known_time and start_* as in mimic4/canonical.sql: when an event's full value becomes
-- known, and what it shows before that.
CREATE OR REPLACE TEMP VIEW src_events AS
-- MIMIC-III prescriptions carry dates only (date_only): common/events.sql attaches them
-- from the ICU admission day on and places same-day orders at the ICU admission.
SELECT 'prescription' AS event_type, r.subject_id, r.hadm_id, CAST(NULL AS BIGINT) AS stay_id,
       r.startdate AS time,
       CASE WHEN r.ndc IS NOT NULL AND r.ndc NOT IN ('0', '00000000000') THEN 'NDC//' || r.ndc
            ELSE 'DRUG//' || upper(coalesce(r.drug, 'UNKNOWN')) END AS code,
       concat_ws(' ', 'Prescription:', coalesce(r.drug, 'unknown drug'), r.prod_strength, r.route) AS text,
       TRY_CAST(r.dose_val_rx AS DOUBLE) AS value, r.dose_unit_rx AS unit, CAST(NULL AS VARCHAR) AS flag,
       true AS date_only,
       CAST(NULL AS TIMESTAMP) AS known_time, CAST(NULL AS VARCHAR) AS start_code,
       CAST(NULL AS VARCHAR) AS start_text, CAST(NULL AS DOUBLE) AS start_value,
       CAST(NULL AS VARCHAR) AS start_flag
FROM prescriptions r
UNION ALL
SELECT 'procedure', e.subject_id, e.hadm_id, e.icustay_id, e.starttime,
       'ITEM//' || e.itemid,
       concat_ws(' ', 'Procedure:', coalesce(d.label, 'item ' || e.itemid),
                 CASE WHEN e.value IS NOT NULL THEN round(e.value, 1) || ' ' || coalesce(e.valueuom, '') END),
       e.value, e.valueuom, NULL, false,
       coalesce(e.endtime, 'infinity'::TIMESTAMP), 'ITEM//' || e.itemid,
       concat_ws(' ', 'Procedure:', coalesce(d.label, 'item ' || e.itemid)), NULL, NULL
FROM procedureevents_mv e LEFT JOIN d_items d ON d.itemid = e.itemid
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
-- MIMIC-III MICROBIOLOGYEVENTS has no storetime or storedate: when a result became known
-- is not recorded. Guessing a turnaround would let some results leak (blood cultures
-- run up to 5 days), so the result counts as known only from the cutoff on
-- (known_time 'infinity'): every culture drawn before the cutoff shows as pending.
SELECT 'microbiology', m.subject_id, any_value(m.hadm_id), NULL,
       coalesce(m.charttime, m.chartdate),
       'MICRO//' || coalesce(CAST(m.spec_itemid AS VARCHAR), 'NA') || '//' || coalesce(CAST(m.org_itemid AS VARCHAR), 'NEG'),
       concat_ws(' ', 'Microbiology:', any_value(m.spec_type_desc), '-',
                 coalesce(any_value(m.org_name), 'no growth')),
       NULL, NULL, CASE WHEN m.org_itemid IS NOT NULL THEN 'positive' END,
       bool_and(m.charttime IS NULL),
       'infinity'::TIMESTAMP,
       'MICRO//' || coalesce(CAST(m.spec_itemid AS VARCHAR), 'NA') || '//PENDING',
       concat_ws(' ', 'Microbiology:', any_value(m.spec_type_desc), '-', 'pending'), NULL, NULL
FROM microbiologyevents m
GROUP BY m.subject_id, coalesce(m.charttime, m.chartdate), m.spec_itemid, m.org_itemid
UNION ALL
-- INPUTEVENTS_MV plays the role of MIMIC-IV's ingredientevents (what was infused).
SELECT 'ingredient', g.subject_id, g.hadm_id, g.icustay_id, g.starttime,
       'ITEM//' || g.itemid,
       concat_ws(' ', 'Ingredient:', coalesce(d.label, 'item ' || g.itemid),
                 CASE WHEN g.amount IS NOT NULL THEN round(g.amount, 1) || ' ' || coalesce(g.amountuom, '') END),
       g.amount, g.amountuom, NULL, false,
       coalesce(g.endtime, 'infinity'::TIMESTAMP), 'ITEM//' || g.itemid,
       concat_ws(' ', 'Ingredient:', coalesce(d.label, 'item ' || g.itemid)), NULL, NULL
FROM inputevents_mv g LEFT JOIN d_items d ON d.itemid = g.itemid;

-- Discharge diagnoses with their admission: only for the patient-level code models
-- (PromptEHR, Med2Vec). Never joined to the in-hospital prediction inputs.
CREATE OR REPLACE TEMP VIEW src_diagnoses AS
SELECT a.subject_id, a.hadm_id, a.admittime, a.dischtime,
       least(datediff('day', p.dob, a.admittime) / 365.25, 90.0) AS age,
       p.gender, a.ethnicity AS race, d.seq_num,
       'ICD9//' || d.icd9_code AS code
FROM diagnoses_icd d
JOIN admissions a ON a.hadm_id = d.hadm_id
JOIN patients p ON p.subject_id = a.subject_id
WHERE d.icd9_code IS NOT NULL;
