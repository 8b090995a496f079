"""Shared fixtures: a hand-built MIMIC-IV folder whose every row's fate is known."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

DEMO = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mimic-iii-demo-1.4"


def write_table(root: Path, stem: str, rows: list[dict], columns: list[str]) -> None:
    path = root / f"{stem}.csv.gz"
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=columns).to_csv(path, index=False)


PROC_COLUMNS = ["subject_id", "hadm_id", "stay_id", "starttime", "endtime", "itemid", "value", "valueuom"]
MICRO_COLUMNS = ["subject_id", "hadm_id", "micro_specimen_id", "chartdate", "charttime", "spec_itemid",
                 "spec_type_desc", "test_itemid", "org_itemid", "org_name", "ab_itemid", "ab_name",
                 "storedate", "storetime"]
INGREDIENT_COLUMNS = ["subject_id", "hadm_id", "stay_id", "starttime", "endtime", "itemid", "amount", "amountuom"]


def append_rows(root: Path, stem: str, rows: list[dict], columns: list[str]) -> None:
    """Add rows to a table written by write_table (or create it)."""
    path = root / f"{stem}.csv.gz"
    old = [pd.read_csv(path, dtype=str)] if path.exists() else []
    new = pd.DataFrame(rows, columns=columns, dtype=object)  # object: ids with a None stay integers
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.concat([*old, new], ignore_index=True).to_csv(path, index=False)


def build_tiny_mimic4(root: Path) -> Path:
    """Four ICU stays, two kept; events chosen to hit every drop reason once.

    stay 100 (subject 1, 70 y): kept, dies 2150-01-05 12:00 (after the 48 h cutoff)
    stay 200 (subject 2, 50 y): kept, survives, discharged 2150-02-08
    stay 300 (subject 3, 16 y): excluded, under_min_age
    stay 400 (subject 2): excluded, shorter_than_window (19 h)
    """
    write_table(root, "hosp/patients", [
        dict(subject_id=1, gender="F", anchor_age=70, anchor_year=2150, anchor_year_group="2008 - 2010", dod="2150-01-05"),
        dict(subject_id=2, gender="M", anchor_age=50, anchor_year=2150, anchor_year_group="2008 - 2010", dod=None),
        dict(subject_id=3, gender="M", anchor_age=16, anchor_year=2150, anchor_year_group="2008 - 2010", dod=None),
    ], ["subject_id", "gender", "anchor_age", "anchor_year", "anchor_year_group", "dod"])
    adm_cols = ["subject_id", "hadm_id", "admittime", "dischtime", "deathtime", "admission_type",
                "insurance", "marital_status", "race", "hospital_expire_flag"]
    write_table(root, "hosp/admissions", [
        dict(subject_id=1, hadm_id=11, admittime="2150-01-01 00:00:00", dischtime="2150-01-05 12:00:00",
             deathtime="2150-01-05 12:00:00", admission_type="EW EMER.", insurance="Medicare",
             marital_status="WIDOWED", race="WHITE", hospital_expire_flag=1),
        dict(subject_id=2, hadm_id=21, admittime="2150-02-01 00:00:00", dischtime="2150-02-08 00:00:00",
             deathtime=None, admission_type="URGENT", insurance="Other", marital_status="MARRIED",
             race="BLACK/AFRICAN AMERICAN", hospital_expire_flag=0),
        dict(subject_id=3, hadm_id=31, admittime="2150-04-01 00:00:00", dischtime="2150-04-09 00:00:00",
             deathtime=None, admission_type="URGENT", insurance="Other", marital_status=None,
             race="WHITE", hospital_expire_flag=0),
        dict(subject_id=2, hadm_id=22, admittime="2150-03-01 00:00:00", dischtime="2150-03-03 00:00:00",
             deathtime=None, admission_type="URGENT", insurance="Other", marital_status="MARRIED",
             race="BLACK/AFRICAN AMERICAN", hospital_expire_flag=0),
    ], adm_cols)
    write_table(root, "icu/icustays", [
        dict(subject_id=1, hadm_id=11, stay_id=100, first_careunit="MICU", intime="2150-01-01 06:00:00", outtime="2150-01-05 12:00:00"),
        dict(subject_id=2, hadm_id=21, stay_id=200, first_careunit="SICU", intime="2150-02-01 06:00:00", outtime="2150-02-04 06:00:00"),
        dict(subject_id=3, hadm_id=31, stay_id=300, first_careunit="MICU", intime="2150-04-01 06:00:00", outtime="2150-04-05 06:00:00"),
        dict(subject_id=2, hadm_id=22, stay_id=400, first_careunit="MICU", intime="2150-03-01 01:00:00", outtime="2150-03-01 20:00:00"),
    ], ["subject_id", "hadm_id", "stay_id", "first_careunit", "intime", "outtime"])
    lab_cols = ["subject_id", "hadm_id", "itemid", "charttime", "value", "valuenum", "valueuom", "flag"]
    creat = dict(subject_id=1, hadm_id=11, itemid=50912, value="2.3", valuenum=2.3, valueuom="mg/dL", flag="abnormal")
    write_table(root, "hosp/labevents", [
        {**creat, "charttime": "2150-01-01 07:00:00"},                       # kept, hour 1
        {**creat, "charttime": "2150-01-01 07:00:00"},                       # duplicate
        {**creat, "charttime": "2150-01-04 00:00:00", "flag": None},         # kept, after cutoff
        {**creat, "charttime": "2149-12-31 23:00:00"},                       # outside_stay
        {**creat, "subject_id": 2, "hadm_id": 22, "charttime": "2150-03-01 05:00:00"},  # stay 400: not in cohort
        {**creat, "subject_id": 99, "hadm_id": None, "charttime": "2150-01-01 07:00:00"},  # orphan subject
        {**creat, "hadm_id": None, "charttime": "2150-01-01 08:00:00", "value": None, "valuenum": None},  # kept, no hadm
    ], lab_cols)
    rx_cols = ["subject_id", "hadm_id", "starttime", "drug", "ndc", "prod_strength", "dose_val_rx", "dose_unit_rx", "route"]
    write_table(root, "hosp/prescriptions", [
        dict(subject_id=2, hadm_id=21, starttime="2150-02-01 08:00:00", drug="Norepinephrine", ndc="00409144901",
             prod_strength="4mg/4mL", dose_val_rx="0.1", dose_unit_rx="mcg/kg/min", route="IV DRIP"),
        dict(subject_id=2, hadm_id=999, starttime="2150-02-01 08:00:00", drug="Heparin", ndc="0",
             prod_strength=None, dose_val_rx="5000", dose_unit_rx="UNIT", route="SC"),  # orphan admission
        dict(subject_id=2, hadm_id=21, starttime=None, drug="Heparin", ndc="0",
             prod_strength=None, dose_val_rx="5000", dose_unit_rx="UNIT", route="SC"),  # missing_time
    ], rx_cols)
    # procedure values (durations) are known at endtime; this one ends before the cutoff
    write_table(root, "icu/procedureevents", [
        dict(subject_id=1, hadm_id=11, stay_id=100, starttime="2150-01-01 10:00:00", endtime="2150-01-01 20:00:00",
             itemid=225792, value=600, valueuom="min"),
        dict(subject_id=1, hadm_id=11, stay_id=555, starttime="2150-01-01 10:00:00", endtime="2150-01-01 20:00:00",
             itemid=225792, value=600, valueuom="min"),  # orphan stay
    ], PROC_COLUMNS)
    # culture results are known when stored; this one is stored before stay 200's cutoff
    culture = dict(subject_id=2, hadm_id=21, micro_specimen_id=7, chartdate="2150-02-02", charttime="2150-02-02 00:00:00",
                   spec_itemid=70012, spec_type_desc="BLOOD CULTURE", test_itemid=90201, org_itemid=80002, org_name="E. COLI",
                   storedate="2150-02-02", storetime="2150-02-02 20:00:00")
    write_table(root, "hosp/microbiologyevents", [
        {**culture, "ab_itemid": None, "ab_name": None},
        {**culture, "ab_itemid": 90015, "ab_name": "VANCOMYCIN"},  # susceptibility row: merged
    ], MICRO_COLUMNS)
    write_table(root, "hosp/d_labitems", [dict(itemid=50912, label="Creatinine")], ["itemid", "label"])
    write_table(root, "icu/d_items", [dict(itemid=225792, label="Invasive Ventilation")], ["itemid", "label"])
    write_table(root, "hosp/diagnoses_icd", [
        dict(subject_id=1, hadm_id=11, seq_num=1, icd_code="4275", icd_version=9),
        dict(subject_id=1, hadm_id=11, seq_num=2, icd_code="I10", icd_version=10),
        dict(subject_id=2, hadm_id=21, seq_num=1, icd_code="0389", icd_version=9),
        dict(subject_id=3, hadm_id=31, seq_num=1, icd_code="V3000", icd_version=9),  # patient not in cohort
    ], ["subject_id", "hadm_id", "seq_num", "icd_code", "icd_version"])
    # icu/ingredientevents is deliberately absent: an optional table.
    return root


@pytest.fixture
def tiny_mimic4(tmp_path: Path) -> Path:
    return build_tiny_mimic4(tmp_path / "mimic4")
