import gzip
import hashlib
import logging
import re
import shutil
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from conftest import DEMO, INGREDIENT_COLUMNS, MICRO_COLUMNS, PROC_COLUMNS, append_rows, build_tiny_mimic4
from ehrseq.schema import EVENT_COLUMNS, EVENT_TYPES
from ehrseq.sources.extract import COHORT_COLUMNS, extract, load_source
from ehrseq.sources.tables import SourceDataError
from ehrseq.vocab import Vocab

SPLIT = {"train": 0.7, "val": 0.15, "test": 0.15}
LAB_COLUMNS = ["subject_id", "hadm_id", "itemid", "charttime", "storetime", "value", "valuenum", "valueuom", "flag"]


@pytest.fixture
def tiny_mimic4(tmp_path):
    """conftest's folder with a MIMIC-IV labevents.storetime (required since lab values
    are withheld until stored): each lab's result is stored 30 minutes after its draw."""
    root = build_tiny_mimic4(tmp_path / "mimic4")
    path = root / "hosp" / "labevents.csv.gz"
    labs = pd.read_csv(path, dtype=str)
    labs["storetime"] = (pd.to_datetime(labs["charttime"]) + pd.Timedelta(minutes=30)).dt.strftime("%Y-%m-%d %H:%M:%S")
    labs[LAB_COLUMNS].to_csv(path, index=False)
    return root


def run(source, path, out: Path, hours=48.0, threads=None):
    metrics = extract(source, path, out / "events.parquet", out / "cohort.parquet", out / "diagnoses.parquet",
                      observation_hours=hours, min_age=18, split_fractions=SPLIT, seed=0, threads=threads)
    return (metrics, pd.read_parquet(out / "events.parquet"), pd.read_parquet(out / "cohort.parquet"),
            pd.read_parquet(out / "diagnoses.parquet"))


def test_cohort_rows_and_labels(tiny_mimic4, tmp_path):
    metrics, _, cohort, _ = run("mimic4", tiny_mimic4, tmp_path)
    assert list(cohort.columns) == COHORT_COLUMNS
    assert cohort["stay_id"].tolist() == [100, 200]
    s100, s200 = cohort.iloc[0], cohort.iloc[1]
    assert s100["age"] == 70 and s200["age"] == 50
    assert s100["cutoff"] == pd.Timestamp("2150-01-03 06:00:00")
    assert (s100["mortality"], s100["event"]) == (1, 1)
    assert s100["event_hours"] == pytest.approx(4 * 24 + 6)       # death 2150-01-05 12:00
    assert (s200["mortality"], s200["event"]) == (0, 0)
    assert s200["event_hours"] == pytest.approx(6 * 24 + 18)      # censored at discharge
    assert metrics["stays"] == {"read": 4, "kept": 2, "excluded": {"under_min_age": 1, "shorter_than_window": 1}}


def test_event_rows_text_and_drop_counts(tiny_mimic4, tmp_path):
    metrics, events, _, _ = run("mimic4", tiny_mimic4, tmp_path)
    assert list(events.columns) == list(EVENT_COLUMNS)
    got = events[["stay_id", "hours", "event_type", "code", "after_cutoff"]].values.tolist()
    assert got == [
        [100, 1.0, "lab", "LAB//50912", False],
        [100, 2.0, "lab", "LAB//50912", False],
        [100, 4.0, "procedure", "ITEM//225792", False],
        [100, 66.0, "lab", "LAB//50912", True],
        [200, 2.0, "prescription", "NDC//00409144901", False],
        [200, 18.0, "microbiology", "MICRO//70012//80002", False],
    ]
    assert events["text"].tolist() == [
        "Lab: Creatinine 2.3 mg/dL (abnormal)",
        "Lab: Creatinine mg/dL (abnormal)",
        "Procedure: Invasive Ventilation 600.0 min",
        "Lab: Creatinine 2.3 mg/dL",
        "Prescription: Norepinephrine 4mg/4mL IV DRIP",
        "Microbiology: BLOOD CULTURE - E. COLI",
    ]
    assert events.loc[0, "value"] == 2.3 and events.loc[0, "unit"] == "mg/dL" and events.loc[0, "flag"] == "abnormal"
    assert events["hadm_id"].tolist() == [11, 11, 11, 11, 21, 21]  # labs without hadm_id get the stay's
    ev = metrics["events"]
    assert ev["kept"] == {"prescription": 1, "procedure": 1, "lab": 3, "microbiology": 1, "ingredient": 0}
    assert ev["after_cutoff"] == 1
    dropped = {reason: {k: n for k, n in kinds.items() if n} for reason, kinds in ev["dropped"].items()}
    assert dropped == {
        "duplicate": {"lab": 1},
        "outside_stay": {"lab": 1},
        "stay_not_in_cohort": {"lab": 1},
        "orphan": {"lab": 1, "prescription": 1, "procedure": 1},
        "missing_time": {"prescription": 1},
    }
    assert ev["microbiology_susceptibility_rows_merged"] == 1
    # every source event is accounted for: kept or dropped for one reason
    read = metrics["tables_read"]
    assert ev["kept_total"] + ev["dropped_total"] + ev["microbiology_susceptibility_rows_merged"] == (
        read["labevents"] + read["prescriptions"] + read["procedureevents"] + read["microbiologyevents"]
    )


def add_results_known_late(root: Path) -> None:
    """Stay 100 (cutoff 2150-01-03 06:00): events that start before the cutoff and whose
    value or result becomes known only after it, next to ones known in time."""
    stay = dict(subject_id=1, hadm_id=11, stay_id=100)
    append_rows(root, "icu/procedureevents", [
        # ventilation from hour 30 to hour 100: its duration is known only at the end
        {**stay, "starttime": "2150-01-02 12:00:00", "endtime": "2150-01-05 10:00:00", "itemid": 225792,
         "value": 4200, "valueuom": "min"},
        # after the cutoff: the full value, as before
        {**stay, "starttime": "2150-01-04 01:00:00", "endtime": "2150-01-04 03:00:00", "itemid": 225792,
         "value": 120, "valueuom": "min"},
    ], PROC_COLUMNS)
    append_rows(root, "icu/ingredientevents", [
        {**stay, "starttime": "2150-01-02 00:00:00", "endtime": "2150-01-02 01:00:00", "itemid": 225166,
         "amount": 40, "amountuom": "mEq"},                      # delivered before the cutoff
        {**stay, "starttime": "2150-01-03 00:00:00", "endtime": "2150-01-03 08:00:00", "itemid": 225158,
         "amount": 500, "amountuom": "mL"},                      # amount known at 08:00, after the cutoff
    ], INGREDIENT_COLUMNS)
    append_rows(root, "icu/d_items", [dict(itemid=225166, label="Potassium Chloride"),
                                      dict(itemid=225158, label="NaCl 0.9%")], ["itemid", "label"])
    blood = dict(subject_id=1, hadm_id=11, micro_specimen_id=8, chartdate="2150-01-02", charttime="2150-01-02 08:00:00",
                 spec_itemid=70012, spec_type_desc="BLOOD CULTURE", test_itemid=90201,
                 storedate="2150-01-04", storetime="2150-01-04 09:00:00")
    append_rows(root, "hosp/microbiologyevents", [
        # drawn at hour 26, result stored at hour 75: two organisms and a susceptibility row
        {**blood, "org_itemid": 80023, "org_name": "STAPH AUREUS COAG +"},
        {**blood, "org_itemid": 80023, "org_name": "STAPH AUREUS COAG +", "ab_itemid": 90025, "ab_name": "OXACILLIN"},
        {**blood, "org_itemid": 80002, "org_name": "E. COLI"},
        # a urine culture with only a store date (the cutoff's day): known by the end of that day
        dict(subject_id=1, hadm_id=11, micro_specimen_id=9, chartdate="2150-01-02", charttime="2150-01-02 09:00:00",
             spec_itemid=70079, spec_type_desc="URINE", test_itemid=90039, storedate="2150-01-03"),
        # drawn after the cutoff: the full result
        {**blood, "micro_specimen_id": 10, "charttime": "2150-01-04 00:00:00", "chartdate": "2150-01-04",
         "storetime": "2150-01-05 10:00:00", "storedate": "2150-01-05", "org_itemid": 80002, "org_name": "E. COLI"},
    ], MICRO_COLUMNS)


def test_events_schema_does_not_depend_on_the_data(tiny_mimic4, tmp_path):
    """code and text are optional parquet columns like value, unit and flag, though no kept
    event lacks them: DuckDB would write a column whose statistics show no NULL as required."""
    run("mimic4", tiny_mimic4, tmp_path)
    schema = pq.read_schema(tmp_path / "events.parquet")
    assert {"code", "text", "value", "unit", "flag"} <= {f.name for f in schema if f.nullable}


def test_values_known_after_the_cutoff_are_withheld_before_it(tiny_mimic4, tmp_path):
    add_results_known_late(tiny_mimic4)
    metrics, events, _, _ = run("mimic4", tiny_mimic4, tmp_path)
    assert list(events.columns) == list(EVENT_COLUMNS)  # known_time stays internal
    s100 = events[events["stay_id"] == 100]
    got = s100[["hours", "event_type", "code", "text", "after_cutoff"]].values.tolist()
    assert got == [
        [1.0, "lab", "LAB//50912", "Lab: Creatinine 2.3 mg/dL (abnormal)", False],
        [2.0, "lab", "LAB//50912", "Lab: Creatinine mg/dL (abnormal)", False],
        [4.0, "procedure", "ITEM//225792", "Procedure: Invasive Ventilation 600.0 min", False],  # ended at hour 14
        [18.0, "ingredient", "ITEM//225166", "Ingredient: Potassium Chloride 40.0 mEq", False],
        [26.0, "microbiology", "MICRO//70012//PENDING", "Microbiology: BLOOD CULTURE - pending", False],
        [27.0, "microbiology", "MICRO//70079//PENDING", "Microbiology: URINE - pending", False],
        [30.0, "procedure", "ITEM//225792", "Procedure: Invasive Ventilation", False],
        [42.0, "ingredient", "ITEM//225158", "Ingredient: NaCl 0.9%", False],
        [66.0, "lab", "LAB//50912", "Lab: Creatinine 2.3 mg/dL", True],
        [66.0, "microbiology", "MICRO//70012//80002", "Microbiology: BLOOD CULTURE - E. COLI", True],
        [67.0, "procedure", "ITEM//225792", "Procedure: Invasive Ventilation 120.0 min", True],
    ]
    by_hour = s100.set_index("hours")
    # the withheld value is gone, not only from the text; what was known in time stays
    assert pd.isna(by_hour.loc[30.0, "value"]) and pd.isna(by_hour.loc[42.0, "value"])
    assert by_hour.loc[4.0, "value"] == 600 and by_hour.loc[18.0, "value"] == 40 and by_hour.loc[67.0, "value"] == 120
    assert by_hour.loc[30.0, "unit"] == "min"  # the item's unit is known at the start
    assert pd.isna(by_hour.loc[26.0, "flag"]) and pd.isna(by_hour.loc[26.0, "value"])
    pre = s100[~s100["after_cutoff"]]
    assert not pre["text"].str.contains("4200|500.0|STAPH|E. COLI|no growth").any()
    assert not pre["code"].str.contains("80023|80002|NEG").any()
    # the culture drawn before the cutoff at stay 200 was stored before it: full result
    s200 = events[(events["stay_id"] == 200) & (events["event_type"] == "microbiology")]
    assert s200["code"].tolist() == ["MICRO//70012//80002"]

    ev = metrics["events"]
    assert ev["values_withheld_at_cutoff"] == {
        "prescription": 0, "procedure": 1, "lab": 0, "microbiology": 2, "ingredient": 1}
    assert ev["values_withheld_at_cutoff_total"] == 4
    assert ev["kept"] == {"prescription": 1, "procedure": 3, "lab": 3, "microbiology": 4, "ingredient": 2}
    # the two organisms of one culture show as one pending culture: the second is counted
    assert ev["dropped"]["merged_when_withheld"] == {
        "prescription": 0, "procedure": 0, "lab": 0, "microbiology": 1, "ingredient": 0}
    read = metrics["tables_read"]
    assert ev["kept_total"] + ev["dropped_total"] + ev["microbiology_susceptibility_rows_merged"] == sum(
        read[t] for t in ("labevents", "prescriptions", "procedureevents", "microbiologyevents", "ingredientevents"))


def test_what_is_withheld_depends_on_the_window(tiny_mimic4, tmp_path):
    """A 72 h window (cutoff 2150-01-04 06:00) sees the urine result (known by the end of
    2150-01-03), the NaCl amount (known 2150-01-03 08:00) and the hour-67 ventilation's
    duration (ended 2150-01-04 03:00); not the first ventilation's duration (known
    2150-01-05 10:00) nor either blood culture (stored 2150-01-04 09:00 and 2150-01-05 10:00)."""
    add_results_known_late(tiny_mimic4)
    metrics, events, _, _ = run("mimic4", tiny_mimic4, tmp_path, hours=72)
    pre = events[(events["stay_id"] == 100) & ~events["after_cutoff"]].set_index("hours")
    assert pre.loc[27.0, "text"] == "Microbiology: URINE - no growth" and pre.loc[27.0, "code"] == "MICRO//70079//NEG"
    assert pre.loc[42.0, "text"] == "Ingredient: NaCl 0.9% 500.0 mL" and pre.loc[42.0, "value"] == 500
    assert pre.loc[30.0, "text"] == "Procedure: Invasive Ventilation"
    assert pre.loc[67.0, "text"] == "Procedure: Invasive Ventilation 120.0 min"
    micro = pre[pre["event_type"] == "microbiology"]
    assert micro["code"].tolist() == ["MICRO//70012//PENDING", "MICRO//70079//NEG", "MICRO//70012//PENDING"]
    assert metrics["events"]["values_withheld_at_cutoff"] == {
        "prescription": 0, "procedure": 1, "lab": 0, "microbiology": 2, "ingredient": 0}


def test_missing_optional_table_is_reported(tiny_mimic4, tmp_path, caplog):
    metrics, *_ = run("mimic4", tiny_mimic4, tmp_path)
    assert metrics["missing_tables"] == ["ingredientevents"]
    assert metrics["tables_read"]["ingredientevents"] == 0
    assert "ingredientevents not found" in caplog.text


def test_diagnoses_only_for_cohort_patients(tiny_mimic4, tmp_path):
    metrics, _, cohort, diagnoses = run("mimic4", tiny_mimic4, tmp_path)
    assert diagnoses["code"].tolist() == ["ICD9//4275", "ICD10//I10", "ICD9//0389"]
    assert metrics["diagnoses"] == {"read": 4, "kept": 3,
                                    "dropped": {"orphan_or_missing_code": 0, "patient_not_in_cohort": 1}}
    assert set(diagnoses["split"]) <= set(cohort["split"])


def test_observation_window_moves_cutoff(tiny_mimic4, tmp_path):
    metrics, events, cohort, _ = run("mimic4", tiny_mimic4, tmp_path, hours=24)
    assert cohort["cutoff"].iloc[0] == pd.Timestamp("2150-01-02 06:00:00")
    # stay 400 (19 h) is still too short; the 66 h lab is still after the cutoff
    assert metrics["stays"]["excluded"]["shorter_than_window"] == 1
    assert events["after_cutoff"].sum() == 1


def test_spreadsheet_dates_stop_with_file_column_and_value(tiny_mimic4, tmp_path):
    path = tiny_mimic4 / "hosp" / "admissions.csv.gz"
    adm = pd.read_csv(path)
    adm.loc[1, "admittime"] = "10/23/64 21:09"
    adm.to_csv(path, index=False)
    with pytest.raises(SourceDataError, match=r"admissions\.csv\.gz: column 'admittime'.*'10/23/64 21:09'"):
        run("mimic4", tiny_mimic4, tmp_path / "out")


def test_missing_required_column_is_named(tiny_mimic4, tmp_path):
    path = tiny_mimic4 / "icu" / "icustays.csv.gz"
    pd.read_csv(path).drop(columns=["intime"]).to_csv(path, index=False)
    with pytest.raises(SourceDataError, match=r"icustays\.csv\.gz: column 'intime' is missing"):
        run("mimic4", tiny_mimic4, tmp_path / "out")


def test_missing_required_table_is_named(tiny_mimic4, tmp_path):
    (tiny_mimic4 / "hosp" / "patients.csv.gz").unlink()
    with pytest.raises(SourceDataError, match="required table hosp/patients not found"):
        run("mimic4", tiny_mimic4, tmp_path / "out")


def test_plain_csv_and_parquet_sources_give_the_same_result(tiny_mimic4, tmp_path):
    _, ref_events, ref_cohort, _ = run("mimic4", tiny_mimic4, tmp_path / "a")
    for path in list(tiny_mimic4.rglob("*.csv.gz")):
        df = pd.read_csv(path, dtype=str)
        target = path.with_name(path.name.replace(".csv.gz", ""))
        if "labevents" in path.name:
            df.to_parquet(target.with_suffix(".parquet"))
        else:
            with gzip.open(path) as src, open(target.with_suffix(".csv"), "wb") as dst:
                shutil.copyfileobj(src, dst)
        path.unlink()
    _, events, cohort, _ = run("mimic4", tiny_mimic4, tmp_path / "b")
    pd.testing.assert_frame_equal(events, ref_events)
    pd.testing.assert_frame_equal(cohort, ref_cohort)


@pytest.fixture
def demo():
    if not DEMO.is_dir():
        pytest.skip(f"MIMIC-III demo not found at {DEMO}")
    return DEMO


def test_mimic3_demo_counts(demo, tmp_path):
    metrics, events, cohort, diagnoses = run("mimic3", demo, tmp_path)
    assert metrics["tables_read"]["admissions"] == 129
    assert metrics["tables_read"]["icustays"] == 136
    assert metrics["tables_read"]["patients"] == 100
    assert metrics["missing_tables"] == ["inputevents_cv", "labevents"]  # the demo lacks both: zeros
    assert metrics["events"]["ingredient_rows_by_system"]["carevue"] == {"read": 0, "kept": 0}
    assert metrics["events"]["kept"]["lab"] == 0
    assert metrics["stays"]["read"] == 136
    assert metrics["stays"]["kept"] + sum(metrics["stays"]["excluded"].values()) == 136
    assert len(cohort) == metrics["stays"]["kept"] > 50
    # every kept event lies inside its stay, and the after_cutoff flag matches the cutoff
    joined = events.merge(cohort[["stay_id", "intime", "outtime", "cutoff"]], on="stay_id")
    assert len(joined) == len(events)
    assert (joined["time"] >= joined["intime"]).all() and (joined["time"] <= joined["outtime"]).all()
    assert (joined["after_cutoff"] == (joined["time"] >= joined["cutoff"])).all()
    # ages over 89 are shifted to ~300 in MIMIC-III: capped, never 300
    assert cohort["age"].max() <= 90
    # every split holds both outcomes (the demo is small; a naive split can miss deaths)
    assert all(metrics["splits"][s]["deaths"] > 0 for s in ("train", "val", "test"))
    assert all(metrics["splits"][s]["deaths"] < metrics["splits"][s]["stays"] for s in ("train", "val", "test"))
    assert diagnoses["code"].str.startswith("ICD9//").all()


def test_mimic3_demo_withholds_what_is_known_after_the_cutoff(demo, tmp_path):
    metrics, events, cohort, _ = run("mimic3", demo, tmp_path)
    withheld = metrics["events"]["values_withheld_at_cutoff"]
    pre = events[~events["after_cutoff"]]
    # MIMIC-III stores no result time for cultures: every culture before the cutoff is pending
    micro = pre[pre["event_type"] == "microbiology"]
    assert len(micro) > 0 and micro["code"].str.endswith("//PENDING").all()
    assert micro["text"].str.endswith(" - pending").all() and micro["flag"].isna().all()
    assert withheld["microbiology"] == len(micro)
    assert not events.loc[events["after_cutoff"] & (events["event_type"] == "microbiology"), "code"].str.endswith(
        "PENDING").any()
    # procedures and inputs: a value shown before the cutoff comes from a row that ended
    # before it; a row that ended at or after it shows up without its value
    cut = cohort.set_index("stay_id")["cutoff"]
    key = ["stay_id", "time", "itemid"]
    tables = (("PROCEDUREEVENTS_MV", "procedure", "value"), ("INPUTEVENTS_MV", "ingredient", "amount"))
    for table, kind, amount in tables:
        src = pd.read_csv(demo / f"{table}.csv", parse_dates=["starttime", "endtime"])
        src = src[src["icustay_id"].isin(cut.index) & src[amount].notna()].rename(
            columns={"icustay_id": "stay_id", "starttime": "time", amount: "source_value"})
        src = src[src["time"] < src["stay_id"].map(cut)]
        ended_late = src["endtime"] >= src["stay_id"].map(cut)
        shown = pre[(pre["event_type"] == kind)].assign(itemid=lambda d: d["code"].str.split("//").str[1].astype(int))
        with_value = shown[shown["value"].notna()].merge(
            src[~ended_late], left_on=[*key, "value"], right_on=[*key, "source_value"], how="left", indicator=True)
        assert len(with_value) > 0 and (with_value["_merge"] == "both").all(), table
        late = src[ended_late][key].drop_duplicates()
        assert len(late) > 0 and withheld[kind] > 0, table
        blank = shown[shown["value"].isna()][key].drop_duplicates()
        assert len(late.merge(blank, on=key)) == len(late), table


def test_mimic3_upper_case_file_and_column_names(demo, tmp_path):
    upper = tmp_path / "upper"
    upper.mkdir()
    for name in ("PATIENTS", "ADMISSIONS", "ICUSTAYS", "PROCEDUREEVENTS_MV", "D_ITEMS"):
        df = pd.read_csv(demo / f"{name}.csv", dtype=str)
        df.columns = [c.upper() for c in df.columns]
        df.to_csv(upper / f"{name}.csv", index=False)
    metrics, *_ = run("mimic3", upper, tmp_path / "out")
    assert metrics["tables_read"]["icustays"] == 136
    assert metrics["events"]["kept"]["procedure"] > 0


# --- An independent oracle for the attachment, withholding, de-duplication and order ---------
# events.sql avoids window functions over all events for speed (issue 15). The oracle below
# does the same job the slow, obvious way in pandas, from the canonical rows (src_events)
# and the stays (cohort_all): every unlinked event is tried against every stay of its
# subject, exact copies are dropped, then withheld look-alikes are merged.

KIND_ORDER = {k: i for i, k in enumerate(EVENT_TYPES)}
CONTENT = ["code", "text", "value", "unit", "flag"]


def canonical_frames(source, path, hours=48.0):
    """src_events (known_time 'infinity' as known_never) and cohort_all, as DataFrames."""
    with duckdb.connect() as con:
        load_source(con, source, path, hours, 18)
        events = con.execute(
            """SELECT * REPLACE (CASE WHEN isinf(known_time) THEN NULL ELSE known_time END AS known_time),
                      coalesce(isinf(known_time), false) AS known_never
               FROM src_events"""
        ).df()
        stays = con.execute("SELECT * FROM cohort_all").df()
        patients = set(con.execute("SELECT subject_id FROM patients").df()["subject_id"])
        admissions = set(con.execute("SELECT hadm_id FROM admissions").df()["hadm_id"])
    return events, stays, patients, admissions


def oracle(events, stays, patients, admissions):
    """Expected events.parquet and drop counts {(reason, kind): n}."""
    stays = stays[(stays["copy_number"] == 1) & stays["intime"].notna() & stays["outtime"].notna()]
    stays = stays[["stay_id", "subject_id", "hadm_id", "intime", "outtime", "cutoff", "exclusion"]]
    ev = events.reset_index(names="row")
    start = lambda d: d["intime"].where(~d["date_only"].astype(bool), d["intime"].dt.floor("D"))
    inside = lambda d: (d["time"] >= start(d)) & (d["time"] <= d["outtime"])

    linked = ev[ev["stay_id"].notna()].merge(stays.drop(columns="subject_id"), on="stay_id", how="left",
                                            suffixes=("", "_stay"), indicator=True)
    linked["reason"] = None
    linked.loc[~inside(linked), "reason"] = "outside_stay"
    linked.loc[linked["_merge"] == "left_only", "reason"] = "orphan"
    linked["stay"] = linked["stay_id"].where(linked["_merge"] == "both")

    free = ev[ev["stay_id"].isna()].drop(columns="stay_id")
    pairs = free.merge(stays.rename(columns={"hadm_id": "hadm_stay"}), on="subject_id")
    pairs = pairs[(pairs["hadm_id"].isna() | (pairs["hadm_id"] == pairs["hadm_stay"])) & inside(pairs)]
    first = pairs.sort_values(["row", "intime", "stay_id"]).drop_duplicates("row").set_index("row")
    unlinked = free.set_index("row").join(first[["stay_id", "hadm_stay", "intime", "outtime", "cutoff", "exclusion"]])
    unlinked = unlinked.reset_index().rename(columns={"hadm_stay": "hadm_id_stay", "stay_id": "stay"})
    unlinked["reason"] = None
    unlinked.loc[unlinked["stay"].isna(), "reason"] = "outside_stay"
    orphan = ~unlinked["subject_id"].isin(patients)
    orphan |= unlinked["hadm_id"].notna() & ~unlinked["hadm_id"].isin(admissions)
    unlinked.loc[orphan, "reason"] = "orphan"

    rows = pd.concat([linked, unlinked], ignore_index=True)
    rows.loc[rows["time"].isna(), "reason"] = "missing_time"
    rows.loc[rows["reason"].isna() & rows["exclusion"].notna(), "reason"] = "stay_not_in_cohort"
    counts = rows[rows["reason"].notna()].groupby(["reason", "event_type"]).size().to_dict()

    kept = rows[rows["reason"].isna()].copy()
    kept["placed"] = kept[["time", "intime"]].max(axis=1)
    # a date-only event is known at the end of its day: on the cutoff's day, at the cutoff
    day_contains_cutoff = (kept["time"] < kept["cutoff"]) & (kept["time"] + pd.Timedelta(days=1) > kept["cutoff"])
    moved = kept["date_only"].astype(bool) & day_contains_cutoff
    kept.loc[moved, "placed"] = kept.loc[moved, "cutoff"]
    late = kept["known_never"] | (kept["known_time"] >= kept["cutoff"])
    differs = pd.Series(False, index=kept.index)
    for c in ("code", "text", "value", "flag"):
        a, b = kept[c], kept[f"start_{c}"]
        differs |= ~((a == b) | (a.isna() & b.isna()))
    kept["withheld"] = (kept["placed"] < kept["cutoff"]) & late & differs
    for c in ("code", "text", "value", "flag"):
        kept[f"shown_{c}"] = kept[f"start_{c}"].where(kept["withheld"], kept[c])
    full = ["stay", "time", "event_type", *CONTENT, "withheld"]
    dup = kept.duplicated(full)
    counts.update({("duplicate", k): n for k, n in kept[dup].groupby("event_type").size().items()})
    kept = kept[~dup].sort_values("withheld", kind="stable")
    shown = ["stay", "time", "event_type", "shown_code", "shown_text", "shown_value", "unit", "shown_flag"]
    merged = kept.duplicated(shown)
    counts.update({("merged_when_withheld", k): n for k, n in kept[merged].groupby("event_type").size().items()})
    kept = kept[~merged]

    out = pd.DataFrame({
        "subject_id": kept["subject_id"], "hadm_id": kept["hadm_id_stay"], "stay_id": kept["stay"],
        "time": kept["placed"], "hours": (kept["placed"] - kept["intime"]).dt.total_seconds() / 3600,
        "event_type": kept["event_type"], "code": kept["shown_code"], "text": kept["shown_text"],
        "value": kept["shown_value"], "unit": kept["unit"], "flag": kept["shown_flag"],
        "after_cutoff": kept["placed"] >= kept["cutoff"], "kind": kept["event_type"].map(KIND_ORDER),
    })
    out = out.sort_values(["stay_id", "time", "kind", *CONTENT], na_position="last", kind="stable")
    moved_kinds = kept[moved.loc[kept.index]].groupby("event_type").size().to_dict()
    return out.drop(columns="kind").reset_index(drop=True), counts, int(kept["withheld"].sum()), moved_kinds


def assert_matches_oracle(source, path, tmp_path, hours=48.0, threads=None):
    metrics, events, _, _ = run(source, path, tmp_path, hours=hours, threads=threads)
    expected, counts, withheld, moved = oracle(*canonical_frames(source, path, hours))
    pd.testing.assert_frame_equal(events, expected.astype(events.dtypes.to_dict()))
    dropped = {(r, k): n for r, kinds in metrics["events"]["dropped"].items() for k, n in kinds.items() if n}
    assert dropped == counts
    assert metrics["events"]["values_withheld_at_cutoff_total"] == withheld
    assert {k: n for k, n in metrics["events"]["date_only_moved_after_cutoff"].items() if n} == moved
    return metrics, events


@pytest.fixture(scope="module")
def small_synthetic(tmp_path_factory):
    from ehrseq.sources.synthetic import generate

    path = tmp_path_factory.mktemp("synthetic") / "raw"
    generate(path, n_patients=300, seed=1)
    return path


def test_synthetic_extraction_matches_the_oracle(small_synthetic, tmp_path):
    # two threads, as the stage runs: files are read concurrently, aggregates run in parallel
    metrics, events = assert_matches_oracle("synthetic", small_synthetic, tmp_path, threads=2)
    ev = metrics["events"]
    # the run exercises what the oracle checks: planted duplicates, withheld values, both sides of the cutoff
    assert ev["dropped"]["duplicate"]["lab"] > 0 and ev["values_withheld_at_cutoff_total"] > 0
    assert 0 < events["after_cutoff"].sum() < len(events)


@pytest.mark.parametrize("rows_per_part", [1, 3000])
def test_events_sorted_in_stay_ranges_equal_one_sort(small_synthetic, tmp_path, caplog, rows_per_part):
    """events.parquet written in many stay ranges (each sorted alone into a part file, the
    parts stitched in order) holds one sort's rows in its order with its schema, nullability
    included; the other outputs are byte-identical. rows_per_part=1 puts every stay in a
    range of its own (larger than the limit, alone). The bytes of events.parquet are not
    compared: DuckDB merges a part's last, short batch into the next row group."""
    outputs = {}
    for name, rows in (("one", 10**12), ("ranges", rows_per_part)):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="ehrseq.sources.extract"):
            out = tmp_path / name
            extract("synthetic", small_synthetic, out / "events.parquet", out / "cohort.parquet",
                    out / "diagnoses.parquet", observation_hours=48, min_age=18, split_fractions=SPLIT,
                    seed=0, threads=2, rows_per_part=rows)
        outputs[name] = pq.read_table(tmp_path / name / "events.parquet")
        ranges = int(re.search(r"in (\d+) stay range", caplog.text).group(1))
        assert (ranges == 1) if name == "one" else (ranges > 10)
    assert sorted(p.name for p in (tmp_path / "ranges").iterdir()) == ["cohort.parquet", "diagnoses.parquet",
                                                                         "events.parquet"]  # no part left behind
    cohort = pd.read_parquet(tmp_path / "one" / "cohort.parquet")
    assert outputs["ranges"].num_rows == outputs["one"].num_rows > 10 * cohort["stay_id"].nunique()
    assert outputs["ranges"].schema == outputs["one"].schema
    assert [f.nullable for f in outputs["ranges"].schema] == [f.nullable for f in outputs["one"].schema]
    assert outputs["ranges"].equals(outputs["one"])  # every value, row by row
    for name in ("cohort.parquet", "diagnoses.parquet"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "ranges" / name).read_bytes()


# SHA-256 of events.parquet as the single-sort code before stay ranges (main 14ee5c9,
# DuckDB 2.0.0, 1 and 2 threads alike) wrote it for these sources. When the events fit in
# one range the file must stay byte-identical, so DVC sees no change downstream. The trap:
# another DuckDB version may write other bytes; re-pin from the old code, never from this one.
ONE_SORT_EVENTS_SHA256 = {
    "small_synthetic": ("synthetic", "89c653aa23bf5241576292ed4afbc8ff4443c166ee7bdc1765f9fd7935e91f24"),
    "demo": ("mimic3", "5c836a5eab9d9cd64c050f7fa43aa24abfe71127a9a59ed1adc8e9ea4a357127"),
}


@pytest.mark.parametrize("fixture", list(ONE_SORT_EVENTS_SHA256))
def test_one_range_writes_the_bytes_of_one_sort(fixture, request, tmp_path, caplog):
    source, sha256 = ONE_SORT_EVENTS_SHA256[fixture]
    with caplog.at_level(logging.INFO, logger="ehrseq.sources.extract"):
        extract(source, request.getfixturevalue(fixture), tmp_path / "events.parquet", tmp_path / "cohort.parquet",
                tmp_path / "diagnoses.parquet", observation_hours=48, min_age=18, split_fractions=SPLIT, seed=0,
                threads=2)
    assert "in 1 stay range(s)" in caplog.text  # rows_per_part sized from the memory: one range here
    assert hashlib.sha256((tmp_path / "events.parquet").read_bytes()).hexdigest() == sha256


def add_overlapping_stay(root: Path) -> None:
    """Stay 101 of subject 1 (same admission) lies inside stay 100: a lab in both windows
    goes to the earlier stay, 100, and so does its identical copy (counted as a duplicate)."""
    append_rows(root, "icu/icustays", [dict(subject_id=1, hadm_id=11, stay_id=101, first_careunit="CCU",
                                             intime="2150-01-01 09:00:00", outtime="2150-01-04 12:00:00")],
                ["subject_id", "hadm_id", "stay_id", "first_careunit", "intime", "outtime"])
    lab = dict(subject_id=1, hadm_id=11, itemid=50912, value="1.1", valuenum=1.1, valueuom="mg/dL", flag=None,
               storetime="2150-01-01 11:00:00")
    append_rows(root, "hosp/labevents", [{**lab, "charttime": "2150-01-01 10:00:00"}] * 2, LAB_COLUMNS)


def test_hand_built_cases_match_the_oracle(tiny_mimic4, tmp_path):
    add_results_known_late(tiny_mimic4)
    add_overlapping_stay(tiny_mimic4)
    for hours in (48.0, 72.0):
        metrics, events = assert_matches_oracle("mimic4", tiny_mimic4, tmp_path / str(hours), hours)
        copies = events[(events["time"] == pd.Timestamp("2150-01-01 10:00:00")) & (events["event_type"] == "lab")]
        assert copies["stay_id"].tolist() == [100] and metrics["events"]["dropped"]["duplicate"]["lab"] == 2


def test_mimic3_demo_matches_the_oracle(demo, tmp_path):
    assert_matches_oracle("mimic3", demo, tmp_path)


# --- Issue 10: what is known at the cutoff on real MIMIC ----------------------------------------

def test_labs_stored_after_the_cutoff_are_pending_before_it(tiny_mimic4, tmp_path):
    """Stay 100, cutoff 2150-01-03 06:00. A lab's value, flag and value bin are known when
    its result is stored (MIMIC-IV storetime), not when the sample was drawn."""
    creat = dict(subject_id=1, hadm_id=11, itemid=50912, value="4.1", valuenum=4.1, valueuom="mg/dL", flag="abnormal")
    append_rows(tiny_mimic4, "hosp/labevents", [
        {**creat, "charttime": "2150-01-03 05:00:00", "storetime": "2150-01-03 05:45:00"},  # stored in time
        {**creat, "charttime": "2150-01-03 05:30:00", "storetime": "2150-01-03 07:00:00"},  # stored after the cutoff
        {**creat, "charttime": "2150-01-03 04:00:00", "storetime": None},                   # never stored: pending
        {**creat, "charttime": "2150-01-03 10:00:00", "storetime": "2150-01-03 12:00:00"},  # drawn after the cutoff
    ], LAB_COLUMNS)
    metrics, events, _, _ = run("mimic4", tiny_mimic4, tmp_path)
    labs = events[(events["stay_id"] == 100) & (events["event_type"] == "lab")].set_index("hours")
    assert labs.loc[47.0, "code"] == "LAB//50912" and labs.loc[47.0, "value"] == 4.1
    for hours in (46.0, 47.5):
        row = labs.loc[hours]
        assert (row["code"], row["text"]) == ("LAB//50912//PENDING", "Lab: Creatinine pending")
        assert not row["after_cutoff"]
        assert pd.isna(row["value"]) and pd.isna(row["flag"])
    assert labs.loc[52.0, "text"] == "Lab: Creatinine 4.1 mg/dL (abnormal)" and labs.loc[52.0, "after_cutoff"]
    assert metrics["events"]["values_withheld_at_cutoff"]["lab"] == 2
    assert metrics["events"]["lab_result_time"].startswith("labevents.storetime")
    # the vocabulary bins values: a pending lab has none, so it is its own token, never a bin
    vocab = Vocab([], [], {"LAB//50912": np.array([1.0, 3.0])}, ("lab",))
    assert vocab.event_tokens(labs.reset_index()).tolist() == [
        "LAB//50912//Q2", "LAB//50912", "LAB//50912//PENDING", "LAB//50912//Q3", "LAB//50912//PENDING",
        "LAB//50912//Q3", "LAB//50912//Q2"]  # hours 1, 2 (no value), 46, 47, 47.5, 52, 66
    # a 72 h window sees the result stored at 07:00 on the cutoff's day; never the unstored one
    _, events, _, _ = run("mimic4", tiny_mimic4, tmp_path / "72h", hours=72)
    labs = events[(events["stay_id"] == 100) & (events["event_type"] == "lab")].set_index("hours")
    assert labs.loc[47.5, "code"] == "LAB//50912" and labs.loc[46.0, "code"] == "LAB//50912//PENDING"


def test_mimic3_demo_prescriptions_dated_on_the_cutoff_day_come_after_it(demo, tmp_path):
    """MIMIC-III prescriptions carry a date: an order dated on the cutoff's day may have
    been written after the cutoff, so it is known only at the day's end."""
    metrics, events, cohort, _ = run("mimic3", demo, tmp_path)
    rx = events[events["event_type"] == "prescription"].merge(cohort[["stay_id", "cutoff"]], on="stay_id")
    before = rx[~rx["after_cutoff"]]
    assert (before["time"].dt.normalize() + pd.Timedelta(days=1) <= before["cutoff"]).all()
    assert not (before["time"].dt.normalize() == before["cutoff"].dt.normalize()).any()
    # independently from the source file: orders of cohort admissions dated on a cutoff's day exist ...
    src = pd.read_csv(demo / "PRESCRIPTIONS.csv", usecols=["hadm_id", "startdate"], parse_dates=["startdate"])
    on_cutoff_day = src.merge(cohort[["hadm_id", "cutoff"]], on="hadm_id")
    on_cutoff_day = on_cutoff_day[on_cutoff_day["startdate"] == on_cutoff_day["cutoff"].dt.normalize()]
    assert len(on_cutoff_day) > 100
    # ... and sit at the cutoff, after it; the count in extract.json is those events
    at_cutoff = rx[rx["time"] == rx["cutoff"]]
    assert at_cutoff["after_cutoff"].all() and len(at_cutoff) > 0
    moved = metrics["events"]["date_only_moved_after_cutoff"]
    assert moved["prescription"] == len(at_cutoff)
    assert metrics["events"]["lab_result_time"].startswith("not recorded")


def test_mimic3_carevue_inputs_are_read(demo, tmp_path):
    """A tiny INPUTEVENTS_CV beside the demo's tables: CareVue amounts are known when charted."""
    root = tmp_path / "demo"
    shutil.copytree(demo, root)
    stays = pd.read_csv(demo / "ICUSTAYS.csv", parse_dates=["intime", "outtime"])
    stay = stays[(stays["outtime"] - stays["intime"]) > pd.Timedelta(hours=60)].iloc[0]
    at = lambda h: (stay["intime"] + pd.Timedelta(hours=h)).strftime("%Y-%m-%d %H:%M:%S")
    ids = dict(subject_id=stay["subject_id"], hadm_id=stay["hadm_id"], icustay_id=stay["icustay_id"])
    pd.DataFrame([
        {**ids, "charttime": at(10), "itemid": 30018, "amount": 250.0, "amountuom": "ml"},
        {**ids, "charttime": at(10), "itemid": 30018, "amount": 250.0, "amountuom": "ml"},  # an exact copy
        {**ids, "charttime": at(50), "itemid": 30045, "amount": None, "amountuom": None},   # after the cutoff
        {**ids, "icustay_id": 1, "charttime": at(10), "itemid": 30018, "amount": 5.0, "amountuom": "ml"},  # orphan
    ]).to_csv(root / "INPUTEVENTS_CV.csv", index=False)
    labels = pd.read_csv(demo / "D_ITEMS.csv", usecols=["itemid", "label"]).set_index("itemid")["label"]
    metrics, events, _, _ = run("mimic3", root, tmp_path / "out")
    assert "inputevents_cv" not in metrics["missing_tables"] and metrics["tables_read"]["inputevents_cv"] == 4
    assert metrics["events"]["ingredient_rows_by_system"]["carevue"] == {"read": 4, "kept": 3}
    cv = events[(events["stay_id"] == stay["icustay_id"]) & events["code"].isin(["ITEM//30018", "ITEM//30045"])]
    assert cv["hours"].tolist() == [10.0, 50.0] and cv["after_cutoff"].tolist() == [False, True]
    assert cv["text"].tolist() == [f"Ingredient: {labels[30018]} 250.0 ml", f"Ingredient: {labels[30045]}"]
    assert cv["value"].iloc[0] == 250.0  # known when charted: never withheld
    assert metrics["events"]["dropped"]["orphan"]["ingredient"] >= 1
