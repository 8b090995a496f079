"""MIMIC-IV tables read by ehrseq (v2.x layout: hosp/ and icu/ folders)."""
from ehrseq.sources.tables import TableSpec

B, D, V, T = "BIGINT", "DOUBLE", "VARCHAR", "TIMESTAMP"

SQL_DIR = "mimic4"  # sql/mimic4/canonical.sql
# when a lab value becomes known (reported in extract.json)
LAB_RESULT_TIME = "labevents.storetime: a lab drawn before the cutoff and stored after it is pending"
# ICU charting systems of src_ingredients (rows counted per system in extract.json)
INGREDIENT_SYSTEMS = ("metavision",)

TABLES = [
    TableSpec("patients", "hosp/patients", {"subject_id": B, "gender": V, "anchor_age": D, "anchor_year": B},
              required=True),
    TableSpec("admissions", "hosp/admissions", {
        "subject_id": B, "hadm_id": B, "admittime": T, "dischtime": T, "deathtime": T,
        "admission_type": V, "insurance": V, "marital_status": V, "race": V, "hospital_expire_flag": B,
    }, required=True),
    TableSpec("icustays", "icu/icustays", {
        "subject_id": B, "hadm_id": B, "stay_id": B, "first_careunit": V, "intime": T, "outtime": T,
    }, required=True),
    TableSpec("prescriptions", "hosp/prescriptions", {
        "subject_id": B, "hadm_id": B, "starttime": T, "drug": V, "ndc": V, "prod_strength": V,
        "dose_val_rx": V, "dose_unit_rx": V, "route": V,
    }),
    TableSpec("procedureevents", "icu/procedureevents", {
        "subject_id": B, "hadm_id": B, "stay_id": B, "starttime": T, "endtime": T, "itemid": B, "value": D,
        "valueuom": V,
    }),
    TableSpec("labevents", "hosp/labevents", {
        "subject_id": B, "hadm_id": B, "itemid": B, "charttime": T, "storetime": T, "value": V, "valuenum": D,
        "valueuom": V, "flag": V,
    }),
    TableSpec("microbiologyevents", "hosp/microbiologyevents", {
        "subject_id": B, "hadm_id": B, "micro_specimen_id": B, "chartdate": T, "charttime": T,
        "spec_itemid": B, "spec_type_desc": V, "test_itemid": B, "org_itemid": B, "org_name": V,
        "storedate": T, "storetime": T,
    }),
    TableSpec("ingredientevents", "icu/ingredientevents", {
        "subject_id": B, "hadm_id": B, "stay_id": B, "starttime": T, "endtime": T, "itemid": B, "amount": D,
        "amountuom": V,
    }),
    TableSpec("diagnoses_icd", "hosp/diagnoses_icd", {
        "subject_id": B, "hadm_id": B, "seq_num": B, "icd_code": V, "icd_version": B,
    }),
    TableSpec("d_labitems", "hosp/d_labitems", {"itemid": B, "label": V}),
    TableSpec("d_items", "icu/d_items", {"itemid": B, "label": V}),
]
