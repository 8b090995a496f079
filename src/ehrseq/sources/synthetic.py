"""Synthetic MIMIC-IV-shaped tables with planted, recorded mortality risk.

`generate(out_dir, n_patients, seed)` writes `hosp/*.csv.gz` and `icu/*.csv.gz` with the
MIMIC-IV v2.2 file names and columns, so the real MIMIC-IV extraction runs on them, plus
`truth/` with what the generator knows and a real dataset never tells.

Shape
-----
Patients (subject_id 10000000+) have 1-6 admissions (hadm_id 20000000+), each with 1-3
ICU stays (stay_id 30000000+) that never overlap. Dates are shifted into 2110-2210;
`anchor_age` is the age in `anchor_year` (90 and over -> 91, as MIMIC-IV does) and the
age at a stay is `anchor_age + year(intime) - anchor_year`. ICU stays last from two hours
to weeks (about 15% shorter than 48 h). During a stay, events arrive at a per-stay rate
(log-normal, so a stay has ~30-150 events in its first 48 h and a few have 300+); fewer
per hour after the window. Labs come in panels (BMP, CBC, blood gas, ...) sharing a
specimen and charttime, plus Zipf-distributed single tests; drugs, procedures, ingredient
orders and cultures are drawn Zipf-like from catalogues with real MIMIC-IV names. Labs and
prescriptions also happen on the ward (outside any ICU stay); ~5% of lab and
microbiology rows have no hadm_id, as in MIMIC.

Each stay has latent problems that bundle codes together, so code models have structure:
sepsis (blood cultures, Vancomycin, Piperacillin-Tazobactam), shock (Norepinephrine,
high lactate), renal failure (high creatinine and potassium, Furosemide, CRRT), DKA
(Insulin, very high glucose, high potassium), cardiac injury (troponin), respiratory
failure (invasive ventilation). A sicker stay also has more deranged routine labs.
Diagnoses (ICD-9 or ICD-10 per admission) are coded at discharge from the same latents
*and from the outcome* (cardiac arrest, palliative care, DNR for many deaths): the
leakage trap real MIMIC has.

Planted signal (written to `truth/rules.json`)
----------------------------------------------
Only events in the observation window [intime, cutoff), cutoff = intime +
observation_hours, count. With age = the MIMIC-IV age at the stay:

    logit = BASE_LOGIT + sum(effect for each rule that fires)
            + AGE_EFFECT_PER_DECADE * max(0, age - 60) / 10
    true_risk = sigmoid(logit)

Rules (each fires at most once per stay; see RULES for the effect sizes):
- vasopressor: a Norepinephrine prescription (any of its NDCs) starts in the window.
- lactate_over_4: a Lactate (50813) result > 4 mmol/L in the window.
- positive_blood_culture: a BLOOD CULTURE (spec_itemid 70012) with an organism is charted
  in the window AND its result is stored (storetime, 12-120 h after the draw) before the
  cutoff. A culture whose result arrives later is only "pending" at the cutoff (the
  extraction shows it so), so it adds nothing.
- invasive_ventilation: an Invasive Ventilation (225792) procedure starts in the window
  (its duration, known only at endtime, plays no part).
- creatinine_and_potassium_abnormal: both an abnormal Creatinine (50912) and an abnormal
  Potassium (50971) in the window; either one alone adds nothing (an interaction).
- recent_troponin_abnormal: an abnormal Troponin T (51003) in the last
  TROPONIN_RECENT_HOURS before the cutoff; earlier abnormal troponins add nothing.

Outcome: a stay that lasts at least observation_hours dies with probability true_risk,
at a time after the cutoff (in the ICU, which then ends at death, or on the ward soon
after); hospital_expire_flag, deathtime, dischtime = deathtime and dod are set and the
patient has nothing after the death. A few short stays end in death too (they are
excluded from a 48 h cohort). `truth/stay_risk.csv.gz` has each stay's logit, true_risk,
eligibility and `died_after_cutoff`, which is the extraction's label: death in the same
hospitalisation after this stay's cutoff. For the earlier stay of an admission whose
*later* stay dies that label is 1 although its own draw survived, exactly as the label
means in MIMIC (a few percent of deaths). `truth/planted_events.csv.gz` lists every event
that fired a rule (both events of the interaction; only the recent troponin), with its
time exactly as in the source table; for cultures `itemid_or_ndc` is the org_itemid and
the time is the charttime (the draw), as the extracted event has it.

Deliberate defects, counted in rules.json: exact duplicate lab rows (inside cohort stays),
prescriptions whose hadm_id is not in admissions, procedureevents whose stay_id is not in
icustays. Nothing else is duplicated: events of one kind and item never share a minute.

Output is a pure function of (n_patients, seed, observation_hours): patients are made in
chunks of CHUNK_PATIENTS with one random stream per chunk, so memory stays bounded and a
smaller run is a prefix of a larger one; gzip headers carry no time stamp.
"""
from __future__ import annotations

import gzip
import json
import hashlib
import io
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from ehrseq.io import atomic_path

log = logging.getLogger(__name__)

CHUNK_PATIENTS = 2000
GZIP_LEVEL = 4  # level 6 costs ~4x the time for ~7% smaller files
MINUTE = 60
HOUR = 3600
DAY = 86400

# --------------------------------------------------------------------------------------
# Planted rules
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    name: str
    effect: float
    table: str
    description: str


BASE_LOGIT = -4.0
AGE_EFFECT_PER_DECADE = 0.3
TROPONIN_RECENT_HOURS = 12.0
LACTATE_THRESHOLD = 4.0
RULES = (
    Rule("vasopressor", 1.6, "prescriptions", "Norepinephrine prescription (any of its NDCs) started in the window"),
    Rule("lactate_over_4", 1.5, "labevents", "Lactate (itemid 50813) valuenum > 4 mmol/L in the window"),
    Rule("positive_blood_culture", 1.0, "microbiologyevents",
         "BLOOD CULTURE (spec_itemid 70012) with an organism (org_itemid set), charttime in the window and "
         "result stored (storetime) before the cutoff; a result still pending at the cutoff adds 0"),
    Rule("invasive_ventilation", 0.9, "procedureevents",
         "Invasive Ventilation (itemid 225792) started in the window (its duration is not used)"),
    Rule("creatinine_and_potassium_abnormal", 1.4, "labevents",
         "abnormal Creatinine (50912) AND abnormal Potassium (50971) both in the window; either alone adds 0"),
    Rule("recent_troponin_abnormal", 1.2, "labevents",
         "abnormal Troponin T (51003) within the last 12 h before the cutoff; earlier ones add 0"),
)
RULE_EFFECT = {r.name: r.effect for r in RULES}

# Deliberate defects (placed in the first chunk that has candidates).
DUPLICATE_LAB_ROWS = 6
ORPHAN_PRESCRIPTION_ROWS = 4
ORPHAN_PROCEDURE_ROWS = 3
ORPHAN_HADM_ID_START = 29_990_000  # far above any generated hadm_id (checked)
ORPHAN_STAY_ID_START = 39_990_000

# --------------------------------------------------------------------------------------
# Output tables: MIMIC-IV v2.2 names and column order
# --------------------------------------------------------------------------------------

TABLE_COLUMNS = {
    "hosp/patients": ["subject_id", "gender", "anchor_age", "anchor_year", "anchor_year_group", "dod"],
    "hosp/admissions": [
        "subject_id", "hadm_id", "admittime", "dischtime", "deathtime", "admission_type", "admit_provider_id",
        "admission_location", "discharge_location", "insurance", "language", "marital_status", "race",
        "edregtime", "edouttime", "hospital_expire_flag"],
    "hosp/diagnoses_icd": ["subject_id", "hadm_id", "seq_num", "icd_code", "icd_version"],
    "hosp/d_icd_diagnoses": ["icd_code", "icd_version", "long_title"],
    "hosp/prescriptions": [
        "subject_id", "hadm_id", "pharmacy_id", "poe_id", "poe_seq", "order_provider_id", "starttime", "stoptime",
        "drug_type", "drug", "formulary_drug_cd", "gsn", "ndc", "prod_strength", "form_rx", "dose_val_rx",
        "dose_unit_rx", "form_val_disp", "form_unit_disp", "doses_per_24_hrs", "route"],
    "hosp/labevents": [
        "labevent_id", "subject_id", "hadm_id", "specimen_id", "itemid", "order_provider_id", "charttime",
        "storetime", "value", "valuenum", "valueuom", "ref_range_lower", "ref_range_upper", "flag", "priority",
        "comments"],
    "hosp/d_labitems": ["itemid", "label", "fluid", "category"],
    "hosp/microbiologyevents": [
        "microevent_id", "subject_id", "hadm_id", "micro_specimen_id", "order_provider_id", "chartdate",
        "charttime", "spec_itemid", "spec_type_desc", "test_seq", "storedate", "storetime", "test_itemid",
        "test_name", "org_itemid", "org_name", "isolate_num", "quantity", "ab_itemid", "ab_name",
        "dilution_text", "dilution_comparison", "dilution_value", "interpretation", "comments"],
    "icu/icustays": ["subject_id", "hadm_id", "stay_id", "first_careunit", "last_careunit", "intime", "outtime", "los"],
    "icu/procedureevents": [
        "subject_id", "hadm_id", "stay_id", "caregiver_id", "starttime", "endtime", "storetime", "itemid", "value",
        "valueuom", "location", "locationcategory", "orderid", "linkorderid", "ordercategoryname",
        "ordercategorydescription", "patientweight", "isopenbag", "continueinnextdept", "statusdescription",
        "originalamount", "originalrate"],
    "icu/ingredientevents": [
        "subject_id", "hadm_id", "stay_id", "caregiver_id", "starttime", "endtime", "storetime", "itemid", "amount",
        "amountuom", "rate", "rateuom", "orderid", "linkorderid", "statusdescription", "originalamount",
        "originalrate"],
    "icu/d_items": [
        "itemid", "label", "abbreviation", "linksto", "category", "unitname", "param_type", "lownormalvalue",
        "highnormalvalue"],
}
TRUTH_COLUMNS = {
    "truth/stay_risk": ["subject_id", "hadm_id", "stay_id", "logit", "true_risk", "eligible", "died_after_cutoff"],
    "truth/planted_events": ["subject_id", "stay_id", "rule", "table", "itemid_or_ndc", "time"],
}

# --------------------------------------------------------------------------------------
# Catalogues (real MIMIC-IV names; filler lab items are labelled as such)
# --------------------------------------------------------------------------------------


def _table(text: str, columns: list[str], types: dict[str, type] | None = None) -> pd.DataFrame:
    rows = [line.split("|") for line in text.strip().splitlines()]
    df = pd.DataFrame(rows, columns=columns).replace({"": None})
    for col, kind in (types or {}).items():
        df[col] = df[col].astype(float).astype(kind) if kind is int else df[col].astype(float)
    return df


# itemid|label|fluid|category|unit|ref_lo|ref_hi|mean|sd|min|max|decimals|direction
# `direction`: which way the value moves in a sicker patient (severity shifts it).
_LAB_TEXT = """
50912|Creatinine|Blood|Chemistry|mg/dL|0.5|1.2|0.9|0.25|0.2|15|1|1
50971|Potassium|Blood|Chemistry|mEq/L|3.3|5.1|4.1|0.4|2|8|1|1
50983|Sodium|Blood|Chemistry|mEq/L|133|145|139|3|115|165|0|-1
50902|Chloride|Blood|Chemistry|mEq/L|96|108|102|3.5|80|125|0|1
50882|Bicarbonate|Blood|Chemistry|mEq/L|22|32|25|3|8|45|0|-1
51006|Urea Nitrogen|Blood|Chemistry|mg/dL|6|20|17|6|3|150|0|1
50931|Glucose|Blood|Chemistry|mg/dL|70|100|118|28|35|900|0|1
50868|Anion Gap|Blood|Chemistry|mEq/L|8|20|13|3|3|40|0|1
50893|Calcium, Total|Blood|Chemistry|mg/dL|8.4|10.3|8.9|0.6|5|14|1|-1
50960|Magnesium|Blood|Chemistry|mg/dL|1.6|2.6|2.0|0.25|0.8|4.5|1|-1
50970|Phosphate|Blood|Chemistry|mg/dL|2.7|4.5|3.5|0.8|0.8|12|1|1
50885|Bilirubin, Total|Blood|Chemistry|mg/dL|0|1.5|0.8|0.4|0.1|30|1|1
50861|Alanine Aminotransferase (ALT)|Blood|Chemistry|IU/L|0|40|28|14|3|3000|0|1
50878|Asparate Aminotransferase (AST)|Blood|Chemistry|IU/L|0|40|30|15|5|4000|0|1
50863|Alkaline Phosphatase|Blood|Chemistry|IU/L|35|105|80|25|15|1200|0|1
50862|Albumin|Blood|Chemistry|g/dL|3.5|5.2|3.6|0.5|1|5.5|1|-1
50954|Lactate Dehydrogenase (LD)|Blood|Chemistry|IU/L|94|250|220|70|80|3000|0|1
50956|Lipase|Blood|Chemistry|IU/L|0|60|35|20|3|3000|0|1
51003|Troponin T|Blood|Chemistry|ng/mL|0|0.01|0.02|0.02|0.01|25|2|1
50911|Creatine Kinase, MB Isoenzyme|Blood|Chemistry|ng/mL|0|10|4|3|1|300|0|1
50910|Creatine Kinase (CK)|Blood|Chemistry|IU/L|0|200|130|70|10|20000|0|1
50976|Protein, Total|Blood|Chemistry|g/dL|6.4|8.3|6.6|0.7|3|10|1|-1
50889|C-Reactive Protein|Blood|Chemistry|mg/L|0|5|30|25|0.3|300|1|1
50924|Ferritin|Blood|Chemistry|ng/mL|13|150|300|250|5|20000|0|1
50852|% Hemoglobin A1c|Blood|Chemistry|%|4|6|6.2|1.2|4|15|1|1
50993|Thyroid Stimulating Hormone|Blood|Chemistry|uIU/mL|0.27|4.2|2|1.2|0.01|50|2|1
51000|Triglycerides|Blood|Chemistry|mg/dL|0|150|130|60|20|2000|0|1
50907|Cholesterol, Total|Blood|Chemistry|mg/dL|0|199|160|40|50|400|0|-1
50867|Amylase|Blood|Chemistry|IU/L|0|100|60|30|5|3000|0|1
50813|Lactate|Blood|Blood Gas|mmol/L|0.5|2|1.4|0.5|0.3|25|1|1
50820|pH|Blood|Blood Gas|units|7.35|7.45|7.39|0.05|6.8|7.7|2|-1
50818|pCO2|Blood|Blood Gas|mm Hg|35|45|41|6|15|120|0|1
50821|pO2|Blood|Blood Gas|mm Hg|85|105|110|45|25|600|0|-1
50802|Base Excess|Blood|Blood Gas|mEq/L|-2|3|0|3.5|-30|20|0|-1
50804|Calculated Total CO2|Blood|Blood Gas|mEq/L|21|30|25|3.5|5|50|0|-1
50809|Glucose|Blood|Blood Gas|mg/dL|70|105|125|30|35|900|0|1
50822|Potassium, Whole Blood|Blood|Blood Gas|mEq/L|3.5|5.3|4.1|0.45|1.5|8|1|1
50824|Sodium, Whole Blood|Blood|Blood Gas|mEq/L|136|145|138|3.5|110|170|0|-1
50808|Free Calcium|Blood|Blood Gas|mmol/L|1.12|1.32|1.14|0.08|0.6|1.6|2|-1
50817|Oxygen Saturation|Blood|Blood Gas|%|95|100|96|3|50|100|0|-1
51301|White Blood Cells|Blood|Hematology|K/uL|4|11|9.5|3.5|0.1|80|1|1
51222|Hemoglobin|Blood|Hematology|g/dL|13.7|17.5|10.5|2|4|20|1|-1
51221|Hematocrit|Blood|Hematology|%|40|51|31.5|6|12|60|1|-1
51265|Platelet Count|Blood|Hematology|K/uL|150|400|210|80|5|900|0|-1
51279|Red Blood Cells|Blood|Hematology|m/uL|4.6|6.1|3.5|0.7|1.2|7|2|-1
51250|MCV|Blood|Hematology|fL|82|98|91|5|60|130|0|1
51248|MCH|Blood|Hematology|pg|26|32|30|2|18|40|1|1
51249|MCHC|Blood|Hematology|g/dL|31|37|33|1.3|26|40|1|-1
51277|RDW|Blood|Hematology|%|10.5|15.5|14.8|1.8|10|30|1|1
51256|Neutrophils|Blood|Hematology|%|34|71|75|10|10|98|1|1
51244|Lymphocytes|Blood|Hematology|%|19|53|14|8|0.5|80|1|-1
51254|Monocytes|Blood|Hematology|%|5|13|6.5|2.5|0.2|30|1|1
51200|Eosinophils|Blood|Hematology|%|1|7|1.2|1.2|0|20|1|-1
51146|Basophils|Blood|Hematology|%|0|2|0.3|0.25|0|3|1|1
51237|INR(PT)|Blood|Hematology||0.9|1.1|1.3|0.3|0.8|8|1|1
51274|PT|Blood|Hematology|sec|9.4|12.5|14|3|9|80|1|1
51275|PTT|Blood|Hematology|sec|25|36.5|33|9|18|150|1|1
51214|Fibrinogen, Functional|Blood|Hematology|mg/dL|200|393|380|130|50|1000|0|1
51196|D-Dimer|Blood|Hematology|ng/mL|0|500|1200|1000|100|20000|0|1
51491|pH|Urine|Hematology|units|5|8|6|0.8|4.5|9|1|1
51498|Specific Gravity|Urine|Hematology||1.001|1.035|1.015|0.007|1.001|1.05|3|1
51082|Creatinine, Urine|Urine|Chemistry|mg/dL|||80|45|5|400|0|1
51100|Sodium, Urine|Urine|Chemistry|mEq/L|||60|35|10|250|0|-1
51516|WBC|Urine|Hematology|#/hpf|0|5|8|12|0|180|0|1
51493|RBC|Urine|Hematology|#/hpf|0|2|5|10|0|180|0|1
"""
_LAB_COLUMNS = ["itemid", "label", "fluid", "category", "unit", "ref_lo", "ref_hi", "mean", "sd", "min", "max",
                "decimals", "direction"]
_FILLER_LABS = 140  # rare tests that give the lab vocabulary its long tail
_FILLER_UNITS = ("mg/dL", "ng/mL", "IU/L", "%", "mmol/L", "U/L", "ug/dL", "pg/mL", "mg/L", "nmol/L")


def _stable_uniform(key: str) -> float:
    """A number in [0, 1) fixed by `key`: catalogue details must not depend on the seed."""
    return int(hashlib.sha256(key.encode()).hexdigest()[:12], 16) / 16**12


def _lab_catalogue() -> pd.DataFrame:
    real = _table(_LAB_TEXT, _LAB_COLUMNS, {"itemid": int, "ref_lo": float, "ref_hi": float, "mean": float,
                                            "sd": float, "min": float, "max": float, "decimals": int,
                                            "direction": int})
    filler = []
    for i in range(_FILLER_LABS):
        mean = 10 ** (3 * _stable_uniform(f"lab-mean-{i}") - 1)
        filler.append({
            "itemid": 52100 + i, "label": f"Reference Laboratory Assay {i + 1:03d}", "fluid": "Blood",
            "category": "Chemistry", "unit": _FILLER_UNITS[i % len(_FILLER_UNITS)],
            "ref_lo": round(mean * 0.5, 2), "ref_hi": round(mean * 1.5, 2), "mean": mean, "sd": mean * 0.22,
            "min": mean * 0.05, "max": mean * 20, "decimals": 2, "direction": 1 if i % 3 else -1,
        })
    labs = pd.concat([real, pd.DataFrame(filler)], ignore_index=True)
    return labs


LABS = _lab_catalogue()
LAB_INDEX = {int(itemid): i for i, itemid in enumerate(LABS["itemid"])}
CREATININE, POTASSIUM, LACTATE, TROPONIN_T, GLUCOSE = 50912, 50971, 50813, 51003, 50931

# Panels share one specimen and charttime. Probabilities per draw are set in _lab_draws.
PANELS = {
    "bmp": [50983, 50971, 50902, 50882, 51006, 50912, 50931, 50868],
    "cbc": [51301, 51222, 51221, 51265, 51279, 51250, 51248, 51249, 51277],
    "blood_gas": [50820, 50818, 50821, 50802, 50804, 50813, 50809, 50822, 50808],
    "coag": [51237, 51274, 51275],
    "lft": [50861, 50878, 50863, 50885, 50862],
    "mg_phos_ca": [50960, 50970, 50893],
    "cardiac": [51003, 50911, 50910],
    "differential": [51256, 51244, 51254, 51200, 51146],
    "urinalysis": [51491, 51498, 51516, 51493],
}
_IN_PANEL = {item for items in PANELS.values() for item in items}
# Single tests: the rest of the catalogue, most frequent first (Zipf over this order).
SINGLE_LABS = np.array([LAB_INDEX[i] for i in LABS["itemid"] if i not in _IN_PANEL])

# drug|route|prod_strength|dose_lo|dose_hi|dose_unit|form_unit|ndc_variants|drug_type
_DRUG_TEXT = """
Norepinephrine|IV DRIP|4mg/250mL Premix|0.03|0.3|mcg/kg/min|BAG|3|MAIN
Vancomycin|IV|1g Vial|750|1500|mg|VIAL|3|MAIN
Piperacillin-Tazobactam|IV|4.5 g Frozen Bag|4.5|4.5|g|BAG|2|MAIN
Insulin|SC|100 Units / mL - 10 mL Vial|2|20|UNIT|VIAL|2|MAIN
Furosemide|IV|20mg/2mL Vial|20|80|mg|VIAL|3|MAIN
Sodium Chloride 0.9%  Flush|IV|10 mL Syringe|3|10|mL|SYR|1|BASE
Heparin|SC|5000 Units / mL- 1mL Vial|5000|5000|UNIT|VIAL|3|MAIN
Acetaminophen|PO/NG|325mg Tablet|325|1000|mg|TAB|3|MAIN
Docusate Sodium|PO|100mg Capsule|100|100|mg|CAP|2|MAIN
Senna|PO|8.6 mg Tablet|8.6|17.2|mg|TAB|2|MAIN
Pantoprazole|IV|40mg Vial|40|40|mg|VIAL|2|MAIN
Potassium Chloride|PO|20mEq Packet|20|40|mEq|PKT|3|MAIN
Magnesium Sulfate|IV|2 g / 50 mL Premix Bag|2|4|gm|BAG|2|MAIN
Ondansetron|IV|2mg/mL-2mL|4|4|mg|VIAL|2|MAIN
Metoprolol Tartrate|PO/NG|25mg Tablet|12.5|50|mg|TAB|3|MAIN
Polyethylene Glycol|PO/NG|17g Powder Packet|17|17|g|PKT|1|MAIN
Bisacodyl|PR|10mg Suppository|10|10|mg|SUPP|1|MAIN
Famotidine|IV|20 mg / 2 mL Vial|20|20|mg|VIAL|2|MAIN
Atorvastatin|PO/NG|40mg Tablet|10|80|mg|TAB|2|MAIN
Aspirin|PO/NG|81 mg Chewable Tablet|81|325|mg|TAB|2|MAIN
Lorazepam|IV|2mg/mL Vial|0.5|2|mg|VIAL|2|MAIN
Fentanyl Citrate|IV|100mcg/2mL Ampul|25|100|mcg|AMP|2|MAIN
Propofol|IV DRIP|1000 mg / 100 mL Vial|10|50|mcg/kg/min|VIAL|2|MAIN
Midazolam|IV|2 mg / 2 mL Vial|1|2|mg|VIAL|2|MAIN
Dexmedetomidine|IV DRIP|400mcg / 100mL Premix|0.2|1.2|mcg/kg/hr|BAG|1|MAIN
CeftriaXONE|IV|1 gm Vial|1|2|g|VIAL|2|MAIN
Cefepime|IV|2 g Vial|1|2|g|VIAL|2|MAIN
Meropenem|IV|1 g Vial|0.5|1|g|VIAL|2|MAIN
MetRONIDAZOLE (FLagyl)|IV|500 mg / 100 mL Premix|500|500|mg|BAG|1|MAIN
Levofloxacin|IV|750 mg / 150 mL Premix|500|750|mg|BAG|2|MAIN
Azithromycin|IV|500 mg Vial|500|500|mg|VIAL|1|MAIN
OxyCODONE (Immediate Release)|PO/NG|5mg Tablet|5|10|mg|TAB|2|MAIN
HYDROmorphone (Dilaudid)|IV|1mg/mL Syringe|0.25|1|mg|SYR|2|MAIN
Morphine Sulfate|IV|2mg/mL Syringe|2|4|mg|SYR|2|MAIN
Albuterol 0.083% Neb Soln|IH|2.5mg/3mL Neb|1|2|NEB|NEB|2|MAIN
Ipratropium Bromide Neb|IH|0.5mg/2.5mL Neb|1|1|NEB|NEB|1|MAIN
Calcium Gluconate|IV|1 g / 50 mL Premix|1|2|gm|BAG|2|MAIN
Sodium Bicarbonate|IV|50 mEq / 50 mL Syringe|50|100|mEq|SYR|1|MAIN
Dextrose 50%|IV|25 g / 50 mL Syringe|12.5|25|gm|SYR|1|MAIN
Phenylephrine|IV DRIP|50 mg / 250 mL Premix|0.5|3|mcg/kg/min|BAG|2|MAIN
Vasopressin|IV DRIP|20 units / 100 mL Premix|0.03|0.04|units/min|BAG|1|MAIN
EPINEPHrine|IV DRIP|1mg/10mL Syringe|0.02|0.2|mcg/kg/min|SYR|2|MAIN
Amiodarone|IV|150mg/3mL Vial|150|150|mg|VIAL|2|MAIN
Labetalol|IV|5 mg/mL Vial|10|20|mg|VIAL|1|MAIN
HydrALAZINE|IV|20 mg / 1 mL Vial|10|20|mg|VIAL|1|MAIN
Lisinopril|PO/NG|10 mg Tablet|5|40|mg|TAB|2|MAIN
amLODIPine|PO/NG|5 mg Tablet|5|10|mg|TAB|2|MAIN
Enoxaparin Sodium|SC|40 mg / 0.4 mL Syringe|40|80|mg|SYR|2|MAIN
Warfarin|PO/NG|5 mg Tablet|1|7.5|mg|TAB|2|MAIN
LevETIRAcetam|IV|500 mg / 100 mL Premix|500|1500|mg|BAG|2|MAIN
Haloperidol|IV|5mg/mL Vial|0.5|5|mg|VIAL|1|MAIN
QUEtiapine Fumarate|PO/NG|25 mg Tablet|12.5|50|mg|TAB|2|MAIN
Thiamine|PO/NG|100 mg Tablet|100|100|mg|TAB|1|MAIN
FoLIC Acid|PO/NG|1 mg Tablet|1|1|mg|TAB|1|MAIN
Multivitamins|PO/NG|1 Tablet|1|1|TAB|TAB|1|MAIN
Nicotine Patch|TD|14 mg/day Patch|14|21|mg|PTCH|1|MAIN
Lactulose|PO/NG|30 mL Unit Dose Cup|30|30|mL|UDCUP|1|MAIN
Rifaximin|PO/NG|550 mg Tablet|550|550|mg|TAB|1|MAIN
Hydrocortisone Na Succ.|IV|100 mg Vial|50|100|mg|VIAL|1|MAIN
MethylPREDNISolone Sodium Succ|IV|125 mg Vial|40|125|mg|VIAL|1|MAIN
PredniSONE|PO/NG|10 mg Tablet|5|60|mg|TAB|2|MAIN
Glucagon|IM|1 mg Kit|1|1|mg|KIT|1|MAIN
Lidocaine 5% Patch|TD|1 Patch|1|3|PTCH|PTCH|1|MAIN
Gabapentin|PO/NG|300 mg Capsule|100|600|mg|CAP|2|MAIN
Sertraline|PO/NG|50 mg Tablet|25|100|mg|TAB|1|MAIN
Levothyroxine Sodium|PO/NG|50 mcg Tablet|25|150|mcg|TAB|2|MAIN
Tamsulosin|PO|0.4 mg Capsule|0.4|0.8|mg|CAP|1|MAIN
Clopidogrel|PO/NG|75 mg Tablet|75|75|mg|TAB|1|MAIN
Sucralfate|PO/NG|1 gm Tablet|1|1|gm|TAB|1|MAIN
Glargine|SC|100 Units / mL - 10 mL Vial|10|40|UNIT|VIAL|1|MAIN
Dextrose 5%|IV|1000 mL Bag|1000|1000|mL|BAG|2|BASE
Lactated Ringers|IV|1000 mL Bag|500|1000|mL|BAG|2|BASE
Sodium Chloride 0.9%|IV|1000 mL Bag|250|1000|mL|BAG|2|BASE
Chlorhexidine Gluconate 0.12% Oral Rinse|ORAL|15 mL Unit Dose Cup|15|15|mL|UDCUP|1|MAIN
Artificial Tears|BOTH EYES|15 mL Bottle|1|2|DROP|BTL|1|MAIN
"""
_DRUG_COLUMNS = ["drug", "route", "prod_strength", "dose_lo", "dose_hi", "dose_unit", "form_unit", "ndc_variants",
                 "drug_type"]
# Labelers of real NDC prefixes (Hospira, Baxter, Fresenius, ...). Product and package
# digits are synthetic: a stable hash of the drug and variant.
_NDC_LABELERS = ("00409", "00338", "63323", "00904", "51079", "00121", "00054", "00182", "68084", "00641")


def _drug_catalogue() -> tuple[pd.DataFrame, pd.DataFrame]:
    drugs = _table(_DRUG_TEXT, _DRUG_COLUMNS, {"dose_lo": float, "dose_hi": float, "ndc_variants": int})
    ndcs = []
    for d, row in drugs.iterrows():
        for v in range(row["ndc_variants"]):
            key = f"{row['drug']}|{v}"
            digits = int(hashlib.sha256(key.encode()).hexdigest(), 16)
            ndcs.append({
                "drug_index": d,
                "ndc": _NDC_LABELERS[digits % len(_NDC_LABELERS)] + f"{digits // 10 % 10**6:06d}",
                "gsn": f"{digits // 10**7 % 10**6:06d}",
                "formulary_drug_cd": "".join(ch for ch in row["drug"].upper() if ch.isalpha())[:4] + str(v + 1),
            })
    return drugs, pd.DataFrame(ndcs)


DRUGS, DRUG_NDCS = _drug_catalogue()
DRUG_INDEX = {name: i for i, name in enumerate(DRUGS["drug"])}
NOREPINEPHRINE = DRUG_INDEX["Norepinephrine"]
# Background drugs: every drug except the planted vasopressor, Zipf over catalogue order.
BACKGROUND_DRUGS = np.array([i for i in range(len(DRUGS)) if i != NOREPINEPHRINE])

# itemid|label|abbreviation|category|ordercategoryname|kind   (kind: duration in minutes or a one-off task)
_PROCEDURE_TEXT = """
225792|Invasive Ventilation|Invasive Ventilation|2-Ventilation|Ventilation|duration
225794|Non-invasive Ventilation|Non-invasive Ventilation|2-Ventilation|Ventilation|duration
224385|Intubation|Intubation|Intubation/Extubation|Procedures|task
227194|Extubation|Extubation|Intubation/Extubation|Procedures|task
225802|Dialysis - CRRT|CRRT|Dialysis|Dialysis|duration
225441|Hemodialysis|Hemodialysis|Dialysis|Dialysis|duration
225805|Peritoneal Dialysis|Peritoneal Dialysis|Dialysis|Dialysis|duration
225436|CRRT Filter Change|CRRT Filter Change|Dialysis|Dialysis|task
224270|Dialysis Catheter|Dialysis Catheter|Access Lines - Invasive|Invasive Lines|duration
225752|Arterial Line|Arterial Line|Access Lines - Invasive|Invasive Lines|duration
224263|Multi Lumen|Multi Lumen|Access Lines - Invasive|Invasive Lines|duration
224264|PICC Line|PICC Line|Access Lines - Invasive|Invasive Lines|duration
224560|PA Catheter|PA Catheter|Access Lines - Invasive|Invasive Lines|duration
224267|Cordis/Introducer|Cordis/Introducer|Access Lines - Invasive|Invasive Lines|duration
225204|Midline|Midline|Access Lines - Invasive|Invasive Lines|duration
224277|18 Gauge|18 Gauge|Access Lines - Peripheral|Peripheral Lines|duration
224275|20 Gauge|20 Gauge|Access Lines - Peripheral|Peripheral Lines|duration
224274|22 Gauge|22 Gauge|Access Lines - Peripheral|Peripheral Lines|duration
224276|16 Gauge|16 Gauge|Access Lines - Peripheral|Peripheral Lines|duration
229351|Foley Catheter|Foley Catheter|Procedures|Procedures|duration
225459|Chest X-Ray|Chest X-Ray|Imaging|Imaging|task
229581|Portable Chest X-Ray|Portable Chest X-Ray|Imaging|Imaging|task
221214|CT scan|CT scan|Imaging|Imaging|task
221216|X-ray|X-ray|Imaging|Imaging|task
221217|Ultrasound|Ultrasound|Imaging|Imaging|task
223253|Magnetic Resonance Imaging|MRI|Imaging|Imaging|task
225432|Transthoracic Echo|TTE|Imaging|Imaging|task
225457|Abdominal X-Ray|Abdominal X-Ray|Imaging|Imaging|task
225402|EKG|EKG|Procedures|Procedures|task
225401|Blood Cultured|Blood Cultured|Procedures|Procedures|task
225454|Urine Culture|Urine Culture|Procedures|Procedures|task
225451|Sputum Culture|Sputum Culture|Procedures|Procedures|task
225444|Pan Culture|Pan Culture|Procedures|Procedures|task
225966|Nasal Swab|Nasal Swab|Procedures|Procedures|task
225400|Bronchoscopy|Bronchoscopy|Procedures|Procedures|task
225433|Chest Tube Placed|Chest Tube Placed|Procedures|Procedures|task
227712|Chest Tube Removed|Chest Tube Removed|Procedures|Procedures|task
225445|Paracentesis|Paracentesis|Procedures|Procedures|task
225479|Thoracentesis|Thoracentesis|Procedures|Procedures|task
225399|Lumbar Puncture|Lumbar Puncture|Procedures|Procedures|task
225448|Percutaneous Tracheostomy|Percutaneous Tracheostomy|Procedures|Procedures|task
225464|Cardioversion/Defibrillation|Cardioversion/Defibrillation|Procedures|Procedures|task
225469|OR Received|OR Received|Communication|Communication|task
225470|OR Sent|OR Sent|Communication|Communication|task
228128|Family updated by MD|Family updated by MD|Communication|Communication|task
228129|Family updated by RN|Family updated by RN|Communication|Communication|task
228125|Family meeting held|Family meeting held|Communication|Communication|task
225430|Cardiac Cath|Cardiac Cath|Procedures|Procedures|task
225427|Angiography|Angiography|Imaging|Imaging|task
225439|Endoscopy|Endoscopy|Procedures|Procedures|task
225462|Interventional Radiology|Interventional Radiology|Procedures|Procedures|task
225446|PEG Insertion|PEG Insertion|Procedures|Procedures|task
221223|EEG|EEG|Procedures|Procedures|task
229298|Speech and Swallow Evaluation|Speech and Swallow Evaluation|Procedures|Procedures|task
"""
PROCEDURES = _table(_PROCEDURE_TEXT, ["itemid", "label", "abbreviation", "category", "ordercategoryname", "kind"],
                    {"itemid": int})
PROC_INDEX = {int(i): k for k, i in enumerate(PROCEDURES["itemid"])}
INVASIVE_VENTILATION, INTUBATION, EXTUBATION, CRRT, DIALYSIS_CATHETER, ARTERIAL_LINE = (
    225792, 224385, 227194, 225802, 224270, 225752)
# Background procedures exclude the planted and bundle-driven ones (placed by latents).
BACKGROUND_PROCEDURES = np.array([k for k, i in enumerate(PROCEDURES["itemid"])
                                  if i not in (INVASIVE_VENTILATION, INTUBATION, EXTUBATION, CRRT, DIALYSIS_CATHETER)])
_LINE_SITES = ("Right Radial", "Left Radial", "Right IJ", "Left Subclavian", "Right Antecubital", "Left Forearm")

# Ingredient items (icu/ingredientevents) and the orders that contain them.
_INGREDIENT_TEXT = """
220490|Free Water|mL
226509|Calories|kcal
220454|Protein|grams
220455|Fat|grams
220363|Dextrose|grams
220456|Sodium|mEq
220457|Chloride|mEq
220458|Potassium|mEq
220459|Calcium|mEq
220460|Magnesium|mEq
220461|Phosphate|mmol
220462|Acetate|mEq
"""
INGREDIENTS = _table(_INGREDIENT_TEXT, ["itemid", "label", "unit"], {"itemid": int})
_ING = {label: k for k, label in enumerate(INGREDIENTS["label"])}
# order name -> (probability, volume range mL, continuous?, [(ingredient, amount per mL)])
ORDER_RECIPES = {
    "NaCl 0.9%": (0.30, (100, 1000), True, [("Free Water", 1.0), ("Sodium", 0.154), ("Chloride", 0.154)]),
    "Dextrose 5%": (0.18, (50, 500), True, [("Free Water", 1.0), ("Dextrose", 0.05), ("Calories", 0.17)]),
    "Lactated Ringers": (0.12, (250, 1000), True, [("Free Water", 1.0), ("Sodium", 0.13), ("Chloride", 0.109),
                                                   ("Potassium", 0.004), ("Calcium", 0.0027), ("Acetate", 0.028)]),
    "Tube feeding": (0.14, (200, 1500), True, [("Free Water", 0.85), ("Calories", 1.2), ("Protein", 0.055),
                                               ("Fat", 0.039)]),
    "Potassium replacement": (0.10, (50, 100), False, [("Free Water", 1.0), ("Potassium", 0.4), ("Chloride", 0.4)]),
    "Magnesium replacement": (0.08, (50, 100), False, [("Free Water", 1.0), ("Magnesium", 0.32)]),
    "Parenteral nutrition": (0.05, (800, 2000), True, [("Free Water", 0.7), ("Calories", 1.0), ("Protein", 0.05),
                                                       ("Dextrose", 0.15), ("Fat", 0.02), ("Phosphate", 0.01)]),
    "Free water flush": (0.03, (30, 250), False, [("Free Water", 1.0)]),
}

# spec_itemid|spec_type_desc|test_itemid|test_name|share_of_background|positive_rate
_SPECIMEN_TEXT = """
70012|BLOOD CULTURE|90201|Blood Culture, Routine|0.30|0.05
70079|URINE|90039|URINE CULTURE|0.30|0.22
70070|SPUTUM|90043|RESPIRATORY CULTURE|0.15|0.30
70091|MRSA SCREEN|90035|MRSA SCREEN|0.15|0.08
70067|STOOL|90267|C. difficile PCR|0.07|0.10
70076|SWAB|90127|WOUND CULTURE|0.03|0.40
"""
SPECIMENS = _table(_SPECIMEN_TEXT, ["spec_itemid", "spec_type_desc", "test_itemid", "test_name", "share",
                                    "positive_rate"], {"spec_itemid": int, "test_itemid": int, "share": float,
                                                       "positive_rate": float})
BLOOD_CULTURE = 0  # row of SPECIMENS
_ORGANISM_TEXT = """
80002|ESCHERICHIA COLI
80023|STAPH AUREUS COAG +
80004|KLEBSIELLA PNEUMONIAE
80026|PSEUDOMONAS AERUGINOSA
80053|ENTEROCOCCUS SP.
80155|STAPHYLOCOCCUS, COAGULASE NEGATIVE
80007|ENTEROBACTER CLOACAE COMPLEX
80005|PROTEUS MIRABILIS
80052|ENTEROCOCCUS FAECIUM
80293|YEAST
80003|SERRATIA MARCESCENS
80010|KLEBSIELLA OXYTOCA
"""
ORGANISMS = _table(_ORGANISM_TEXT, ["org_itemid", "org_name"], {"org_itemid": int})
YEAST = int(np.flatnonzero(ORGANISMS["org_name"] == "YEAST")[0])
_ANTIBIOTIC_TEXT = """
90004|AMPICILLIN
90005|CEFAZOLIN
90006|CEFTRIAXONE
90007|CEFEPIME
90010|CIPROFLOXACIN
90012|GENTAMICIN
90013|MEROPENEM
90015|PIPERACILLIN/TAZO
90016|TOBRAMYCIN
90017|TRIMETHOPRIM/SULFA
90019|VANCOMYCIN
90025|OXACILLIN
90026|NITROFURANTOIN
90028|LEVOFLOXACIN
"""
ANTIBIOTICS = _table(_ANTIBIOTIC_TEXT, ["ab_itemid", "ab_name"], {"ab_itemid": int})
_DILUTIONS = np.array([0.25, 0.5, 1, 2, 4, 8, 16, 32, 64])

# Diagnoses: icd10|title10|icd9|title9. Bundle and outcome codes first, then background
# (Zipf over the background order).
_DIAGNOSIS_TEXT = """
A419|Sepsis, unspecified organism|0389|Unspecified septicemia
R6520|Severe sepsis without septic shock|99592|Severe sepsis
R6521|Severe sepsis with septic shock|78552|Septic shock
E1010|Type 1 diabetes mellitus with ketoacidosis without coma|25013|Diabetes with ketoacidosis, type I [juvenile type], uncontrolled
N179|Acute kidney failure, unspecified|5849|Acute kidney failure, unspecified
E875|Hyperkalemia|2767|Hyperpotassemia
J9600|Acute respiratory failure, unspecified whether with hypoxia or hypercapnia|51881|Acute respiratory failure
I214|Non-ST elevation (NSTEMI) myocardial infarction|41071|Subendocardial infarction, initial episode of care
E872|Acidosis|2762|Acidosis
I469|Cardiac arrest, cause unspecified|4275|Cardiac arrest
Z515|Encounter for palliative care|V667|Encounter for palliative care
Z66|Do not resuscitate|V4986|Do not resuscitate status
I10|Essential (primary) hypertension|4019|Unspecified essential hypertension
E785|Hyperlipidemia, unspecified|2724|Other and unspecified hyperlipidemia
E119|Type 2 diabetes mellitus without complications|25000|Diabetes mellitus without mention of complication, type II or unspecified type, not stated as uncontrolled
K219|Gastro-esophageal reflux disease without esophagitis|53081|Esophageal reflux
I2510|Atherosclerotic heart disease of native coronary artery without angina pectoris|41401|Coronary atherosclerosis of native coronary artery
I4891|Unspecified atrial fibrillation|42731|Atrial fibrillation
F329|Major depressive disorder, single episode, unspecified|311|Depressive disorder, not elsewhere classified
E039|Hypothyroidism, unspecified|2449|Unspecified acquired hypothyroidism
Z87891|Personal history of nicotine dependence|V1582|Personal history of tobacco use
Z7901|Long term (current) use of anticoagulants|V5861|Long-term (current) use of anticoagulants
F419|Anxiety disorder, unspecified|30000|Anxiety state, unspecified
I509|Heart failure, unspecified|4280|Congestive heart failure, unspecified
J449|Chronic obstructive pulmonary disease, unspecified|496|Chronic airway obstruction, not elsewhere classified
E871|Hypo-osmolality and hyponatremia|2761|Hyposmolality and/or hyponatremia
D649|Anemia, unspecified|2859|Anemia, unspecified
N390|Urinary tract infection, site not specified|5990|Urinary tract infection, site not specified
G4733|Obstructive sleep apnea (adult) (pediatric)|32723|Obstructive sleep apnea (adult)(pediatric)
N189|Chronic kidney disease, unspecified|5859|Chronic kidney disease, unspecified
J189|Pneumonia, unspecified organism|486|Pneumonia, organism unspecified
E876|Hypokalemia|2768|Hypopotassemia
D62|Acute posthemorrhagic anemia|2851|Acute posthemorrhagic anemia
D696|Thrombocytopenia, unspecified|2875|Thrombocytopenia, unspecified
Z794|Long term (current) use of insulin|V5867|Long-term (current) use of insulin
I129|Hypertensive chronic kidney disease with stage 1 through stage 4 chronic kidney disease, or unspecified chronic kidney disease|40390|Hypertensive chronic kidney disease, unspecified, with chronic kidney disease stage I through stage IV, or unspecified
E1122|Type 2 diabetes mellitus with diabetic chronic kidney disease|25040|Diabetes with renal manifestations, type II or unspecified type, not stated as uncontrolled
Z7902|Long term (current) use of antithrombotics/antiplatelets|V5866|Long-term (current) use of aspirin
I110|Hypertensive heart disease with heart failure|40291|Unspecified hypertensive heart disease with heart failure
I5033|Acute on chronic diastolic (congestive) heart failure|42833|Acute on chronic diastolic heart failure
I5023|Acute on chronic systolic (congestive) heart failure|42823|Acute on chronic systolic heart failure
E669|Obesity, unspecified|27800|Obesity, unspecified
E6601|Morbid (severe) obesity due to excess calories|27801|Morbid obesity
G9341|Metabolic encephalopathy|34831|Metabolic encephalopathy
N170|Acute kidney failure with tubular necrosis|5845|Acute kidney failure with lesion of tubular necrosis
K5900|Constipation, unspecified|56400|Constipation, unspecified
M109|Gout, unspecified|2749|Gout, unspecified
E860|Dehydration|27651|Dehydration
I252|Old myocardial infarction|412|Old myocardial infarction
Z951|Presence of aortocoronary bypass graft|V4581|Aortocoronary bypass status
Z955|Presence of coronary angioplasty implant and graft|V4582|Percutaneous transluminal coronary angioplasty status
G4700|Insomnia, unspecified|78052|Insomnia, unspecified
F1020|Alcohol dependence, uncomplicated|30390|Other and unspecified alcohol dependence, unspecified
K7030|Alcoholic cirrhosis of liver without ascites|5712|Alcoholic cirrhosis of liver
I959|Hypotension, unspecified|4589|Hypotension, unspecified
R0902|Hypoxemia|79902|Hypoxemia
J690|Pneumonitis due to inhalation of food and vomit|5070|Pneumonitis due to inhalation of food or vomitus
J90|Pleural effusion, not elsewhere classified|5119|Unspecified pleural effusion
J9811|Atelectasis|5180|Pulmonary collapse
R7881|Bacteremia|7907|Bacteremia
E43|Unspecified severe protein-calorie malnutrition|262|Other severe protein-calorie malnutrition
R4182|Altered mental status, unspecified|78097|Altered mental status
I639|Cerebral infarction, unspecified|43491|Cerebral artery occlusion, unspecified with cerebral infarction
I619|Nontraumatic intracerebral hemorrhage, unspecified|431|Intracerebral hemorrhage
K922|Gastrointestinal hemorrhage, unspecified|5789|Hemorrhage of gastrointestinal tract, unspecified
K8590|Acute pancreatitis without necrosis or infection, unspecified|5770|Acute pancreatitis
K5660|Unspecified intestinal obstruction|5609|Unspecified intestinal obstruction
C3490|Malignant neoplasm of unspecified part of unspecified bronchus or lung|1629|Malignant neoplasm of bronchus and lung, unspecified
C787|Secondary malignant neoplasm of liver and intrahepatic bile duct|1977|Malignant neoplasm of liver, secondary
D509|Iron deficiency anemia, unspecified|2809|Iron deficiency anemia, unspecified
I350|Nonrheumatic aortic (valve) stenosis|4241|Aortic valve disorders
I2699|Other pulmonary embolism without acute cor pulmonale|41519|Other pulmonary embolism and infarction
R570|Cardiogenic shock|78551|Cardiogenic shock
Z992|Dependence on renal dialysis|V4511|Renal dialysis status
R569|Unspecified convulsions|78039|Other convulsions
G40909|Epilepsy, unspecified, not intractable, without status epilepticus|34590|Epilepsy, unspecified, without mention of intractable epilepsy
Z950|Presence of cardiac pacemaker|V4501|Cardiac pacemaker in situ
N400|Benign prostatic hyperplasia without lower urinary tract symptoms|60000|Hypertrophy (benign) of prostate without urinary obstruction and other lower urinary tract symptoms (LUTS)
E873|Alkalosis|2763|Alkalosis
D689|Coagulation defect, unspecified|2869|Other and unspecified coagulation defects
K7460|Unspecified cirrhosis of liver|5715|Cirrhosis of liver without mention of alcohol
R188|Other ascites|78959|Other ascites
R000|Tachycardia, unspecified|7850|Tachycardia, unspecified
I471|Supraventricular tachycardia|4270|Paroxysmal supraventricular tachycardia
I4892|Unspecified atrial flutter|42732|Atrial flutter
M810|Age-related osteoporosis without current pathological fracture|73300|Osteoporosis, unspecified
L89159|Pressure ulcer of sacral region, unspecified stage|70703|Pressure ulcer, lower back
B9620|Unspecified Escherichia coli [E. coli] as the cause of diseases classified elsewhere|0414|Escherichia coli [E. coli] infection in conditions classified elsewhere and of unspecified site
"""
DIAGNOSES = _table(_DIAGNOSIS_TEXT, ["icd10", "title10", "icd9", "title9"])
_DX = {code: k for k, code in enumerate(DIAGNOSES["icd10"])}
BACKGROUND_DIAGNOSES = np.arange(_DX["I10"], len(DIAGNOSES))

# Admission-level categories: (values, probabilities).
ADMISSION_TYPES = (["EW EMER.", "URGENT", "DIRECT EMER.", "ELECTIVE", "OBSERVATION ADMIT",
                    "SURGICAL SAME DAY ADMISSION", "EU OBSERVATION"], [0.45, 0.18, 0.08, 0.12, 0.07, 0.07, 0.03])
ADMISSION_LOCATIONS = (["EMERGENCY ROOM", "TRANSFER FROM HOSPITAL", "PHYSICIAN REFERRAL", "CLINIC REFERRAL",
                        "PROCEDURE SITE", "WALK-IN/SELF REFERRAL", "PACU"], [0.52, 0.16, 0.14, 0.05, 0.05, 0.04, 0.04])
DISCHARGE_LOCATIONS = (["HOME", "HOME HEALTH CARE", "SKILLED NURSING FACILITY", "REHAB",
                        "CHRONIC/LONG TERM ACUTE CARE", "HOSPICE", "AGAINST ADVICE"],
                       [0.30, 0.30, 0.20, 0.08, 0.06, 0.04, 0.02])
INSURANCE = (["Medicare", "Other", "Medicaid"], [0.48, 0.40, 0.12])
LANGUAGE = (["ENGLISH", "?"], [0.9, 0.1])
MARITAL = (["MARRIED", "SINGLE", "WIDOWED", "DIVORCED", None], [0.45, 0.28, 0.13, 0.08, 0.06])
RACE = (["WHITE", "BLACK/AFRICAN AMERICAN", "HISPANIC/LATINO - PUERTO RICAN", "ASIAN", "WHITE - OTHER EUROPEAN",
         "UNKNOWN", "OTHER", "ASIAN - CHINESE", "BLACK/CAPE VERDEAN", "UNABLE TO OBTAIN"],
        [0.62, 0.10, 0.03, 0.03, 0.03, 0.08, 0.05, 0.02, 0.02, 0.02])
CAREUNITS = (["Medical Intensive Care Unit (MICU)", "Surgical Intensive Care Unit (SICU)",
              "Cardiac Vascular Intensive Care Unit (CVICU)", "Medical/Surgical Intensive Care Unit (MICU/SICU)",
              "Coronary Care Unit (CCU)", "Trauma SICU (TSICU)", "Neuro Surgical Intensive Care Unit (Neuro SICU)",
              "Neuro Intermediate"], [0.24, 0.16, 0.16, 0.15, 0.11, 0.10, 0.04, 0.04])
ANCHOR_YEAR_GROUPS = ["2008 - 2010", "2011 - 2013", "2014 - 2016", "2017 - 2019", "2020 - 2022"]
FIRST_YEAR, LAST_FIRST_YEAR = 2110, 2200  # first admissions; later ones stay before 2210

# --------------------------------------------------------------------------------------
# Event rates and latent-problem prevalences (per ICU stay)
# --------------------------------------------------------------------------------------

EVENTS_PER_HOUR_MEDIAN = 1.0  # all kinds together, in the observation window
EVENTS_PER_HOUR_SIGMA = 0.5  # log-normal spread across stays: the long tail of busy stays
AFTER_WINDOW_FACTOR = 0.45  # event rate after the window, relative to the window
SHARE = {"lab": 0.58, "prescription": 0.15, "ingredient": 0.14, "procedure": 0.09, "microbiology": 0.04}
WARD_LAB_DRAWS_PER_DAY = 1.2
WARD_PRESCRIPTIONS_PER_DAY = 3.0
SHORT_STAY_DEATH_RATE = 0.06
ICU_DEATH_SHARE = 0.7  # of deaths after the cutoff; the rest die on the ward after ICU discharge
OUT_OF_HOSPITAL_DEATH_RATE = 0.08
NEVER = np.iinfo(np.int64).max  # death time of a patient who does not die in hospital


def _zipf_weights(n: int, exponent: float = 1.1) -> np.ndarray:
    w = 1.0 / np.arange(1, n + 1) ** exponent
    return w / w.sum()


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


# --------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------


class _CsvGzWriter:
    """One csv.gz file written chunk by chunk; deterministic bytes (gzip mtime=0)."""

    def __init__(self, path: Path, columns: list[str]):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.columns = columns
        self.rows = 0
        self._raw = open(path, "wb")
        self._gz = gzip.GzipFile(filename="", mode="wb", fileobj=self._raw, compresslevel=GZIP_LEVEL, mtime=0)
        self._gz.write((",".join(columns) + "\n").encode())

    def write(self, table: pa.Table) -> None:
        if table.column_names != self.columns:
            raise ValueError(f"columns {table.column_names} differ from {self.columns}")
        if table.num_rows == 0:
            return
        buf = io.BytesIO()
        pacsv.write_csv(table, buf, pacsv.WriteOptions(include_header=False, quoting_style="needed"))
        self._gz.write(buf.getvalue())
        self.rows += table.num_rows

    def close(self) -> None:
        self._gz.close()
        self._raw.close()


def _ts(seconds: np.ndarray, valid: np.ndarray | None = None) -> pa.Array:
    """int64 seconds since 1970 -> timestamps written as 'YYYY-MM-DD HH:MM:SS'."""
    mask = None if valid is None else ~np.asarray(valid, bool)
    return pa.array(np.asarray(seconds, np.int64), type=pa.timestamp("s"), mask=mask)


def _int(values: np.ndarray, valid: np.ndarray | None = None) -> pa.Array:
    mask = None if valid is None else ~np.asarray(valid, bool)
    return pa.array(np.asarray(values, np.int64), type=pa.int64(), mask=mask)


def _float(values: np.ndarray, decimals: int | None = None, valid: np.ndarray | None = None) -> pa.Array:
    values = np.asarray(values, float)
    if decimals is not None:
        values = np.round(values, decimals)
    mask = None if valid is None else ~np.asarray(valid, bool)
    return pa.array(values, type=pa.float64(), mask=mask)


def _str(values, valid: np.ndarray | None = None) -> pa.Array:
    arr = pa.array(np.asarray(values, dtype=object), type=pa.string(), from_pandas=True)  # NaN/None -> null
    if valid is not None:
        arr = pc.if_else(pa.array(np.asarray(valid, bool)), arr, pa.scalar(None, pa.string()))
    return arr


def _const(value, n: int, kind=pa.string()) -> pa.Array:
    return pa.array([value] * n, type=kind) if value is not None else pa.nulls(n, kind)


# --------------------------------------------------------------------------------------
# Id counters shared by all chunks
# --------------------------------------------------------------------------------------


class _Ids:
    """Next free id per kind. MIMIC ids are not dense: each step skips 1-6 numbers."""

    STARTS = {"subject": 10_000_000, "hadm": 20_000_000, "stay": 30_000_000, "labevent": 1,
              "specimen": 1_000_000, "micro_specimen": 100_000, "microevent": 1, "pharmacy": 1_000_000,
              "order": 1_000_000}

    def __init__(self):
        self.next = dict(self.STARTS)

    def sparse(self, kind: str, rng: np.random.Generator, n: int) -> np.ndarray:
        ids = self.next[kind] + np.cumsum(rng.integers(1, 7, n)) - 1
        self.next[kind] = int(ids[-1]) + 1 if n else self.next[kind]
        return ids

    def dense(self, kind: str, n: int) -> np.ndarray:
        ids = np.arange(self.next[kind], self.next[kind] + n)
        self.next[kind] += n
        return ids


def _providers(rng: np.random.Generator, n: int) -> np.ndarray:
    """MIMIC-IV provider ids: 'P', three digits, then two letters or digits."""
    alphabet = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"))
    digits = rng.integers(0, 1000, n)
    tail = alphabet[rng.integers(0, len(alphabet), (n, 2))]
    return np.char.add(np.char.add("P", np.char.zfill(digits.astype(str), 3)), np.char.add(tail[:, 0], tail[:, 1]))


def _choice(rng: np.random.Generator, spec: tuple[list, list], n: int) -> np.ndarray:
    values, probs = spec
    return np.asarray(values, dtype=object)[rng.choice(len(values), n, p=np.asarray(probs) / np.sum(probs))]


def _lognormal(rng, median, sigma, n, low, high):
    return np.clip(median * np.exp(sigma * rng.standard_normal(n)), low, high)


def _minutes_between(rng: np.random.Generator, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Uniform whole minutes in [lo, hi] (inclusive, minute numbers since 1970)."""
    return lo + np.floor(rng.random(len(lo)) * (hi - lo + 1)).astype(np.int64)


def _year_start_seconds(years: np.ndarray) -> np.ndarray:
    return (np.asarray(years) - 1970).astype("datetime64[Y]").astype("datetime64[s]").astype(np.int64)


def _year_of(seconds: np.ndarray) -> np.ndarray:
    return np.asarray(seconds, np.int64).astype("datetime64[s]").astype("datetime64[Y]").astype(np.int64) + 1970


def _group_offsets(groups: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Exclusive cumulative sum of `values` within runs of equal, consecutive `groups`."""
    total = np.cumsum(values)
    starts = np.r_[True, groups[1:] != groups[:-1]]
    base = np.maximum.accumulate(np.where(starts, np.arange(len(groups)), 0))
    return total - values - (total - values)[base]


# --------------------------------------------------------------------------------------
# One chunk of patients
# --------------------------------------------------------------------------------------


def _patients(rng, n, ids) -> pd.DataFrame:
    age_first = np.floor(18 + 74 * rng.beta(3.0, 1.9, n)).astype(int)  # true age at first admission, 18-91
    first_year = rng.integers(FIRST_YEAR, LAST_FIRST_YEAR + 1, n)
    first_admit = _year_start_seconds(first_year) + rng.integers(0, 364 * DAY, n)
    # anchor_year is up to two years before the first admission (never making anyone younger
    # than 18 in it); anchor_age >= 90 is reported as 91 (those keep anchor_year = first year).
    back = np.minimum(rng.integers(0, 3, n), age_first - 18)
    capped = age_first >= 90
    back[capped] = 0
    return pd.DataFrame({
        "subject_id": ids.sparse("subject", rng, n),
        "gender": np.where(rng.random(n) < 0.56, "M", "F"),
        "anchor_age": np.where(capped, 91, age_first - back),
        "anchor_year": first_year - back,
        "anchor_year_group": np.asarray(ANCHOR_YEAR_GROUPS, dtype=object)[rng.integers(0, 5, n)],
        "first_admit": first_admit,
        "n_admissions": 1 + np.minimum(rng.geometric(0.72, n) - 1, 5),
    })


def _admissions(rng, patients: pd.DataFrame, ids) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Admissions and the ICU stays inside them, in time order per patient."""
    pat = np.repeat(np.arange(len(patients)), patients["n_admissions"].to_numpy())
    n = len(pat)
    n_icu = rng.choice([1, 2, 3], n, p=[0.9, 0.08, 0.02])
    stay_adm = np.repeat(np.arange(n), n_icu)
    m = len(stay_adm)
    # Durations in seconds: ward before the first ICU stay, the ICU stays, ward between
    # stays, ward after the last stay.
    pre = (_lognormal(rng, 6, 1.0, n, 0.5, 96) * HOUR).astype(np.int64)
    icu = (_lognormal(rng, 95, 0.72, m, 2, 45 * 24) * HOUR).astype(np.int64)
    gap_after = (_lognormal(rng, 60, 0.8, m, 6, 400) * HOUR).astype(np.int64)
    last_in_adm = np.r_[stay_adm[1:] != stay_adm[:-1], True]
    gap_after[last_in_adm] = (_lognormal(rng, 60, 0.9, last_in_adm.sum(), 2, 600) * HOUR).astype(np.int64)
    in_adm = _group_offsets(stay_adm, icu + gap_after)  # stay start relative to its first ICU stay
    span = pre + np.bincount(stay_adm, weights=icu + gap_after, minlength=n).astype(np.int64)
    between = (_lognormal(rng, 150, 1.0, n, 3, 700) * DAY).astype(np.int64)
    admit = patients["first_admit"].to_numpy()[pat] + _group_offsets(pat, span + between)

    emergency = rng.random(n) < 0.55
    ed_reg = admit - (_lognormal(rng, 5, 0.5, n, 1, 24) * HOUR).astype(np.int64)
    adm = pd.DataFrame({
        "patient": pat,
        "subject_id": patients["subject_id"].to_numpy()[pat],
        "hadm_id": ids.sparse("hadm", rng, n),
        "admittime": admit,
        "dischtime": admit + span,
        "admission_type": _choice(rng, ADMISSION_TYPES, n),
        "admit_provider_id": _providers(rng, n),
        "admission_location": np.where(emergency, "EMERGENCY ROOM",
                                       _choice(rng, (ADMISSION_LOCATIONS[0][1:], ADMISSION_LOCATIONS[1][1:]), n)),
        "discharge_location": _choice(rng, DISCHARGE_LOCATIONS, n),
        "insurance": _choice(rng, INSURANCE, n),
        "language": _choice(rng, LANGUAGE, n),
        "marital_status": _choice(rng, MARITAL, n),
        "race": _choice(rng, RACE, n),
        "edregtime": ed_reg,
        "edouttime": admit + (rng.random(n) * HOUR).astype(np.int64),
        "has_ed": emergency,
        "icd_version": np.where(rng.random(n) < 0.45, 9, 10),
    })
    intime = admit[stay_adm] + pre[stay_adm] + in_adm + rng.integers(0, 60, m)  # MIMIC intimes have seconds
    careunit = _choice(rng, CAREUNITS, m)
    stays = pd.DataFrame({
        "adm": stay_adm,
        "patient": pat[stay_adm],
        "subject_id": adm["subject_id"].to_numpy()[stay_adm],
        "hadm_id": adm["hadm_id"].to_numpy()[stay_adm],
        "stay_id": ids.sparse("stay", rng, m),
        "first_careunit": careunit,
        "last_careunit": np.where(rng.random(m) < 0.88, careunit, _choice(rng, CAREUNITS, m)),
        "intime": intime,
        "outtime": intime + icu,
    })
    return adm, stays


def _latents(rng, stays: pd.DataFrame, patients: pd.DataFrame, observation_seconds: int) -> None:
    """Per-stay problems that bundle events together, and per-stay lab levels."""
    m = len(stays)
    z = rng.standard_normal(m)  # severity
    stays["severity"] = z
    stays["sepsis"] = rng.random(m) < _sigmoid(-1.3 + 0.8 * z)
    stays["shock"] = rng.random(m) < _sigmoid(-2.6 + 0.9 * z + 1.2 * stays["sepsis"])
    stays["renal"] = rng.random(m) < _sigmoid(-2.0 + 0.6 * z)
    stays["dka"] = rng.random(m) < 0.04
    stays["cardiac"] = rng.random(m) < _sigmoid(-1.6 + 0.3 * z)
    stays["resp"] = rng.random(m) < _sigmoid(-1.0 + 0.8 * z + 0.5 * stays["shock"])
    stays["events_per_hour"] = EVENTS_PER_HOUR_MEDIAN * np.exp(EVENTS_PER_HOUR_SIGMA * rng.standard_normal(m)
                                                               + 0.12 * z)
    stays["creatinine_level"] = np.where(stays["renal"], np.exp(np.log(2.6) + 0.35 * rng.standard_normal(m)),
                                         np.exp(np.log(0.88) + 0.22 * rng.standard_normal(m)))
    stays["potassium_level"] = np.where(stays["renal"] | stays["dka"], 5.45 + 0.35 * rng.standard_normal(m),
                                        4.1 + 0.3 * rng.standard_normal(m))
    stays["lactate_level"] = np.where(stays["shock"], np.exp(np.log(5.2) + 0.35 * rng.standard_normal(m)),
                                      np.exp(np.log(1.3) + 0.35 * rng.standard_normal(m)))
    # Troponin T: injured hearts are high; some others are mildly elevated; most are <0.01.
    mild = rng.random(m) < 0.25
    stays["troponin_level"] = np.where(stays["cardiac"], np.exp(np.log(0.25) + 1.0 * rng.standard_normal(m)),
                                       np.where(mild, np.exp(np.log(0.03) + 0.4 * rng.standard_normal(m)), 0.004))
    stays["weight"] = np.round(_lognormal(rng, 80, 0.22, m, 38, 220), 1)
    # Window bounds in whole minutes: events sit on the minute grid inside the stay.
    intime, outtime = stays["intime"].to_numpy(), stays["outtime"].to_numpy()
    cutoff = intime + observation_seconds
    stays["cutoff"] = cutoff
    stays["first_min"] = -(-intime // MINUTE)
    stays["last_min"] = outtime // MINUTE
    stays["cut_min"] = -(-cutoff // MINUTE)  # first minute at or after the cutoff
    stays["win_last"] = np.minimum(stays["cut_min"] - 1, stays["last_min"])
    stays["eligible"] = outtime >= cutoff
    year = _year_of(intime)
    pat = stays["patient"].to_numpy()
    stays["age"] = patients["anchor_age"].to_numpy()[pat] + year - patients["anchor_year"].to_numpy()[pat]


def _timed(rng, stays: pd.DataFrame, per_hour: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Poisson events over each stay: `per_hour` in the window, less after it."""
    first, win_last = stays["first_min"].to_numpy(), stays["win_last"].to_numpy()
    cut, last = stays["cut_min"].to_numpy(), stays["last_min"].to_numpy()
    win_len = np.maximum(win_last - first + 1, 0)
    after_len = np.maximum(last - cut + 1, 0)
    n_win = rng.poisson(per_hour * win_len / 60)
    n_after = rng.poisson(per_hour * AFTER_WINDOW_FACTOR * after_len / 60)
    s_win = np.repeat(np.arange(len(stays)), n_win)
    s_after = np.repeat(np.arange(len(stays)), n_after)
    t = np.r_[_minutes_between(rng, first[s_win], win_last[s_win]), _minutes_between(rng, cut[s_after], last[s_after])]
    return np.r_[s_win, s_after], t


def _early(rng, stays: pd.DataFrame, idx: np.ndarray, within_hours: float, offset: np.ndarray | None = None):
    """A minute in [start, start + within_hours] of stays `idx` (start = intime or `offset`), inside the stay."""
    lo = stays["first_min"].to_numpy()[idx] if offset is None else offset
    last = stays["last_min"].to_numpy()[idx]
    lo = np.minimum(lo, last)
    hi = np.minimum(lo + int(within_hours * 60), last)
    return _minutes_between(rng, lo, hi)


def _anytime(rng, stays: pd.DataFrame, idx: np.ndarray):
    return _minutes_between(rng, stays["first_min"].to_numpy()[idx], stays["last_min"].to_numpy()[idx])


# ---- labs ----------------------------------------------------------------------------

def _panel_probabilities(stays: pd.DataFrame, owner: np.ndarray, icu: np.ndarray,
                         serial: np.ndarray) -> dict[str, np.ndarray]:
    s = {k: stays[k].to_numpy()[owner] for k in ("sepsis", "shock", "resp", "cardiac", "renal", "dka")}
    ward = ~icu
    routine = {
        "bmp": np.where(ward, 0.9, 0.8),
        "cbc": np.where(ward, 0.8, 0.65),
        "blood_gas": np.where(ward, 0.02, 0.12 + 0.45 * (s["resp"] | s["shock"]) + 0.3 * s["dka"]),
        "coag": np.where(ward, 0.15, 0.3),
        "lft": np.where(ward, 0.1, 0.12 + 0.2 * s["sepsis"]),
        "mg_phos_ca": np.where(ward, 0.3, 0.5),
        "cardiac": np.where(ward, 0.02, 0.04 + 0.4 * s["cardiac"]),
        "differential": np.where(ward, 0.2, 0.3 + 0.2 * s["sepsis"]),
        "urinalysis": np.where(ward, 0.03, 0.06),
    }
    return {name: np.where(serial, float(name == "cardiac"), p) for name, p in routine.items()}


def _lab_rows(rng, stays: pd.DataFrame, owner: np.ndarray, minute: np.ndarray, icu: np.ndarray,
             serial: np.ndarray) -> pd.DataFrame:
    """Expand lab draws (owner stay, minute) into one row per test with a value."""
    n_draws = len(owner)
    probs = _panel_probabilities(stays, owner, icu, serial)
    draw_parts, item_parts = [], []
    for name, items in PANELS.items():
        chosen = np.flatnonzero(rng.random(n_draws) < probs[name])
        draw_parts.append(np.repeat(chosen, len(items)))
        item_parts.append(np.tile([LAB_INDEX[i] for i in items], len(chosen)))
    n_single = np.where(serial, 0, rng.poisson(0.6, n_draws))
    draw_parts.append(np.repeat(np.arange(n_draws), n_single))
    item_parts.append(SINGLE_LABS[rng.choice(len(SINGLE_LABS), n_single.sum(), p=_zipf_weights(len(SINGLE_LABS)))])
    draw, item = np.concatenate(draw_parts), np.concatenate(item_parts)
    keep = ~pd.DataFrame({"d": draw, "i": item}).duplicated().to_numpy()  # a test once per draw
    draw, item = draw[keep], item[keep]
    rows = pd.DataFrame({"draw": draw, "stay": owner[draw], "icu": icu[draw], "minute": minute[draw],
                         "lab": item})
    rows["valuenum"] = _lab_values(rng, stays, rows)
    return rows


def _lab_values(rng, stays: pd.DataFrame, rows: pd.DataFrame) -> np.ndarray:
    lab = rows["lab"].to_numpy()
    owner = rows["stay"].to_numpy()
    n = len(rows)
    cat = {c: LABS[c].to_numpy()[lab] for c in ("mean", "sd", "min", "max", "direction", "decimals")}
    # Sicker stays have more deranged routine labs; on the ward half as much.
    severity = stays["severity"].to_numpy()[owner] * np.where(rows["icu"].to_numpy(), 1.0, 0.5)
    value = cat["mean"] + cat["sd"] * (0.8 * rng.standard_normal(n) + 0.5 * severity * cat["direction"])
    itemid = LABS["itemid"].to_numpy()[lab]
    noise = rng.standard_normal(n)
    special = {
        CREATININE: stays["creatinine_level"].to_numpy()[owner] * np.exp(0.08 * noise),
        POTASSIUM: stays["potassium_level"].to_numpy()[owner] + 0.25 * noise,
        LACTATE: stays["lactate_level"].to_numpy()[owner] * np.exp(0.15 * noise),
        TROPONIN_T: stays["troponin_level"].to_numpy()[owner] * np.exp(0.3 * noise),
        GLUCOSE: np.where(stays["dka"].to_numpy()[owner], 420 + 90 * noise, value),
    }
    for code, special_value in special.items():
        value = np.where(itemid == code, special_value, value)
    value = np.clip(value, cat["min"], cat["max"])
    return np.round(value * 10.0 ** cat["decimals"]) / 10.0 ** cat["decimals"]


def _icu_lab_draws(rng, stays: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Admission labs within 3 h of intime for every stay, Poisson draws, and for injured
    hearts a serial troponin series (3-8 draws, every 6-8 h) from admission.
    Returns owner stay, minute, and whether the draw belongs to a troponin series."""
    items_per_draw = 14.0
    owner, minute = _timed(rng, stays, stays["events_per_hour"].to_numpy() * SHARE["lab"] / items_per_draw)
    first = np.arange(len(stays))
    cardiac = np.flatnonzero(stays["cardiac"])
    n_serial = rng.integers(3, 9, len(cardiac))
    series = np.repeat(cardiac, n_serial)
    step = np.arange(len(series)) - np.repeat(np.cumsum(n_serial) - n_serial, n_serial)
    serial_minute = np.minimum(stays["first_min"].to_numpy()[series] + step * rng.integers(360, 481, len(series)),
                               stays["last_min"].to_numpy()[series])
    serial = np.r_[np.zeros(len(first) + len(owner), bool), np.ones(len(series), bool)]
    return np.r_[first, owner, series], np.r_[_early(rng, stays, first, 3), minute, serial_minute], serial


# ---- other ICU events ------------------------------------------------------------------

def _prescriptions(rng, stays: pd.DataFrame, first_blood_culture: np.ndarray) -> pd.DataFrame:
    owner, minute = _timed(rng, stays, stays["events_per_hour"].to_numpy() * SHARE["prescription"])
    drug = BACKGROUND_DRUGS[rng.choice(len(BACKGROUND_DRUGS), len(owner), p=_zipf_weights(len(BACKGROUND_DRUGS)))]
    parts = [(owner, minute, drug)]

    def add(idx, minutes, name):
        parts.append((idx, minutes, np.full(len(idx), DRUG_INDEX[name])))

    shock = np.flatnonzero(stays["shock"])
    add(shock, _early(rng, stays, shock, 18), "Norepinephrine")
    again = shock[rng.random(len(shock)) < 0.5]
    add(again, _anytime(rng, stays, again), "Norepinephrine")
    stray = np.flatnonzero(~stays["shock"].to_numpy() & (rng.random(len(stays)) < 0.03))
    add(stray, _anytime(rng, stays, stray), "Norepinephrine")
    # Sepsis bundle: antibiotics within 6 h after the first blood culture.
    septic = np.flatnonzero(stays["sepsis"].to_numpy() & (first_blood_culture >= 0))
    for name in ("Vancomycin", "Piperacillin-Tazobactam"):
        add(septic, _early(rng, stays, septic, 6, first_blood_culture[septic]), name)
    dka = np.flatnonzero(stays["dka"])
    for _ in range(3):
        add(dka, _early(rng, stays, dka, 36), "Insulin")
    renal = np.flatnonzero(stays["renal"])
    add(renal, _early(rng, stays, renal, 24), "Furosemide")
    renal2 = renal[rng.random(len(renal)) < 0.6]
    add(renal2, _anytime(rng, stays, renal2), "Furosemide")
    return pd.DataFrame({"stay": np.concatenate([p[0] for p in parts]), "minute": np.concatenate([p[1] for p in parts]),
                         "drug": np.concatenate([p[2] for p in parts])})


def _cultures(rng, stays: pd.DataFrame) -> pd.DataFrame:
    """One row per culture: specimen kind, organism (-1: no growth), and the minute its
    result is stored (12-120 h after the draw; the rule and storetime both use it)."""
    owner, minute = _timed(rng, stays, stays["events_per_hour"].to_numpy() * SHARE["microbiology"])
    spec = rng.choice(len(SPECIMENS), len(owner), p=SPECIMENS["share"].to_numpy())
    positive = rng.random(len(owner)) < SPECIMENS["positive_rate"].to_numpy()[spec]
    # Sepsis: one to three blood cultures early in the stay; half of septic stays grow an organism.
    septic = np.flatnonzero(stays["sepsis"])
    n_bc = rng.integers(1, 4, len(septic))
    bc_stay = np.repeat(septic, n_bc)
    bc_minute = _early(rng, stays, bc_stay, 30)
    grows = np.repeat(rng.random(len(septic)) < 0.5, n_bc) & (rng.random(len(bc_stay)) < 0.8)
    owner = np.r_[owner, bc_stay]
    minute = np.r_[minute, bc_minute]
    spec = np.r_[spec, np.full(len(bc_stay), BLOOD_CULTURE)]
    positive = np.r_[positive, grows]
    org_p = _zipf_weights(len(ORGANISMS), 1.0)
    organism = np.where(positive, rng.choice(len(ORGANISMS), len(owner), p=org_p), -1)
    # A few non-blood cultures are charted with a date only (charttime empty), as in MIMIC.
    date_only = (spec != BLOOD_CULTURE) & (rng.random(len(owner)) < 0.1)
    store_min = minute + (_lognormal(rng, 40, 0.4, len(owner), 12, 120) * HOUR).astype(np.int64) // MINUTE
    return pd.DataFrame({"stay": owner, "minute": minute, "spec": spec, "organism": organism,
                         "date_only": date_only, "store_min": store_min})


def _procedures(rng, stays: pd.DataFrame) -> pd.DataFrame:
    owner, minute = _timed(rng, stays, stays["events_per_hour"].to_numpy() * SHARE["procedure"])
    proc = BACKGROUND_PROCEDURES[rng.choice(len(BACKGROUND_PROCEDURES), len(owner),
                                            p=_zipf_weights(len(BACKGROUND_PROCEDURES), 0.9))]
    parts = [(owner, minute, proc)]

    def add(idx, minutes, itemid):
        parts.append((idx, minutes, np.full(len(idx), PROC_INDEX[itemid])))

    resp = np.flatnonzero(stays["resp"])
    vent_start = _early(rng, stays, resp, 20)
    add(resp, vent_start, INVASIVE_VENTILATION)
    add(resp, vent_start, INTUBATION)
    weaned = rng.random(len(resp)) < 0.7
    off_vent = vent_start + np.round(_lognormal(rng, 36 * 60, 0.8, len(resp), 120, 20 * 24 * 60)).astype(np.int64)
    weaned &= off_vent <= stays["last_min"].to_numpy()[resp]
    add(resp[weaned], off_vent[weaned], EXTUBATION)
    late = np.flatnonzero(~stays["resp"].to_numpy() & (rng.random(len(stays)) < 0.04))
    late_start = _anytime(rng, stays, late)
    add(late, late_start, INVASIVE_VENTILATION)
    add(late, late_start, INTUBATION)
    crrt = np.flatnonzero(stays["renal"].to_numpy() & (rng.random(len(stays)) < 0.45))
    crrt_start = _anytime(rng, stays, crrt)
    add(crrt, crrt_start, DIALYSIS_CATHETER)
    add(crrt, np.minimum(crrt_start + 30, stays["last_min"].to_numpy()[crrt]), CRRT)
    aline = np.flatnonzero(rng.random(len(stays)) < 0.35 + 0.4 * stays["shock"].to_numpy())
    add(aline, _early(rng, stays, aline, 12), ARTERIAL_LINE)
    rows = pd.DataFrame({"stay": np.concatenate([p[0] for p in parts]),
                         "minute": np.concatenate([p[1] for p in parts]),
                         "proc": np.concatenate([p[2] for p in parts])})
    duration = PROCEDURES["kind"].to_numpy()[rows["proc"]] == "duration"
    rows["duration_min"] = np.where(duration, np.round(_lognormal(rng, 36 * 60, 1.0, len(rows), 30, 20 * DAY // 60)),
                                    1)
    return rows


def _ingredient_orders(rng, stays: pd.DataFrame) -> pd.DataFrame:
    names = list(ORDER_RECIPES)
    probs = np.array([ORDER_RECIPES[k][0] for k in names])
    rows_per_order = np.array([len(ORDER_RECIPES[k][3]) for k in names])
    mean_rows = float(probs @ rows_per_order / probs.sum())
    owner, minute = _timed(rng, stays, stays["events_per_hour"].to_numpy() * SHARE["ingredient"] / mean_rows)
    recipe = rng.choice(len(names), len(owner), p=probs / probs.sum())
    return pd.DataFrame({"stay": owner, "minute": minute, "recipe": recipe, "u": rng.random(len(owner)),
                         "hours": _lognormal(rng, 8, 0.8, len(owner), 1, 48)})


def _ward_events(rng, adm: pd.DataFrame, stays: pd.DataFrame, per_day: float) -> tuple[np.ndarray, np.ndarray]:
    """Poisson events over each admission outside its ICU stays: (owner stay, minute)."""
    first_stay = np.r_[0, np.flatnonzero(np.diff(stays["adm"].to_numpy())) + 1]  # admissions are in order
    lo = -(-adm["admittime"].to_numpy() // MINUTE)
    hi = adm["dischtime"].to_numpy() // MINUTE
    n = rng.poisson(per_day * (hi - lo) / (24 * 60))
    a = np.repeat(np.arange(len(adm)), n)
    minute = _minutes_between(rng, lo[a], hi[a])
    # Drop those that fall inside an ICU stay of the same admission (those are ICU events).
    key = a * 10**10 + minute
    starts = stays["adm"].to_numpy() * 10**10 + stays["first_min"].to_numpy()
    ends = stays["adm"].to_numpy() * 10**10 + stays["last_min"].to_numpy()
    k = np.searchsorted(starts, key, side="right") - 1
    inside = (k >= 0) & (key <= ends[np.maximum(k, 0)])
    return first_stay[a[~inside]], minute[~inside]


# ---- rules -----------------------------------------------------------------------------

def _score(stays, labs, rx, cultures, procs) -> tuple[np.ndarray, pd.DataFrame]:
    """The planted logit per stay from its window events, and the events that fired."""
    cut_min = stays["cut_min"].to_numpy()

    def in_window(rows):
        return rows["icu"].to_numpy() & (rows["minute"].to_numpy() < cut_min[rows["stay"].to_numpy()])

    lab_item = LABS["itemid"].to_numpy()[labs["lab"].to_numpy()]
    abnormal = labs["abnormal"].to_numpy()
    lw = in_window(labs)
    fired = {
        "vasopressor": ("prescriptions", rx[in_window(rx) & (rx["drug"].to_numpy() == NOREPINEPHRINE)]),
        "lactate_over_4": ("labevents", labs[lw & (lab_item == LACTATE) & (labs["valuenum"].to_numpy()
                                                                            > LACTATE_THRESHOLD)]),
        "positive_blood_culture": ("microbiologyevents", cultures[
            in_window(cultures) & (cultures["spec"].to_numpy() == BLOOD_CULTURE) & (cultures["organism"] >= 0)
            & ~cultures["date_only"].to_numpy()
            # the organism must be known (stored) before the cutoff: a pending result shows nothing
            & (cultures["store_min"].to_numpy() < cut_min[cultures["stay"].to_numpy()])]),
        "invasive_ventilation": ("procedureevents", procs[
            in_window(procs) & (procs["proc"].to_numpy() == PROC_INDEX[INVASIVE_VENTILATION])]),
    }
    creat = labs[lw & (lab_item == CREATININE) & abnormal]
    potassium = labs[lw & (lab_item == POTASSIUM) & abnormal]
    both = np.intersect1d(creat["stay"], potassium["stay"])
    fired["creatinine_and_potassium_abnormal"] = (
        "labevents", pd.concat([creat[creat["stay"].isin(both)], potassium[potassium["stay"].isin(both)]]))
    recent_from = cut_min - int(TROPONIN_RECENT_HOURS * 60)
    fired["recent_troponin_abnormal"] = ("labevents", labs[
        lw & (lab_item == TROPONIN_T) & abnormal
        & (labs["minute"].to_numpy() >= recent_from[labs["stay"].to_numpy()])])

    logit = BASE_LOGIT + AGE_EFFECT_PER_DECADE * np.maximum(stays["age"].to_numpy() - 60, 0) / 10
    planted = []
    for rule, (table, rows) in fired.items():
        hit = np.zeros(len(stays), bool)
        hit[rows["stay"].to_numpy()] = True
        logit = logit + RULE_EFFECT[rule] * hit
        planted.append(pd.DataFrame({"stay": rows["stay"].to_numpy(), "rule": rule, "table": table,
                                     "code": _event_code(table, rows), "minute": rows["minute"].to_numpy()}))
    return logit, pd.concat(planted, ignore_index=True)


def _event_code(table: str, rows: pd.DataFrame) -> np.ndarray:
    """What identifies the event in its table: NDC, lab/procedure itemid, or org_itemid."""
    if table == "prescriptions":
        return DRUG_NDCS["ndc"].to_numpy()[rows["ndc_row"].to_numpy()]
    if table == "labevents":
        return LABS["itemid"].to_numpy()[rows["lab"].to_numpy()].astype(str)
    if table == "microbiologyevents":
        return ORGANISMS["org_itemid"].to_numpy()[rows["organism"].to_numpy()].astype(str)
    return PROCEDURES["itemid"].to_numpy()[rows["proc"].to_numpy()].astype(str)


# ---- outcome ---------------------------------------------------------------------------

def _outcomes(rng, patients, adm, stays, logit) -> None:
    """Draw deaths, then cut every patient's history at the death (in place)."""
    m = len(stays)
    risk = _sigmoid(logit)
    eligible = stays["eligible"].to_numpy()
    dies = np.where(eligible, rng.random(m) < risk, rng.random(m) < SHORT_STAY_DEATH_RATE)
    pat = stays["patient"].to_numpy()
    order = np.arange(m)
    first_death = np.full(len(patients), m)
    np.minimum.at(first_death, pat[dies], order[dies])
    death_stay = first_death[pat]
    stays["kept"] = order <= death_stay
    stays["death_here"] = order == death_stay

    # Short stays die at their end; others after the cutoff, in the ICU (which then ends
    # at death) or on the ward within four days of ICU discharge.
    last_min, cut_min = stays["last_min"].to_numpy(), stays["cut_min"].to_numpy()
    in_icu = (rng.random(m) < ICU_DEATH_SHARE) & (last_min >= cut_min + 1)
    death_min = np.where(
        ~eligible, last_min,
        np.where(in_icu, _minutes_between(rng, np.minimum(cut_min + 1, last_min), last_min),
                 last_min + 60 + (rng.random(m) * 96 * 60).astype(np.int64)))
    death_time = death_min * MINUTE
    d = stays["death_here"].to_numpy()
    died_in_icu = d & (death_time <= stays["outtime"].to_numpy())
    stays.loc[died_in_icu, "outtime"] = death_time[died_in_icu]
    stays["last_min"] = stays["outtime"] // MINUTE

    adm_death = np.full(len(adm), -1, np.int64)
    adm_death[stays["adm"].to_numpy()[d]] = death_time[d]
    died_adm = adm_death >= 0
    adm_first_stay = np.full(len(adm), m)
    np.minimum.at(adm_first_stay, stays["adm"].to_numpy(), order)
    adm["kept"] = adm_first_stay <= first_death[adm["patient"].to_numpy()]  # nothing after a death
    adm["deathtime"] = adm_death
    adm["hospital_expire_flag"] = died_adm.astype(int)
    adm.loc[died_adm, "dischtime"] = adm_death[died_adm]
    adm.loc[died_adm, "discharge_location"] = "DIED"
    # Death time per patient (events after it are cut), and dod: in-hospital deaths, plus
    # some deaths after discharge (MIMIC-IV records out-of-hospital deaths within a year).
    patient_death = np.full(len(patients), NEVER)
    patient_death[pat[d]] = death_time[d]
    patients["death_time"] = patient_death
    last_disch = adm[adm["kept"]].groupby("patient")["dischtime"].max().reindex(range(len(patients))).to_numpy()
    died_later = (patient_death == NEVER) & (rng.random(len(patients)) < OUT_OF_HOSPITAL_DEATH_RATE)
    later = last_disch + (_lognormal(rng, 120, 0.9, len(patients), 1, 365) * DAY).astype(np.int64)
    patients["dod"] = np.where(patient_death < NEVER, patient_death, np.where(died_later, later, -1))

    # The label as the extraction defines it: death in this hospitalisation after the cutoff.
    death_of_adm = adm_death[stays["adm"].to_numpy()]
    stays["logit"] = logit
    stays["true_risk"] = risk
    stays["died_after_cutoff"] = eligible & (death_of_adm >= stays["cutoff"].to_numpy())


# ---- diagnoses -------------------------------------------------------------------------

def _diagnoses(rng, adm: pd.DataFrame, stays: pd.DataFrame) -> pd.DataFrame:
    """ICD codes per admission, coded at discharge: from the latents and from the outcome."""
    flags = stays[stays["kept"]].groupby("adm")[["sepsis", "shock", "renal", "dka", "cardiac", "resp"]].any()
    flags = flags.reindex(range(len(adm)), fill_value=False)
    died = adm["hospital_expire_flag"].to_numpy() == 1
    n = len(adm)
    probability = {  # code -> probability for each admission
        "A419": 0.85 * flags["sepsis"], "R6520": 0.4 * (flags["sepsis"] & ~flags["shock"]),
        "R6521": 0.75 * (flags["sepsis"] & flags["shock"]), "E1010": 0.95 * flags["dka"],
        "N179": 0.85 * flags["renal"], "E875": 0.5 * (flags["renal"] | flags["dka"]),
        "J9600": 0.8 * flags["resp"], "I214": 0.6 * flags["cardiac"], "E872": 0.5 * flags["shock"],
        "I469": 0.55 * died, "Z515": 0.35 * died + 0.01, "Z66": 0.3 * died + 0.04,
    }
    adm_parts, code_parts = [], []
    for code, p in probability.items():
        hit = np.flatnonzero(rng.random(n) < np.asarray(p, float))
        adm_parts.append(hit)
        code_parts.append(np.full(len(hit), _DX[code]))
    n_background = 2 + rng.poisson(7, n)
    a = np.repeat(np.arange(n), n_background)
    adm_parts.append(a)
    code_parts.append(BACKGROUND_DIAGNOSES[rng.choice(len(BACKGROUND_DIAGNOSES), len(a),
                                                      p=_zipf_weights(len(BACKGROUND_DIAGNOSES), 0.9))])
    dx = pd.DataFrame({"adm": np.concatenate(adm_parts), "dx": np.concatenate(code_parts)})
    dx = dx.drop_duplicates().sort_values("adm", kind="stable")
    dx = dx[adm["kept"].to_numpy()[dx["adm"].to_numpy()]]
    dx["seq_num"] = dx.groupby("adm").cumcount() + 1
    return dx


# ---- deduplication and cutting ---------------------------------------------------------

def _unique(rows: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Events of one kind and item never share a minute for a patient (no accidental duplicates)."""
    return rows[~rows.duplicated(keys)].reset_index(drop=True)


def _alive(rows: pd.DataFrame, stays: pd.DataFrame, patients: pd.DataFrame) -> pd.DataFrame:
    s = rows["stay"].to_numpy()
    death = patients["death_time"].to_numpy()[stays["patient"].to_numpy()[s]]
    keep = stays["kept"].to_numpy()[s] & (rows["minute"].to_numpy() * MINUTE <= death)
    return rows[keep]


# --------------------------------------------------------------------------------------
# Formatting as MIMIC-IV tables (each sorted by subject, time, item; ids in that order)
# --------------------------------------------------------------------------------------


def _sorted(rows: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    return rows.sort_values(keys, kind="stable").reset_index(drop=True)


def _hadm_known(rng, unit: np.ndarray, n_units: int) -> np.ndarray:
    """~5% of lab draws and cultures (`unit` numbers each row's) carry no hadm_id, as in MIMIC."""
    return (rng.random(n_units) >= 0.05)[unit]


def _format_patients(patients: pd.DataFrame) -> pa.Table:
    dod = patients["dod"].to_numpy()
    return pa.table({
        "subject_id": _int(patients["subject_id"]), "gender": _str(patients["gender"]),
        "anchor_age": _int(patients["anchor_age"]), "anchor_year": _int(patients["anchor_year"]),
        "anchor_year_group": _str(patients["anchor_year_group"]),
        "dod": pa.array(np.where(dod >= 0, dod // DAY, 0).astype(np.int32), pa.date32(), mask=dod < 0),
    })


def _format_admissions(adm: pd.DataFrame) -> pa.Table:
    ed = adm["has_ed"].to_numpy()
    death = adm["deathtime"].to_numpy()
    return pa.table({
        "subject_id": _int(adm["subject_id"]), "hadm_id": _int(adm["hadm_id"]),
        "admittime": _ts(adm["admittime"]), "dischtime": _ts(adm["dischtime"]),
        "deathtime": _ts(np.maximum(death, 0), death >= 0),
        "admission_type": _str(adm["admission_type"]), "admit_provider_id": _str(adm["admit_provider_id"]),
        "admission_location": _str(adm["admission_location"]),
        "discharge_location": _str(adm["discharge_location"]), "insurance": _str(adm["insurance"]),
        "language": _str(adm["language"]), "marital_status": _str(adm["marital_status"]),
        "race": _str(adm["race"]), "edregtime": _ts(adm["edregtime"], ed), "edouttime": _ts(adm["edouttime"], ed),
        "hospital_expire_flag": _int(adm["hospital_expire_flag"]),
    })


def _format_icustays(stays: pd.DataFrame) -> pa.Table:
    intime, outtime = stays["intime"].to_numpy(), stays["outtime"].to_numpy()
    return pa.table({
        "subject_id": _int(stays["subject_id"]), "hadm_id": _int(stays["hadm_id"]),
        "stay_id": _int(stays["stay_id"]), "first_careunit": _str(stays["first_careunit"]),
        "last_careunit": _str(stays["last_careunit"]), "intime": _ts(intime), "outtime": _ts(outtime),
        "los": _float((outtime - intime) / DAY, 4),
    })


def _format_diagnoses(adm: pd.DataFrame, dx: pd.DataFrame) -> pa.Table:
    a = dx["adm"].to_numpy()
    version = adm["icd_version"].to_numpy()[a]
    codes = np.where(version == 9, DIAGNOSES["icd9"].to_numpy()[dx["dx"]], DIAGNOSES["icd10"].to_numpy()[dx["dx"]])
    return pa.table({
        "subject_id": _int(adm["subject_id"].to_numpy()[a]), "hadm_id": _int(adm["hadm_id"].to_numpy()[a]),
        "seq_num": _int(dx["seq_num"]), "icd_code": _str(codes), "icd_version": _int(version),
    })


def _format_labs(rng, labs: pd.DataFrame, stays: pd.DataFrame, ids: _Ids) -> tuple[pa.Table, np.ndarray]:
    labs = _sorted(labs, ["subject", "minute", "draw", "lab"])
    n = len(labs)
    first_of_draw = np.r_[True, labs["draw"].to_numpy()[1:] != labs["draw"].to_numpy()[:-1]]
    draw_no = np.cumsum(first_of_draw) - 1  # draws are contiguous after sorting
    n_draws = int(draw_no.max()) + 1 if n else 0
    specimen = ids.sparse("specimen", rng, n_draws)[draw_no]
    stay = labs["stay"].to_numpy()
    lab = labs["lab"].to_numpy()
    has_hadm = _hadm_known(rng, draw_no, n_draws)
    charttime = labs["minute"].to_numpy() * MINUTE
    store_delay = (np.round(_lognormal(rng, 80, 0.6, n_draws, 10, 1440)) * MINUTE).astype(np.int64)[draw_no]
    valuenum = labs["valuenum"].to_numpy()
    itemid = LABS["itemid"].to_numpy()[lab]
    # Troponin T below the assay limit is reported as text, with no number (as in MIMIC).
    below_limit = (itemid == TROPONIN_T) & (valuenum < 0.01)
    value = pc.cast(pa.array(valuenum), pa.string())
    value = pc.if_else(pa.array(below_limit), pa.scalar("<0.01"), value)
    provider = _providers(rng, n_draws)[draw_no]
    has_provider = (rng.random(n_draws) < 0.4)[draw_no]
    priority = np.where(labs["icu"].to_numpy() & (rng.random(n_draws) < 0.5)[draw_no], "STAT", "ROUTINE")
    has_priority = (rng.random(n_draws) > 0.05)[draw_no]
    ref_lo, ref_hi = LABS["ref_lo"].to_numpy()[lab], LABS["ref_hi"].to_numpy()[lab]
    unit = LABS["unit"].to_numpy()[lab]
    table = pa.table({
        "labevent_id": _int(ids.dense("labevent", n)), "subject_id": _int(stays["subject_id"].to_numpy()[stay]),
        "hadm_id": _int(stays["hadm_id"].to_numpy()[stay], has_hadm), "specimen_id": _int(specimen),
        "itemid": _int(itemid), "order_provider_id": _str(provider, has_provider), "charttime": _ts(charttime),
        "storetime": _ts(charttime + store_delay), "value": value,
        "valuenum": _float(valuenum, valid=~below_limit), "valueuom": _str(unit, pd.notna(unit)),
        "ref_range_lower": _float(ref_lo, valid=~np.isnan(ref_lo)),
        "ref_range_upper": _float(ref_hi, valid=~np.isnan(ref_hi)),
        "flag": _str(np.full(n, "abnormal"), labs["abnormal"].to_numpy()),
        "priority": _str(priority, has_priority), "comments": _const(None, n),
    })
    # Rows that may be duplicated as a defect: ICU results of cohort stays, never rule items.
    rule_items = np.isin(itemid, [CREATININE, POTASSIUM, LACTATE, TROPONIN_T])
    duplicable = labs["icu"].to_numpy() & stays["eligible"].to_numpy()[stay] & has_hadm & ~rule_items
    return table, duplicable


def _format_prescriptions(rng, rx: pd.DataFrame, stays: pd.DataFrame, ids: _Ids) -> tuple[pa.Table, np.ndarray]:
    rx = _sorted(rx, ["subject", "minute", "drug"])
    n = len(rx)
    stay, drug, ndc_row = rx["stay"].to_numpy(), rx["drug"].to_numpy(), rx["ndc_row"].to_numpy()
    subject = stays["subject_id"].to_numpy()[stay]
    seq = rx.groupby("subject").cumcount().to_numpy() + 1
    start = rx["minute"].to_numpy() * MINUTE
    stop = start + (np.round(_lognormal(rng, 36, 0.9, n, 1, 240)) * HOUR).astype(np.int64)
    cat = {c: DRUGS[c].to_numpy()[drug] for c in DRUGS.columns}
    base = cat["drug_type"] == "BASE"
    dose = cat["dose_lo"] + (cat["dose_hi"] - cat["dose_lo"]) * rng.random(n)
    dose = np.where(dose >= 10, np.round(dose), np.round(dose, 2))
    doses_per_day = rng.choice([1.0, 2.0, 3.0, 4.0, np.nan], n, p=[0.35, 0.25, 0.15, 0.1, 0.15])
    table = pa.table({
        "subject_id": _int(subject), "hadm_id": _int(stays["hadm_id"].to_numpy()[stay]),
        "pharmacy_id": _int(ids.sparse("pharmacy", rng, n)),
        "poe_id": _str(np.char.add(np.char.add(subject.astype(str), "-"), seq.astype(str))),
        "poe_seq": _int(seq), "order_provider_id": _str(_providers(rng, n)),
        "starttime": _ts(start), "stoptime": _ts(stop), "drug_type": _str(cat["drug_type"]),
        "drug": _str(cat["drug"]), "formulary_drug_cd": _str(DRUG_NDCS["formulary_drug_cd"].to_numpy()[ndc_row]),
        "gsn": _str(DRUG_NDCS["gsn"].to_numpy()[ndc_row], ~base),
        # Base solutions carry NDC 0 in MIMIC; the extraction then codes them by drug name.
        "ndc": _str(np.where(base, "0", DRUG_NDCS["ndc"].to_numpy()[ndc_row])),
        "prod_strength": _str(cat["prod_strength"]), "form_rx": _const(None, n),
        "dose_val_rx": pc.cast(pa.array(dose), pa.string()), "dose_unit_rx": _str(cat["dose_unit"]),
        "form_val_disp": _const("1", n), "form_unit_disp": _str(cat["form_unit"]),
        "doses_per_24_hrs": _float(doses_per_day, valid=~np.isnan(doses_per_day)), "route": _str(cat["route"]),
    })
    return table, drug != NOREPINEPHRINE


def _format_micro(rng, cultures: pd.DataFrame, stays: pd.DataFrame, ids: _Ids) -> pa.Table:
    cultures = _sorted(cultures, ["subject", "when", "spec"])
    c = len(cultures)
    positive = cultures["organism"].to_numpy() >= 0
    tested = positive & (cultures["organism"].to_numpy() != YEAST)  # no susceptibilities for yeast
    n_ab = np.where(tested, rng.integers(4, 9, c), 0)
    per_culture = 1 + n_ab  # organism (or no-growth) row, then susceptibility rows
    k = np.repeat(np.arange(c), per_culture)
    within = np.arange(len(k)) - np.repeat(np.cumsum(per_culture) - per_culture, per_culture)
    is_ab = within > 0
    first_ab = rng.integers(0, len(ANTIBIOTICS), c)
    ab = (first_ab[k] + within - 1) % len(ANTIBIOTICS)  # distinct antibiotics per isolate
    n = len(k)
    stay = cultures["stay"].to_numpy()[k]
    spec = cultures["spec"].to_numpy()[k]
    org = cultures["organism"].to_numpy()[k]
    pos = org >= 0
    date_only = cultures["date_only"].to_numpy()[k]
    chart = cultures["minute"].to_numpy()[k] * MINUTE
    chartdate = cultures["day"].to_numpy()[k] * DAY
    store = cultures["store_min"].to_numpy()[k] * MINUTE  # drawn in _cultures, used by _score
    dilution = _DILUTIONS[rng.integers(0, len(_DILUTIONS), n)]
    comparison = np.where(rng.random(n) < 0.7, "<=", np.where(rng.random(n) < 0.5, "=", ">="))
    interpretation = _choice(rng, (["S", "R", "I"], [0.72, 0.22, 0.06]), n)
    has_hadm = _hadm_known(rng, k, c)
    provider_ok = (rng.random(c) < 0.3)[k]
    no_growth = ~pos & (within == 0)
    urine_count = pos & ~is_ab & (SPECIMENS["spec_type_desc"].to_numpy()[spec] == "URINE")
    return pa.table({
        "microevent_id": _int(ids.dense("microevent", n)),
        "subject_id": _int(stays["subject_id"].to_numpy()[stay]),
        "hadm_id": _int(stays["hadm_id"].to_numpy()[stay], has_hadm),
        "micro_specimen_id": _int(ids.sparse("micro_specimen", rng, c)[k]),
        "order_provider_id": _str(_providers(rng, c)[k], provider_ok),
        "chartdate": _ts(chartdate), "charttime": _ts(chart, ~date_only),
        "spec_itemid": _int(SPECIMENS["spec_itemid"].to_numpy()[spec]),
        "spec_type_desc": _str(SPECIMENS["spec_type_desc"].to_numpy()[spec]),
        "test_seq": _int(np.ones(n)), "storedate": _ts(store // DAY * DAY), "storetime": _ts(store),
        "test_itemid": _int(SPECIMENS["test_itemid"].to_numpy()[spec]),
        "test_name": _str(SPECIMENS["test_name"].to_numpy()[spec]),
        "org_itemid": _int(ORGANISMS["org_itemid"].to_numpy()[np.maximum(org, 0)], pos),
        "org_name": _str(ORGANISMS["org_name"].to_numpy()[np.maximum(org, 0)], pos),
        "isolate_num": _int(np.ones(n), pos), "quantity": _str(np.full(n, ">100,000 CFU/mL"), urine_count),
        "ab_itemid": _int(ANTIBIOTICS["ab_itemid"].to_numpy()[ab], is_ab),
        "ab_name": _str(ANTIBIOTICS["ab_name"].to_numpy()[ab], is_ab),
        "dilution_text": _str(np.char.add(comparison.astype(str), np.char.mod("%g", dilution)), is_ab),
        "dilution_comparison": _str(comparison, is_ab),
        "dilution_value": _float(dilution, valid=is_ab), "interpretation": _str(interpretation, is_ab),
        "comments": _str(np.full(n, "NO GROWTH."), no_growth),
    })


def _format_procedures(rng, procs: pd.DataFrame, stays: pd.DataFrame, patients: pd.DataFrame,
                       ids: _Ids) -> tuple[pa.Table, np.ndarray]:
    procs = _sorted(procs.assign(subject=stays["patient"].to_numpy()[procs["stay"]]), ["subject", "minute", "proc"])
    n = len(procs)
    stay, proc = procs["stay"].to_numpy(), procs["proc"].to_numpy()
    start = procs["minute"].to_numpy() * MINUTE
    death = patients["death_time"].to_numpy()[stays["patient"].to_numpy()[stay]]
    end = np.minimum(start + procs["duration_min"].to_numpy().astype(np.int64) * MINUTE, np.maximum(death, start))
    duration = PROCEDURES["kind"].to_numpy()[proc] == "duration"
    category = PROCEDURES["category"].to_numpy()[proc]
    line = np.char.startswith(category.astype(str), "Access Lines")
    location_category = np.where(category == "Access Lines - Peripheral", "Peripheral",
                                 np.where(PROCEDURES["itemid"].to_numpy()[proc] == ARTERIAL_LINE,
                                          "Invasive Arterial", "Invasive Venous"))
    order = ids.sparse("order", rng, n)
    value = np.where(duration, (end - start) / MINUTE, 1.0)
    table = pa.table({
        "subject_id": _int(stays["subject_id"].to_numpy()[stay]), "hadm_id": _int(stays["hadm_id"].to_numpy()[stay]),
        "stay_id": _int(stays["stay_id"].to_numpy()[stay]), "caregiver_id": _int(rng.integers(10_000, 99_999, n)),
        "starttime": _ts(start), "endtime": _ts(end),
        "storetime": _ts(start + rng.integers(0, 120, n) * MINUTE),
        "itemid": _int(PROCEDURES["itemid"].to_numpy()[proc]), "value": _float(value, 1),
        "valueuom": _str(np.full(n, "min"), duration),
        "location": _str(np.asarray(_LINE_SITES, dtype=object)[rng.integers(0, len(_LINE_SITES), n)], line),
        "locationcategory": _str(location_category, line), "orderid": _int(order), "linkorderid": _int(order),
        "ordercategoryname": _str(PROCEDURES["ordercategoryname"].to_numpy()[proc]),
        "ordercategorydescription": _str(np.where(duration, "Continuous Procedure", "Task")),
        "patientweight": _float(stays["weight"].to_numpy()[stay]), "isopenbag": _int(np.zeros(n)),
        "continueinnextdept": _int(np.zeros(n)),
        "statusdescription": _str(np.where(rng.random(n) < 0.9, "FinishedRunning", "Stopped")),
        "originalamount": _float(value, 1), "originalrate": _int(duration.astype(int)),
    })
    return table, PROCEDURES["itemid"].to_numpy()[proc] != INVASIVE_VENTILATION


def _format_ingredients(rng, orders: pd.DataFrame, stays: pd.DataFrame, patients: pd.DataFrame,
                        ids: _Ids) -> pa.Table:
    orders = _sorted(orders.assign(subject=stays["patient"].to_numpy()[orders["stay"]]), ["subject", "minute"])
    order_id = ids.sparse("order", rng, len(orders))
    names = list(ORDER_RECIPES)
    recipe = orders["recipe"].to_numpy()
    parts = []
    for r, name in enumerate(names):
        _, (lo, hi), continuous, contents = ORDER_RECIPES[name]
        o = np.flatnonzero(recipe == r)
        volume = lo + (hi - lo) * orders["u"].to_numpy()[o]
        for ingredient, per_ml in contents:
            parts.append(pd.DataFrame({"order": o, "item": _ING[ingredient], "amount": volume * per_ml,
                                       "continuous": continuous}))
    rows = pd.concat(parts, ignore_index=True).sort_values(["order", "item"], kind="stable")
    o = rows["order"].to_numpy()
    stay = orders["stay"].to_numpy()[o]
    start = orders["minute"].to_numpy()[o] * MINUTE
    death = patients["death_time"].to_numpy()[stays["patient"].to_numpy()[stay]]
    continuous = rows["continuous"].to_numpy()
    hours = np.where(continuous, orders["hours"].to_numpy()[o], 1 / 60)  # boluses end one minute later
    end = np.minimum(start + np.round(hours * 60).astype(np.int64) * MINUTE, np.maximum(death, start + MINUTE))
    amount = np.round(rows["amount"].to_numpy(), 2)
    rate = amount / np.maximum((end - start) / HOUR, 1 / 60)
    unit = INGREDIENTS["unit"].to_numpy()[rows["item"]]
    n = len(rows)
    return pa.table({
        "subject_id": _int(stays["subject_id"].to_numpy()[stay]), "hadm_id": _int(stays["hadm_id"].to_numpy()[stay]),
        "stay_id": _int(stays["stay_id"].to_numpy()[stay]), "caregiver_id": _int(rng.integers(10_000, 99_999, n)),
        "starttime": _ts(start), "endtime": _ts(end), "storetime": _ts(start + rng.integers(0, 60, n) * MINUTE),
        "itemid": _int(INGREDIENTS["itemid"].to_numpy()[rows["item"]]), "amount": _float(amount),
        "amountuom": _str(unit), "rate": _float(rate, 3, valid=continuous),
        "rateuom": _str(np.char.add(unit.astype(str), "/hour"), continuous),
        "orderid": _int(order_id[o]), "linkorderid": _int(order_id[o]),
        "statusdescription": _str(np.where(rng.random(n) < 0.85, "FinishedRunning", "Stopped")),
        "originalamount": _float(amount), "originalrate": _float(rate, 3, valid=continuous),
    })


def _format_planted(planted: pd.DataFrame, stays: pd.DataFrame) -> pa.Table:
    planted = _sorted(planted.assign(stay_id=stays["stay_id"].to_numpy()[planted["stay"]]),
                      ["stay_id", "minute", "rule", "code"])
    stay = planted["stay"].to_numpy()
    time = pc.strftime(_ts(planted["minute"].to_numpy() * MINUTE), format="%Y-%m-%d %H:%M:%S")
    return pa.table({
        "subject_id": _int(stays["subject_id"].to_numpy()[stay]), "stay_id": _int(planted["stay_id"]),
        "rule": _str(planted["rule"]), "table": _str(planted["table"]), "itemid_or_ndc": _str(planted["code"]),
        "time": time,
    })


def _dictionaries() -> dict[str, pa.Table]:
    dx9 = DIAGNOSES[["icd9", "title9"]].set_axis(["icd_code", "long_title"], axis=1).assign(icd_version=9)
    dx10 = DIAGNOSES[["icd10", "title10"]].set_axis(["icd_code", "long_title"], axis=1).assign(icd_version=10)
    dx = pd.concat([dx9, dx10]).sort_values(["icd_version", "icd_code"], kind="stable")
    duration = PROCEDURES["kind"].to_numpy() == "duration"
    n_proc, n_ing = len(PROCEDURES), len(INGREDIENTS)
    return {
        "hosp/d_icd_diagnoses": pa.table({"icd_code": _str(dx["icd_code"]), "icd_version": _int(dx["icd_version"]),
                                          "long_title": _str(dx["long_title"])}),
        "hosp/d_labitems": pa.table({"itemid": _int(LABS["itemid"]), "label": _str(LABS["label"]),
                                     "fluid": _str(LABS["fluid"]), "category": _str(LABS["category"])}),
        "icu/d_items": pa.table({
            "itemid": _int(np.r_[PROCEDURES["itemid"], INGREDIENTS["itemid"]]),
            "label": _str(np.r_[PROCEDURES["label"], INGREDIENTS["label"]]),
            "abbreviation": _str(np.r_[PROCEDURES["abbreviation"], INGREDIENTS["label"]]),
            "linksto": _str(np.r_[np.full(n_proc, "procedureevents"), np.full(n_ing, "ingredientevents")]),
            "category": _str(np.r_[PROCEDURES["category"], np.full(n_ing, "Ingredients")]),
            "unitname": _str(np.r_[np.full(n_proc, "min"), INGREDIENTS["unit"]], np.r_[duration, np.ones(n_ing, bool)]),
            "param_type": _str(np.r_[np.full(n_proc, "Processes"), np.full(n_ing, "Ingredient")]),
            "lownormalvalue": _float(np.zeros(n_proc + n_ing), valid=np.zeros(n_proc + n_ing, bool)),
            "highnormalvalue": _float(np.zeros(n_proc + n_ing), valid=np.zeros(n_proc + n_ing, bool)),
        }),
    }


# --------------------------------------------------------------------------------------
# Defects
# --------------------------------------------------------------------------------------


def _insert_copies(table: pa.Table, rng, candidates: np.ndarray, count: int,
                   column: str | None = None, new_values: np.ndarray | None = None) -> tuple[pa.Table, int]:
    """Insert copies of `count` candidate rows right after their originals; optionally
    overwrite `column` in the copies with `new_values`."""
    pool = np.flatnonzero(candidates)
    count = min(count, len(pool))
    if count == 0:
        return table, 0
    chosen = np.sort(rng.choice(pool, count, replace=False))
    order = np.sort(np.r_[np.arange(table.num_rows), chosen], kind="stable")
    table = table.take(order)
    if column is not None:
        copies = np.flatnonzero(np.r_[False, order[1:] == order[:-1]])
        values = table[column].to_numpy(zero_copy_only=False).astype(np.int64)
        values[copies] = new_values[:count]
        table = table.set_column(table.schema.get_field_index(column), column, _int(values))
    return table, count


# --------------------------------------------------------------------------------------
# One chunk of patients
# --------------------------------------------------------------------------------------


def _chunk(rng, n_patients: int, ids: _Ids, observation_seconds: int, defects_due: dict) -> dict:
    patients = _patients(rng, n_patients, ids)
    adm, stays = _admissions(rng, patients, ids)
    _latents(rng, stays, patients, observation_seconds)
    subject_of = stays["patient"].to_numpy()

    # Labs: ICU draws, and ward draws owned by the admission's first stay (icu=False).
    icu_owner, icu_minute, serial = _icu_lab_draws(rng, stays)
    ward_owner, ward_minute = _ward_events(rng, adm, stays, WARD_LAB_DRAWS_PER_DAY)
    icu = np.r_[np.ones(len(icu_owner), bool), np.zeros(len(ward_owner), bool)]
    labs = _lab_rows(rng, stays, np.r_[icu_owner, ward_owner], np.r_[icu_minute, ward_minute], icu,
                     np.r_[serial, np.zeros(len(ward_owner), bool)])
    labs = _unique(labs.assign(subject=subject_of[labs["stay"]]), ["subject", "lab", "minute"])
    lab = labs["lab"].to_numpy()
    labs["abnormal"] = ((labs["valuenum"].to_numpy() < LABS["ref_lo"].to_numpy()[lab])
                        | (labs["valuenum"].to_numpy() > LABS["ref_hi"].to_numpy()[lab]))  # no range: never

    cultures = _cultures(rng, stays).assign(icu=True)
    cultures["subject"] = subject_of[cultures["stay"]]
    cultures["day"] = cultures["minute"] // (24 * 60)
    cultures["when"] = np.where(cultures["date_only"], cultures["day"] * 24 * 60, cultures["minute"])
    cultures = _unique(cultures, ["subject", "spec", "when"])
    first_bc = np.full(len(stays), -1, np.int64)
    first = cultures[cultures["spec"] == BLOOD_CULTURE].groupby("stay")["minute"].min()
    first_bc[first.index.to_numpy()] = first.to_numpy()

    ward_rx_owner, ward_rx_minute = _ward_events(rng, adm, stays, WARD_PRESCRIPTIONS_PER_DAY)
    ward_rx = pd.DataFrame({"stay": ward_rx_owner, "minute": ward_rx_minute, "icu": False,
                            "drug": BACKGROUND_DRUGS[rng.choice(len(BACKGROUND_DRUGS), len(ward_rx_owner),
                                                                p=_zipf_weights(len(BACKGROUND_DRUGS)))]})
    rx = pd.concat([_prescriptions(rng, stays, first_bc).assign(icu=True), ward_rx], ignore_index=True)
    rx = _unique(rx.assign(subject=subject_of[rx["stay"]]), ["subject", "drug", "minute"])
    first_ndc = np.r_[0, np.cumsum(DRUGS["ndc_variants"].to_numpy())[:-1]]
    drug = rx["drug"].to_numpy()
    rx["ndc_row"] = first_ndc[drug] + (rng.random(len(rx)) * DRUGS["ndc_variants"].to_numpy()[drug]).astype(int)

    procs = _unique(_procedures(rng, stays).assign(icu=True), ["stay", "proc", "minute"])
    orders = _unique(_ingredient_orders(rng, stays), ["stay", "minute"])

    logit, planted = _score(stays, labs, rx, cultures, procs)
    _outcomes(rng, patients, adm, stays, logit)
    labs, rx, cultures, procs, orders = (_alive(t, stays, patients) for t in (labs, rx, cultures, procs, orders))
    planted = planted[stays["kept"].to_numpy()[planted["stay"].to_numpy()]]
    kept = stays[stays["kept"]]

    labs_t, duplicable = _format_labs(rng, labs, stays, ids)
    rx_t, rx_candidates = _format_prescriptions(rng, rx, stays, ids)
    procs_t, proc_candidates = _format_procedures(rng, procs, stays, patients, ids)
    placed = {}
    labs_t, placed["duplicate_lab_rows"] = _insert_copies(labs_t, rng, duplicable, defects_due["duplicate_lab_rows"])
    done = ORPHAN_PRESCRIPTION_ROWS - defects_due["orphan_prescription_rows"]
    rx_t, placed["orphan_prescription_rows"] = _insert_copies(
        rx_t, rng, rx_candidates, defects_due["orphan_prescription_rows"], "hadm_id",
        ORPHAN_HADM_ID_START + done + np.arange(ORPHAN_PRESCRIPTION_ROWS))
    done = ORPHAN_PROCEDURE_ROWS - defects_due["orphan_procedureevent_rows"]
    procs_t, placed["orphan_procedureevent_rows"] = _insert_copies(
        procs_t, rng, proc_candidates, defects_due["orphan_procedureevent_rows"], "stay_id",
        ORPHAN_STAY_ID_START + done + np.arange(ORPHAN_PROCEDURE_ROWS))

    eligible = kept["eligible"].to_numpy()
    fired = planted.drop_duplicates(["stay", "rule"])
    fired = fired[stays["eligible"].to_numpy()[fired["stay"].to_numpy()]]
    tables = {
        "hosp/patients": _format_patients(patients),
        "hosp/admissions": _format_admissions(adm[adm["kept"]]),
        "hosp/diagnoses_icd": _format_diagnoses(adm, _diagnoses(rng, adm, stays)),
        "hosp/prescriptions": rx_t,
        "hosp/labevents": labs_t,
        "hosp/microbiologyevents": _format_micro(rng, cultures, stays, ids),
        "icu/icustays": _format_icustays(kept),
        "icu/procedureevents": procs_t,
        "icu/ingredientevents": _format_ingredients(rng, orders, stays, patients, ids),
        "truth/stay_risk": pa.table({
            "subject_id": _int(kept["subject_id"]), "hadm_id": _int(kept["hadm_id"]), "stay_id": _int(kept["stay_id"]),
            "logit": _float(kept["logit"]), "true_risk": _float(kept["true_risk"]),
            "eligible": pa.array(eligible), "died_after_cutoff": pa.array(kept["died_after_cutoff"].to_numpy()),
        }),
        "truth/planted_events": _format_planted(planted, stays),
    }
    return {
        "tables": tables, "defects": placed,
        "eligible_risk": kept["true_risk"].to_numpy()[eligible],
        "eligible_died": kept["died_after_cutoff"].to_numpy()[eligible],
        "rule_stays": fired["rule"].value_counts().to_dict(),
        "counts": {"admissions": int(adm["kept"].sum()), "in_hospital_deaths": int(adm["hospital_expire_flag"].sum()),
                   "short_stay_deaths": int((kept["death_here"] & ~kept["eligible"]).sum())},
    }


# --------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------


def generate(out_dir: str | os.PathLike, n_patients: int, seed: int, observation_hours: float = 48.0) -> dict:
    """Write the synthetic MIMIC-IV folder and its truth to `out_dir` (replaced atomically).

    Returns a summary: rows per table, stays, deaths, mortality and oracle AUROC among
    stays that last the observation window, stays per rule, and the defect counts.
    """
    from sklearn.metrics import roc_auc_score

    if int(n_patients) != n_patients or n_patients < 1:
        raise ValueError(f"n_patients must be a positive integer, got {n_patients!r}")
    observation_seconds = observation_hours * HOUR
    if observation_hours <= 0 or observation_seconds != round(observation_seconds):
        raise ValueError(f"observation_hours must be positive and a whole number of seconds, got {observation_hours!r}")
    observation_seconds = int(round(observation_seconds))
    due = {"duplicate_lab_rows": DUPLICATE_LAB_ROWS, "orphan_prescription_rows": ORPHAN_PRESCRIPTION_ROWS,
           "orphan_procedureevent_rows": ORPHAN_PROCEDURE_ROWS}
    ids = _Ids()
    risk, died, rule_stays = [], [], {r.name: 0 for r in RULES}
    counts = {"admissions": 0, "in_hospital_deaths": 0, "short_stay_deaths": 0}
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        writers = {name: _CsvGzWriter(tmp / f"{name}.csv.gz", columns)
                   for name, columns in {**TABLE_COLUMNS, **TRUTH_COLUMNS}.items()}
        try:
            for name, table in _dictionaries().items():
                writers[name].write(table)
            for chunk, start in enumerate(range(0, int(n_patients), CHUNK_PATIENTS)):
                size = min(CHUNK_PATIENTS, int(n_patients) - start)
                result = _chunk(np.random.default_rng([seed, chunk]), size, ids, observation_seconds, due)
                for name, table in result["tables"].items():
                    writers[name].write(table)
                for name, placed in result["defects"].items():
                    due[name] -= placed
                for name, value in result["counts"].items():
                    counts[name] += value
                for name, value in result["rule_stays"].items():
                    rule_stays[name] += int(value)
                risk.append(result["eligible_risk"])
                died.append(result["eligible_died"])
                log.info("synthetic: %d/%d patients", start + size, n_patients)
        finally:
            for w in writers.values():
                w.close()
        if ids.next["hadm"] >= ORPHAN_HADM_ID_START or ids.next["stay"] >= ORPHAN_STAY_ID_START:
            raise RuntimeError("generated ids reached the range reserved for orphan rows; lower n_patients")
        defects = {
            "duplicate_lab_rows": DUPLICATE_LAB_ROWS - due["duplicate_lab_rows"],
            "orphan_prescription_rows": ORPHAN_PRESCRIPTION_ROWS - due["orphan_prescription_rows"],
            "orphan_procedureevent_rows": ORPHAN_PROCEDURE_ROWS - due["orphan_procedureevent_rows"],
        }
        risk, died = np.concatenate(risk), np.concatenate(died)
        rows = {name: w.rows for name, w in writers.items()}
        summary = {
            "patients": int(n_patients), "admissions": counts["admissions"], "icu_stays": rows["icu/icustays"],
            "eligible_stays": int(len(risk)), "in_hospital_deaths": counts["in_hospital_deaths"],
            "short_stay_deaths": counts["short_stay_deaths"], "died_after_cutoff": int(died.sum()),
            "mortality_eligible": float(died.mean()) if len(died) else None,
            "mean_true_risk_eligible": float(risk.mean()) if len(risk) else None,
            "oracle_auroc": float(roc_auc_score(died, risk)) if 0 < died.sum() < len(died) else None,
            "stays_per_rule": rule_stays, "planted_events": rows["truth/planted_events"],
            "defects": defects, "rows": {n: r for n, r in rows.items() if not n.startswith("truth/")},
        }
        (tmp / "truth" / "rules.json").write_text(json.dumps(_rules_document(
            observation_hours, seed, n_patients, defects), indent=2) + "\n")
    return summary


def _rules_document(observation_hours: float, seed: int, n_patients: int, defects: dict) -> dict:
    return {
        "observation_hours": observation_hours,
        "window": "[intime, intime + observation_hours); only stays lasting at least observation_hours can die "
                  "with probability true_risk = sigmoid(logit)",
        "base_logit": BASE_LOGIT,
        "age": {"effect_per_decade_over_60": AGE_EFFECT_PER_DECADE,
                "definition": "anchor_age + year(intime) - anchor_year"},
        "rules": [
            {"name": r.name, "effect": r.effect, "table": r.table, "description": r.description}
            for r in RULES
        ],
        "codes": {
            "norepinephrine_ndcs": sorted(DRUG_NDCS.loc[DRUG_NDCS["drug_index"] == NOREPINEPHRINE, "ndc"]),
            "lactate_itemid": LACTATE, "lactate_threshold": LACTATE_THRESHOLD,
            "blood_culture_spec_itemid": int(SPECIMENS["spec_itemid"][BLOOD_CULTURE]),
            "invasive_ventilation_itemid": INVASIVE_VENTILATION,
            "creatinine_itemid": CREATININE, "potassium_itemid": POTASSIUM,
            "troponin_t_itemid": TROPONIN_T, "troponin_recent_hours": TROPONIN_RECENT_HOURS,
        },
        "defects": defects,
        "generator": {"seed": seed, "n_patients": n_patients, "chunk_patients": CHUNK_PATIENTS},
    }
