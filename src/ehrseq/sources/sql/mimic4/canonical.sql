-- MIMIC-IV (and the synthetic source, which writes MIMIC-IV tables) -> the canonical views
-- (shapes in common/source_events.sql). Only renaming and what is particular to MIMIC-IV
-- happens here: which columns say when a result became known, how culture rows group into
-- results. Codes and texts are built once for every source (common/source_events.sql);
-- attaching events to stays, dropping and counting too (common/events.sql).

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

CREATE OR REPLACE TEMP VIEW src_prescriptions AS
SELECT subject_id, hadm_id, starttime AS time, false AS date_only,
       drug, ndc, prod_strength, dose_val_rx, dose_unit_rx, route
FROM prescriptions;

CREATE OR REPLACE TEMP VIEW src_procedures AS
SELECT subject_id, hadm_id, stay_id, starttime, endtime, itemid, value, valueuom
FROM procedureevents;

CREATE OR REPLACE TEMP VIEW src_ingredients AS
SELECT subject_id, hadm_id, stay_id, starttime, endtime, itemid, amount, amountuom, 'metavision' AS system
FROM ingredientevents;

-- A lab value is known when its result is stored (storetime), not when the sample was
-- drawn (charttime); a row without a storetime is never known before the cutoff (as a
-- culture without a store time).
CREATE OR REPLACE TEMP VIEW src_labs AS
SELECT subject_id, hadm_id, charttime AS time, itemid, value, valuenum, valueuom, flag,
       coalesce(storetime, 'infinity'::TIMESTAMP) AS known_time
FROM labevents;

-- One result per (specimen, test, organism); the antibiotic susceptibility rows of the
-- same result are merged into it (counted in extract.json). The result is known when the
-- first row naming it is stored: storetime, else the end of storedate (a date only says
-- "by the end of that day"); no store time at all: never before the cutoff. min() of
-- columns that are constant within a result (admission, specimen and organism names)
-- picks the same value whatever the row order.
CREATE OR REPLACE TEMP VIEW src_cultures AS
SELECT subject_id, min(hadm_id) AS hadm_id, coalesce(charttime, chartdate) AS time,
       bool_and(charttime IS NULL) AS date_only,
       spec_itemid, min(spec_type_desc) AS spec_type_desc, org_itemid, min(org_name) AS org_name,
       coalesce(min(coalesce(storetime, storedate + INTERVAL 1 DAY)), 'infinity'::TIMESTAMP) AS known_time
FROM microbiologyevents
GROUP BY subject_id, micro_specimen_id, coalesce(charttime, chartdate), spec_itemid, test_itemid, org_itemid;

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
