-- MIMIC-III -> the canonical views (shapes in common/source_events.sql), as
-- mimic4/canonical.sql does for MIMIC-IV: renaming and MIMIC-III's own facts only.

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

-- MIMIC-III prescriptions carry dates only (date_only): common/events.sql attaches them
-- from the ICU admission day on and places same-day orders at the ICU admission.
CREATE OR REPLACE TEMP VIEW src_prescriptions AS
SELECT subject_id, hadm_id, startdate AS time, true AS date_only,
       drug, ndc, prod_strength, dose_val_rx, dose_unit_rx, route
FROM prescriptions;

CREATE OR REPLACE TEMP VIEW src_procedures AS
SELECT subject_id, hadm_id, icustay_id AS stay_id, starttime, endtime, itemid, value, valueuom
FROM procedureevents_mv;

-- Inputs play the role of MIMIC-IV's ingredientevents (what was infused), from both ICU
-- charting systems: MetaVision (INPUTEVENTS_MV, 2008-2012: start and end times, the amount
-- known at the end) and CareVue (INPUTEVENTS_CV, 2001-2008: one charttime per charted
-- amount, known when charted). Reading MetaVision alone would leave about half of
-- MIMIC-III's stays without infusions: an era shortcut a model could learn.
CREATE OR REPLACE TEMP VIEW src_ingredients AS
SELECT subject_id, hadm_id, icustay_id AS stay_id, starttime, endtime, itemid, amount, amountuom,
       'metavision' AS system
FROM inputevents_mv
UNION ALL
SELECT subject_id, hadm_id, icustay_id, charttime, charttime, itemid, amount, amountuom, 'carevue'
FROM inputevents_cv;

-- MIMIC-III LABEVENTS records no storetime: when a value became known is unknown, so a
-- lab counts as known at its charttime (extract.json and README say so).
CREATE OR REPLACE TEMP VIEW src_labs AS
SELECT subject_id, hadm_id, charttime AS time, itemid, value, valuenum, valueuom, flag,
       CAST(NULL AS TIMESTAMP) AS known_time
FROM labevents;

-- MIMIC-III MICROBIOLOGYEVENTS has no storetime or storedate: when a result became known
-- is not recorded. Guessing a turnaround would let some results leak (blood cultures
-- run up to 5 days), so the result counts as known only from the cutoff on
-- (known_time 'infinity'): every culture drawn before the cutoff shows as pending.
CREATE OR REPLACE TEMP VIEW src_cultures AS
SELECT subject_id, min(hadm_id) AS hadm_id, coalesce(charttime, chartdate) AS time,
       bool_and(charttime IS NULL) AS date_only,
       spec_itemid, min(spec_type_desc) AS spec_type_desc, org_itemid, min(org_name) AS org_name,
       'infinity'::TIMESTAMP AS known_time
FROM microbiologyevents
GROUP BY subject_id, coalesce(charttime, chartdate), spec_itemid, org_itemid;

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
