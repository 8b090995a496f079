"""MIMIC-III v1.4 tables read by ehrseq (one flat folder; upper- or lower-case names)."""
from ehrseq.sources.tables import TableSpec

B, D, V, T = "BIGINT", "DOUBLE", "VARCHAR", "TIMESTAMP"

SQL_DIR = "mimic3"  # sql/mimic3/canonical.sql
# when a lab value becomes known (reported in extract.json)
LAB_RESULT_TIME = "not recorded (MIMIC-III LABEVENTS has no storetime): lab values count as known at charttime"
# ICU charting systems of src_ingredients (rows counted per system in extract.json)
INGREDIENT_SYSTEMS = ("metavision", "carevue")

TABLES = [
    TableSpec("patients", "PATIENTS", {"subject_id": B, "gender": V, "dob": T}, required=True),
    TableSpec("admissions", "ADMISSIONS", {
        "subject_id": B, "hadm_id": B, "admittime": T, "dischtime": T, "deathtime": T,
        "admission_type": V, "insurance": V, "marital_status": V, "ethnicity": V, "hospital_expire_flag": B,
    }, required=True),
    TableSpec("icustays", "ICUSTAYS", {
        "subject_id": B, "hadm_id": B, "icustay_id": B, "first_careunit": V, "intime": T, "outtime": T,
    }, required=True),
    TableSpec("prescriptions", "PRESCRIPTIONS", {
        "subject_id": B, "hadm_id": B, "startdate": T, "drug": V, "ndc": V, "prod_strength": V,
        "dose_val_rx": V, "dose_unit_rx": V, "route": V,
    }),
    TableSpec("procedureevents_mv", "PROCEDUREEVENTS_MV", {
        "subject_id": B, "hadm_id": B, "icustay_id": B, "starttime": T, "endtime": T, "itemid": B, "value": D,
        "valueuom": V,
    }),
    TableSpec("labevents", "LABEVENTS", {
        "subject_id": B, "hadm_id": B, "itemid": B, "charttime": T, "value": V, "valuenum": D,
        "valueuom": V, "flag": V,
    }),
    # No storetime/storedate in MIMIC-III: results count as known only from the cutoff on
    # (sql/mimic3/canonical.sql).
    TableSpec("microbiologyevents", "MICROBIOLOGYEVENTS", {
        "subject_id": B, "hadm_id": B, "chartdate": T, "charttime": T, "spec_itemid": B,
        "spec_type_desc": V, "org_itemid": B, "org_name": V,
    }),
    TableSpec("inputevents_mv", "INPUTEVENTS_MV", {
        "subject_id": B, "hadm_id": B, "icustay_id": B, "starttime": T, "endtime": T, "itemid": B, "amount": D,
        "amountuom": V,
    }),
    # CareVue inputs (about half of MIMIC-III's stays); the public demo lacks this table
    TableSpec("inputevents_cv", "INPUTEVENTS_CV", {
        "subject_id": B, "hadm_id": B, "icustay_id": B, "charttime": T, "itemid": B, "amount": D, "amountuom": V,
    }),
    TableSpec("diagnoses_icd", "DIAGNOSES_ICD", {"subject_id": B, "hadm_id": B, "seq_num": B, "icd9_code": V}),
    TableSpec("d_labitems", "D_LABITEMS", {"itemid": B, "label": V}),
    TableSpec("d_items", "D_ITEMS", {"itemid": B, "label": V}),
]
