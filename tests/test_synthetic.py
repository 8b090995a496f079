"""The synthetic MIMIC-IV generator: determinism, schema, integrity, and the planted truth.

The planted logit is recomputed here from the written tables alone, independently of the
generator's own bookkeeping, the way an extraction would see them: labs and cultures by
subject and time, prescriptions by admission and time, procedures by stay_id.
"""
import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from ehrseq.sources.synthetic import generate

HOURS = 48.0
NEVER = pd.Timestamp("2300-01-01")  # later than any synthetic time
EXPECTED_COLUMNS = {
    "hosp/patients": "subject_id, gender, anchor_age, anchor_year, anchor_year_group, dod",
    "hosp/admissions": "subject_id, hadm_id, admittime, dischtime, deathtime, admission_type, admit_provider_id, "
                       "admission_location, discharge_location, insurance, language, marital_status, race, "
                       "edregtime, edouttime, hospital_expire_flag",
    "hosp/diagnoses_icd": "subject_id, hadm_id, seq_num, icd_code, icd_version",
    "hosp/d_icd_diagnoses": "icd_code, icd_version, long_title",
    "hosp/prescriptions": "subject_id, hadm_id, pharmacy_id, poe_id, poe_seq, order_provider_id, starttime, stoptime, "
                          "drug_type, drug, formulary_drug_cd, gsn, ndc, prod_strength, form_rx, dose_val_rx, "
                          "dose_unit_rx, form_val_disp, form_unit_disp, doses_per_24_hrs, route",
    "hosp/labevents": "labevent_id, subject_id, hadm_id, specimen_id, itemid, order_provider_id, charttime, storetime, "
                      "value, valuenum, valueuom, ref_range_lower, ref_range_upper, flag, priority, comments",
    "hosp/d_labitems": "itemid, label, fluid, category",
    "hosp/microbiologyevents": "microevent_id, subject_id, hadm_id, micro_specimen_id, order_provider_id, chartdate, "
                               "charttime, spec_itemid, spec_type_desc, test_seq, storedate, storetime, test_itemid, "
                               "test_name, org_itemid, org_name, isolate_num, quantity, ab_itemid, ab_name, "
                               "dilution_text, dilution_comparison, dilution_value, interpretation, comments",
    "icu/icustays": "subject_id, hadm_id, stay_id, first_careunit, last_careunit, intime, outtime, los",
    "icu/procedureevents": "subject_id, hadm_id, stay_id, caregiver_id, starttime, endtime, storetime, itemid, value, "
                           "valueuom, location, locationcategory, orderid, linkorderid, ordercategoryname, "
                           "ordercategorydescription, patientweight, isopenbag, continueinnextdept, "
                           "statusdescription, originalamount, originalrate",
    "icu/ingredientevents": "subject_id, hadm_id, stay_id, caregiver_id, starttime, endtime, storetime, itemid, "
                            "amount, amountuom, rate, rateuom, orderid, linkorderid, statusdescription, "
                            "originalamount, originalrate",
    "icu/d_items": "itemid, label, abbreviation, linksto, category, unitname, param_type, lownormalvalue, "
                   "highnormalvalue",
    "truth/stay_risk": "subject_id, hadm_id, stay_id, logit, true_risk, death_rate_per_hour, eligible, "
                       "died_after_cutoff",
    "truth/planted_events": "subject_id, stay_id, rule, table, itemid_or_ndc, time",
    "truth/companion_events": "subject_id, stay_id, rule, table, itemid_or_ndc, time",
    "truth/problem_codes": "problem, kind, code",
}
TIMES = {
    "hosp/admissions": ["admittime", "dischtime", "deathtime", "edregtime", "edouttime"],
    "hosp/prescriptions": ["starttime", "stoptime"],
    "hosp/labevents": ["charttime", "storetime"],
    "hosp/microbiologyevents": ["chartdate", "charttime", "storedate", "storetime"],
    "icu/icustays": ["intime", "outtime"],
    "icu/procedureevents": ["starttime", "endtime", "storetime"],
    "icu/ingredientevents": ["starttime", "endtime", "storetime"],
}
STRINGS = {"hosp/prescriptions": {"ndc": str, "gsn": str}, "truth/planted_events": {"itemid_or_ndc": str},
           "truth/companion_events": {"itemid_or_ndc": str}, "truth/problem_codes": str}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A few thousand ICU stays, read back as DataFrames."""
    out = tmp_path_factory.mktemp("synthetic") / "synthetic"
    summary = generate(out, n_patients=2000, seed=11, observation_hours=HOURS)
    tables = {name: pd.read_csv(out / f"{name}.csv.gz", dtype=STRINGS.get(name), parse_dates=TIMES.get(name, []))
              for name in EXPECTED_COLUMNS}
    tables["rules"] = json.loads((out / "truth/rules.json").read_text())
    tables["summary"] = summary
    tables["dir"] = out
    return tables


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = generate(tmp_path / "a", n_patients=150, seed=5)
    b = generate(tmp_path / "b", n_patients=150, seed=5)
    c = generate(tmp_path / "c", n_patients=150, seed=6)
    assert a == b
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) == len(EXPECTED_COLUMNS) + 1  # every table + rules.json
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    assert (tmp_path / "a/hosp/labevents.csv.gz").read_bytes() != (tmp_path / "c/hosp/labevents.csv.gz").read_bytes()
    assert c != a
    # gzip header time stamp is zero (bytes 4-7), so bytes do not depend on when we ran
    assert (tmp_path / "a/hosp/patients.csv.gz").read_bytes()[4:8] == b"\0\0\0\0"


def test_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="n_patients"):
        generate(tmp_path / "x", n_patients=0, seed=1)
    with pytest.raises(ValueError, match="observation_hours"):
        generate(tmp_path / "x", n_patients=10, seed=1, observation_hours=-4)
    assert not (tmp_path / "x").exists()


def test_exact_columns_and_time_format(data):
    for name, expected in EXPECTED_COLUMNS.items():
        with gzip.open(data["dir"] / f"{name}.csv.gz", "rt") as f:
            header = f.readline().strip()
            first_row = f.readline()
        assert header.split(",") == expected.split(", "), name
        assert first_row, f"{name} is empty"
    with gzip.open(data["dir"] / "icu/icustays.csv.gz", "rt") as f:
        f.readline()
        intime = f.readline().split(",")[5]
    assert pd.Timestamp(intime).strftime("%Y-%m-%d %H:%M:%S") == intime


def test_ids_years_and_ages(data):
    patients, adm, stays = data["hosp/patients"], data["hosp/admissions"], data["icu/icustays"]
    assert patients["subject_id"].min() >= 10_000_000 and patients["subject_id"].is_unique
    assert adm["hadm_id"].min() >= 20_000_000 and adm["hadm_id"].is_unique
    assert stays["stay_id"].min() >= 30_000_000 and stays["stay_id"].is_unique
    assert set(patients["gender"]) == {"M", "F"}
    years = pd.concat([adm["admittime"], adm["dischtime"]]).dt.year
    assert years.min() >= 2110 and years.max() <= 2210
    # MIMIC-IV ages: anchor_age in 18-91, with everyone 90+ reported as 91 (never 90)
    assert patients["anchor_age"].between(18, 91).all() and not (patients["anchor_age"] == 90).any()
    assert (patients["anchor_age"] == 91).any()
    first_year = adm.groupby("subject_id")["admittime"].min().dt.year
    p = patients.set_index("subject_id")
    assert (p["anchor_year"] <= first_year.reindex(p.index)).all()
    s = stays.merge(patients, on="subject_id")
    age = s["anchor_age"] + s["intime"].dt.year - s["anchor_year"]
    assert age.min() >= 18 and age.max() <= 91 + 10
    # several admissions per patient and several ICU stays per admission both occur
    assert adm["subject_id"].duplicated().any() and stays["hadm_id"].duplicated().any()
    short = (stays["outtime"] - stays["intime"]) < pd.Timedelta(hours=HOURS)
    assert 0.08 < short.mean() < 0.25
    assert (stays["outtime"] - stays["intime"]).max() > pd.Timedelta(days=14)


def test_referential_integrity_apart_from_counted_defects(data):
    adm, stays, defects = data["hosp/admissions"], data["icu/icustays"], data["rules"]["defects"]
    assert defects == {"duplicate_lab_rows": 6, "orphan_prescription_rows": 4, "orphan_procedureevent_rows": 3}
    subjects, hadms, stay_ids = set(data["hosp/patients"]["subject_id"]), set(adm["hadm_id"]), set(stays["stay_id"])
    assert set(adm["subject_id"]) <= subjects
    s = stays.merge(adm, on="hadm_id", suffixes=("", "_adm"))
    assert len(s) == len(stays) and (s["subject_id"] == s["subject_id_adm"]).all()
    assert ((s["intime"] >= s["admittime"]) & (s["outtime"] <= s["dischtime"])).all()
    rx, procs = data["hosp/prescriptions"], data["icu/procedureevents"]
    assert (~rx["hadm_id"].isin(hadms)).sum() == defects["orphan_prescription_rows"]
    assert (~procs["stay_id"].isin(stay_ids)).sum() == defects["orphan_procedureevent_rows"]
    assert data["icu/ingredientevents"]["stay_id"].isin(stay_ids).all()
    for name in ("hosp/labevents", "hosp/microbiologyevents"):
        t = data[name]
        assert t["subject_id"].isin(subjects).all()
        known = t["hadm_id"].notna()
        assert t.loc[known, "hadm_id"].isin(hadms).all()
        assert 0.02 < 1 - known.mean() < 0.08  # MIMIC: some results have no hadm_id
    labs = data["hosp/labevents"]
    assert labs.duplicated().sum() == defects["duplicate_lab_rows"]
    assert not labs.drop_duplicates().duplicated(["subject_id", "itemid", "charttime"]).any()
    assert not rx[rx["hadm_id"].isin(hadms)].duplicated(["subject_id", "drug", "starttime"]).any()
    assert not procs.duplicated(["stay_id", "itemid", "starttime"]).any()
    assert set(labs["itemid"]) <= set(data["hosp/d_labitems"]["itemid"])
    items = set(data["icu/d_items"]["itemid"])
    assert set(procs["itemid"]) | set(data["icu/ingredientevents"]["itemid"]) <= items
    dx = data["hosp/diagnoses_icd"]
    assert dx["hadm_id"].isin(hadms).all() and set(dx["icd_version"]) == {9, 10}
    codes = data["hosp/d_icd_diagnoses"].set_index(["icd_code", "icd_version"]).index
    assert dx.set_index(["icd_code", "icd_version"]).index.isin(codes).all()


def test_no_overlaps_and_nothing_after_death(data):
    adm, stays = data["hosp/admissions"], data["icu/icustays"]
    for t, start, end in ((adm, "admittime", "dischtime"), (stays, "intime", "outtime")):
        t = t.sort_values(["subject_id", start])
        nxt = t.groupby("subject_id")[start].shift(-1)
        assert (nxt.isna() | (nxt > t[end])).all()
    dead = adm[adm["hospital_expire_flag"] == 1]
    assert (dead["deathtime"] == dead["dischtime"]).all() and (dead["discharge_location"] == "DIED").all()
    assert adm.loc[adm["hospital_expire_flag"] == 0, "deathtime"].isna().all()
    death = dead.set_index("subject_id")["deathtime"]
    assert death.index.is_unique  # one death per patient
    assert (adm["admittime"] <= adm["subject_id"].map(death).fillna(NEVER)).all()
    dod = pd.to_datetime(data["hosp/patients"].set_index("subject_id")["dod"])
    assert (dod[death.index] == death.dt.normalize()).all()
    assert (stays["outtime"] <= stays["subject_id"].map(death).fillna(NEVER)).all()
    for name, col in (("hosp/labevents", "charttime"), ("hosp/prescriptions", "starttime"),
                      ("icu/procedureevents", "starttime"), ("icu/ingredientevents", "starttime")):
        t = data[name]
        assert (t[col] <= t["subject_id"].map(death).fillna(NEVER)).all(), name


def _window_events(events, stays, time_col, on):
    """Events joined to the stay whose observation window [intime, cutoff) contains them
    (a stay shorter than the window: the whole stay, as the extraction attaches them)."""
    e = events.merge(stays[["subject_id", "hadm_id", "stay_id", "intime", "outtime", "cutoff"]], on=on)
    return e[(e[time_col] >= e["intime"]) & (e[time_col] < e["cutoff"]) & (e[time_col] <= e["outtime"])]


def _recompute_rules(data) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Planted logit per stay and the firing events, from the source tables only."""
    rules = data["rules"]
    codes = rules["codes"]
    stays = data["icu/icustays"].merge(data["hosp/patients"], on="subject_id")
    stays["cutoff"] = stays["intime"] + pd.Timedelta(hours=rules["observation_hours"])
    labs = _window_events(data["hosp/labevents"].drop_duplicates(), stays, "charttime", "subject_id")
    labs = labs[labs["storetime"] < labs["cutoff"]]  # a lab result counts once it is stored (known)
    abnormal = labs["flag"] == "abnormal"
    rx = _window_events(data["hosp/prescriptions"], stays, "starttime", ["subject_id", "hadm_id"])
    micro = _window_events(data["hosp/microbiologyevents"], stays, "charttime", "subject_id")
    procs = _window_events(data["icu/procedureevents"], stays, "starttime", ["subject_id", "hadm_id", "stay_id"])
    creat = labs[abnormal & (labs["itemid"] == codes["creatinine_itemid"])]
    potassium = labs[abnormal & (labs["itemid"] == codes["potassium_itemid"])]
    both = set(creat["stay_id"]) & set(potassium["stay_id"])
    recent = labs["charttime"] >= labs["cutoff"] - pd.Timedelta(hours=codes["troponin_recent_hours"])
    # a positive blood culture counts only when its result is stored before the cutoff
    positive_blood = micro[(micro["spec_itemid"] == codes["blood_culture_spec_itemid"]) & micro["org_itemid"].notna()
                           & micro["ab_itemid"].isna() & (micro["storetime"] < micro["cutoff"])]
    fired = {
        "vasopressor": (rx[rx["ndc"].isin(codes["norepinephrine_ndcs"])], "starttime", "ndc"),
        "high_lactate": (labs[(labs["itemid"] == codes["lactate_itemid"])
                                & (labs["valuenum"] > codes["lactate_threshold"])], "charttime", "itemid"),
        "positive_blood_culture": (positive_blood, "charttime", "org_itemid"),
        "invasive_ventilation": (procs[procs["itemid"] == codes["invasive_ventilation_itemid"]], "starttime", "itemid"),
        "creatinine_and_potassium_abnormal": (pd.concat([creat, potassium]).loc[lambda d: d["stay_id"].isin(both)],
                                              "charttime",
                                              "itemid"),
        "recent_troponin_abnormal": (labs[abnormal & recent & (labs["itemid"] == codes["troponin_t_itemid"])],
                                     "charttime", "itemid"),
    }
    age = stays["anchor_age"] + stays["intime"].dt.year - stays["anchor_year"]
    logit = rules["base_logit"] + rules["age"]["effect_per_decade_over_60"] * np.maximum(age - 60, 0) / 10
    effect = {r["name"]: r["effect"] for r in rules["rules"]}
    events = []
    for rule, (rows, time_col, code_col) in fired.items():
        logit = logit + effect[rule] * stays["stay_id"].isin(rows["stay_id"])
        code = rows[code_col].astype("Int64").astype(str) if code_col != "ndc" else rows[code_col]
        events.append(pd.DataFrame({"stay_id": rows["stay_id"].to_numpy(), "rule": rule,
                                    "itemid_or_ndc": code.to_numpy(),
                                    "time": rows[time_col].dt.strftime("%Y-%m-%d %H:%M:%S").to_numpy()}))
    return stays.assign(logit=logit), pd.concat(events, ignore_index=True)


def test_truth_risk_recomputed_from_tables(data):
    stays, events = _recompute_rules(data)
    truth = data["truth/stay_risk"].merge(stays[["stay_id", "logit", "intime", "outtime"]], on="stay_id",
                                          suffixes=("", "_recomputed"))
    assert len(truth) == len(data["icu/icustays"])
    np.testing.assert_allclose(truth["logit"], truth["logit_recomputed"], atol=1e-9)
    np.testing.assert_allclose(truth["true_risk"], 1 / (1 + np.exp(-truth["logit"])), rtol=1e-12)
    assert (truth["eligible"] == (truth["outtime"] - truth["intime"] >= pd.Timedelta(hours=HOURS))).all()
    planted = data["truth/planted_events"]
    key = ["stay_id", "rule", "itemid_or_ndc", "time"]
    assert not planted.duplicated(key).any()
    pd.testing.assert_frame_equal(planted[key].sort_values(key).reset_index(drop=True),
                                  events[key].sort_values(key).reset_index(drop=True))
    # Every rule fires often enough to learn from (>= 5% of eligible stays) and is a
    # minority of events; the interaction fires only when both labs are abnormal.
    eligible = set(truth.loc[truth["eligible"], "stay_id"])
    share = planted[planted["stay_id"].isin(eligible)].groupby("rule")["stay_id"].nunique() / len(eligible)
    assert set(share.index) == {r["name"] for r in data["rules"]["rules"]}
    assert (share > 0.05).all(), share


def test_interaction_and_recency_really_matter(data):
    """Stays with only one of creatinine/potassium abnormal, or only an early abnormal
    troponin, exist and get no effect from those rules."""
    stays, _ = _recompute_rules(data)
    labs = _window_events(data["hosp/labevents"].drop_duplicates(), stays, "charttime", "subject_id")
    labs = labs[(labs["flag"] == "abnormal") & (labs["storetime"] < labs["cutoff"])]
    planted = data["truth/planted_events"]
    creat = set(labs.loc[labs["itemid"] == 50912, "stay_id"])
    potassium = set(labs.loc[labs["itemid"] == 50971, "stay_id"])
    interaction = set(planted.loc[planted["rule"] == "creatinine_and_potassium_abnormal", "stay_id"])
    assert interaction == creat & potassium
    assert len(creat - potassium) > 20 and len(potassium - creat) > 20
    trop = labs[labs["itemid"] == 51003]
    recent = set(planted.loc[planted["rule"] == "recent_troponin_abnormal", "stay_id"])
    assert recent <= set(trop["stay_id"]) and len(set(trop["stay_id"]) - recent) > 20


def test_deaths_follow_the_risk(data):
    truth = data["truth/stay_risk"]
    eligible = truth[truth["eligible"]]
    assert len(eligible) > 2000
    mortality = eligible["died_after_cutoff"].mean()
    assert 0.10 < mortality < 0.18
    auroc = roc_auc_score(eligible["died_after_cutoff"], eligible["true_risk"])
    assert auroc > 0.75
    assert data["summary"]["oracle_auroc"] == pytest.approx(auroc)
    assert abs(eligible["true_risk"].mean() - mortality) < 0.04
    # the label is the extraction's: death in this admission at or after the stay's cutoff
    s = eligible.merge(data["icu/icustays"], on=["subject_id", "hadm_id", "stay_id"]).merge(
        data["hosp/admissions"], on=["subject_id", "hadm_id"])
    label = s["deathtime"].notna() & (s["deathtime"] >= s["intime"] + pd.Timedelta(hours=HOURS))
    assert (label == s["died_after_cutoff"]).all()
    # short stays are never labelled, though a few end in death
    assert not truth.loc[~truth["eligible"], "died_after_cutoff"].any()


def test_diagnoses_leak_the_outcome(data):
    """Cardiac arrest is coded at discharge for many deaths: the trap real MIMIC has."""
    dx, adm = data["hosp/diagnoses_icd"], data["hosp/admissions"]
    arrest = set(dx.loc[dx["icd_code"].isin(["I469", "4275"]), "hadm_id"])
    died = adm["hospital_expire_flag"] == 1
    coded = adm["hadm_id"].isin(arrest)
    assert coded[died].mean() > 0.4 and coded[~died].mean() < 0.02


def test_events_per_stay_in_window(data):
    stays = data["icu/icustays"].assign(cutoff=lambda s: s["intime"] + pd.Timedelta(hours=HOURS))
    stays = stays[stays["outtime"] >= stays["cutoff"]]
    counts = pd.concat([
        _window_events(data["hosp/labevents"], stays, "charttime", "subject_id")["stay_id"],
        _window_events(data["hosp/prescriptions"], stays, "starttime", ["subject_id", "hadm_id"])["stay_id"],
        _window_events(data["icu/procedureevents"], stays, "starttime", "stay_id")["stay_id"],
        _window_events(data["icu/ingredientevents"], stays, "starttime", "stay_id")["stay_id"],
    ]).value_counts()
    assert 40 < counts.median() < 150
    assert counts.quantile(0.05) > 15 and counts.max() > 300
    # long-tailed code frequencies: the top lab is far more common than the median one
    freq = data["hosp/labevents"]["itemid"].value_counts()
    assert len(freq) > 150 and freq.iloc[0] > 50 * freq.median()


def test_planted_blood_cultures_are_stored_before_the_cutoff(data):
    """positive_blood_culture fires on a result known in the window, not on a draw whose
    result arrives after the cutoff (those are only pending at the cutoff)."""
    stays = data["icu/icustays"].assign(cutoff=lambda s: s["intime"] + pd.Timedelta(hours=HOURS))
    micro = data["hosp/microbiologyevents"]
    micro = micro[micro["ab_itemid"].isna()].assign(org=micro["org_itemid"].astype("Int64").astype(str))
    planted = data["truth/planted_events"]
    bc = planted[planted["rule"] == "positive_blood_culture"].assign(time=lambda d: pd.to_datetime(d["time"]))
    assert len(bc) > 50
    rows = bc.merge(micro, left_on=["subject_id", "time", "itemid_or_ndc"], right_on=["subject_id", "charttime", "org"])
    assert len(rows) == len(bc)
    rows = rows.merge(stays[["stay_id", "cutoff"]], on="stay_id")
    assert (rows["charttime"] < rows["storetime"]).all() and (rows["storetime"] < rows["cutoff"]).all()
    # positive blood cultures drawn in the window but stored after the cutoff exist and fire nothing
    positive = _window_events(micro[(micro["spec_itemid"] == 70012) & micro["org_itemid"].notna()], stays,
                              "charttime", "subject_id")
    late = positive[positive["storetime"] >= positive["cutoff"]]
    assert len(late) > 20
    assert not late.merge(bc, left_on=["stay_id", "charttime"], right_on=["stay_id", "time"]).shape[0]


def test_planted_events_all_found_in_the_extraction(data, tmp_path):
    """Through the real extraction: every planted event of a cohort stay is an extracted
    event (cultures keep their organism code, ventilation its start), and before the
    cutoff no culture shows a result stored after it nor a procedure a duration that ends after it."""
    from ehrseq.sources.extract import extract
    from ehrseq.sources.truth import export_truth

    metrics = extract("synthetic", data["dir"], tmp_path / "events.parquet", tmp_path / "cohort.parquet",
                      tmp_path / "diagnoses.parquet", observation_hours=HOURS, min_age=18,
                      split_fractions={"train": 0.7, "val": 0.15, "test": 0.15}, seed=0)
    events = pd.read_parquet(tmp_path / "events.parquet")
    cohort = pd.read_parquet(tmp_path / "cohort.parquet")
    planted = data["truth/planted_events"]
    planted = planted[planted["stay_id"].isin(cohort["stay_id"])]
    # the truth folder exactly as the extract stage writes it (reading the CSV itself, so
    # an NDC such as 00121963886 must keep its leading zeros to match its event)
    truth = export_truth("synthetic", data["dir"], tmp_path / "events.parquet", tmp_path / "truth",
                         tmp_path / "diagnoses.parquet")
    matched = pd.read_parquet(tmp_path / "truth/planted_events.parquet")
    assert len(matched) == len(planted) == truth["planted_events_matched"]
    # companions of cohort stays: every one is an extracted event, none is planted
    companions = data["truth/companion_events"]
    companions = companions[companions["stay_id"].isin(cohort["stay_id"])]
    matched_companions = pd.read_parquet(tmp_path / "truth/companion_events.parquet")
    assert len(matched_companions) == len(companions) == truth["companion_events_matched"] > 1000
    assert not set(matched_companions["event_row"]) & set(matched["event_row"])
    assert (matched_companions.merge(matched[["stay_id", "rule"]].drop_duplicates(), on=["stay_id", "rule"])
            .shape[0] == len(matched_companions))  # only in stays where their rule fired
    # every code a latent problem emits is spelled exactly as the extraction spells it
    problem_codes = pd.read_parquet(tmp_path / "truth/problem_codes.parquet")
    diagnoses = pd.read_parquet(tmp_path / "diagnoses.parquet")
    assert truth["problem_codes_not_extracted"] == 0
    for kind, codes in problem_codes.groupby("kind")["code"]:
        seen = set(diagnoses["code"]) if kind == "diagnosis" else set(events.loc[events["event_type"] == kind, "code"])
        assert set(codes) <= seen, (kind, sorted(set(codes) - seen)[:5])
    assert set(problem_codes["problem"]) == {"sepsis", "shock", "renal_failure", "dka", "cardiac_injury",
                                             "respiratory_failure"}
    vasopressor_codes = events.loc[matched.loc[matched["rule"] == "vasopressor", "event_row"], "code"]
    assert vasopressor_codes.str.startswith("NDC//00").any()
    counts = matched["rule"].value_counts()
    assert counts["positive_blood_culture"] > 50 and counts["invasive_ventilation"] > 100
    rows = events.loc[matched["event_row"]]
    assert not rows["after_cutoff"].any()
    bc_rows = events.loc[matched.loc[matched["rule"] == "positive_blood_culture", "event_row"]]
    assert bc_rows["code"].str.match(r"MICRO//70012//\d+$").all() and (bc_rows["flag"] == "positive").all()

    withheld = metrics["events"]["values_withheld_at_cutoff"]
    assert withheld["microbiology"] > 0 and withheld["procedure"] > 0 and withheld["ingredient"] > 0
    assert withheld["prescription"] == 0
    pre = events[~events["after_cutoff"]].merge(cohort[["stay_id", "cutoff"]], on="stay_id")
    pending = pre["code"].str.endswith("//PENDING") & (pre["event_type"] == "microbiology")
    assert pending.sum() == withheld["microbiology"]
    # a culture shown with its result before the cutoff was stored before the cutoff
    micro = data["hosp/microbiologyevents"].groupby(["subject_id", "charttime", "spec_itemid"], as_index=False)[
        "storetime"].min()
    shown = pre[(pre["event_type"] == "microbiology") & ~pending].assign(
        spec_itemid=lambda d: d["code"].str.split("//").str[1].astype(int))
    shown = shown.merge(micro, left_on=["subject_id", "time", "spec_itemid"],
                        right_on=["subject_id", "charttime", "spec_itemid"])
    assert len(shown) > 0 and (shown["storetime"] < shown["cutoff"]).all()
    # a ventilation shown with its duration before the cutoff ended before it
    vent = data["icu/procedureevents"]
    vent = vent[vent["itemid"] == 225792][["stay_id", "starttime", "endtime"]]
    shown = pre[pre["code"] == "ITEM//225792"].merge(vent, left_on=["stay_id", "time"],
                                                     right_on=["stay_id", "starttime"])
    with_duration = shown["value"].notna()
    assert with_duration.any() and (~with_duration).any()
    assert (shown.loc[with_duration, "endtime"] < shown.loc[with_duration, "cutoff"]).all()
    assert (shown.loc[~with_duration, "endtime"] >= shown.loc[~with_duration, "cutoff"]).all()
    assert (shown.loc[~with_duration, "text"] == "Procedure: Invasive Ventilation").all()


def test_lab_results_are_stored_minutes_to_hours_later_and_rules_wait_for_them(data):
    """Lab storetimes follow charttime by minutes to a few hours; a lab rule fires only on
    results stored before the cutoff, and results still pending at the cutoff exist."""
    labs = data["hosp/labevents"].drop_duplicates()
    delay = (labs["storetime"] - labs["charttime"]).dt.total_seconds() / 60
    assert (delay >= 10).all() and (delay <= 24 * 60).all()
    assert 50 < delay.median() < 120 and delay.quantile(0.9) < 4 * 60
    # one storetime per specimen: a draw's results arrive together
    assert labs.groupby("specimen_id")["storetime"].nunique().max() == 1
    stays = data["icu/icustays"].assign(cutoff=lambda s: s["intime"] + pd.Timedelta(hours=HOURS))
    planted = data["truth/planted_events"]
    planted_labs = planted[planted["table"] == "labevents"].assign(
        time=lambda d: pd.to_datetime(d["time"]), itemid=lambda d: d["itemid_or_ndc"].astype(int))
    rows = planted_labs.merge(labs, left_on=["subject_id", "time", "itemid"],
                              right_on=["subject_id", "charttime", "itemid"]).merge(stays[["stay_id", "cutoff"]],
                                                                                    on="stay_id")
    assert len(rows) == len(planted_labs) > 500 and (rows["storetime"] < rows["cutoff"]).all()
    window = _window_events(labs, stays, "charttime", "subject_id")
    pending_high = window[(window["itemid"] == data["rules"]["codes"]["lactate_itemid"])
                          & (window["valuenum"] > data["rules"]["codes"]["lactate_threshold"])
                          & (window["storetime"] >= window["cutoff"])]
    assert len(pending_high) > 5
    assert not pending_high.merge(planted_labs, left_on=["stay_id", "charttime"],
                                  right_on=["stay_id", "time"]).shape[0]


def test_companions_recomputed_from_tables(data):
    """Companions are exactly, per stay where a rule fired, the window events of the
    rule's companion items (rules.json) that are not planted; a culture is named by its
    spec_itemid. Recomputed here from the tables alone."""
    rules, planted = data["rules"], data["truth/planted_events"]
    stays = data["icu/icustays"].assign(cutoff=lambda s: s["intime"] + pd.Timedelta(hours=rules["observation_hours"]))
    micro = data["hosp/microbiologyevents"]
    sources = {  # table -> (window events, time column, item column, code column)
        "labevents": (_window_events(data["hosp/labevents"].drop_duplicates(), stays, "charttime", "subject_id"),
                      "charttime", "itemid", "itemid"),
        "prescriptions": (_window_events(data["hosp/prescriptions"], stays, "starttime", ["subject_id", "hadm_id"]),
                          "starttime", "drug", "ndc"),
        "microbiologyevents": (_window_events(micro[micro["ab_itemid"].isna()], stays, "charttime", "subject_id"),
                               "charttime", "spec_itemid", "spec_itemid"),
        "procedureevents": (_window_events(data["icu/procedureevents"], stays, "starttime", "stay_id"),
                            "starttime", "itemid", "itemid"),
    }
    expected = []
    for rule, items in rules["companions"].items():
        fired = set(planted.loc[planted["rule"] == rule, "stay_id"])
        for spec in items:
            table, item = spec.split(":")
            rows, time_col, item_col, code_col = sources[table]
            rows = rows[(rows[item_col].astype(str) == item) & rows["stay_id"].isin(fired)]
            time = rows[time_col].dt.strftime("%Y-%m-%d %H:%M:%S")
            code = rows[code_col] if code_col == "ndc" else rows[code_col].astype("Int64").astype(str)
            frame = pd.DataFrame({"stay_id": rows["stay_id"].to_numpy(), "rule": rule, "table": table,
                                  "itemid_or_ndc": code.to_numpy(), "time": time.to_numpy()})
            # planted events of the same table and time (same item: the same event) are not companions
            same = planted.merge(frame, on=["stay_id", "table", "time"], suffixes=("_p", ""))
            if table == "microbiologyevents":
                taken = {(s, t) for s, t in zip(same["stay_id"], same["time"])}
            else:
                same = same[same["itemid_or_ndc_p"] == same["itemid_or_ndc"]]
                taken = {(s, t, c) for s, t, c in zip(same["stay_id"], same["time"], same["itemid_or_ndc"])}
            keys = (list(zip(frame["stay_id"], frame["time"])) if table == "microbiologyevents"
                    else list(zip(frame["stay_id"], frame["time"], frame["itemid_or_ndc"])))
            expected.append(frame[[k not in taken for k in keys]])
    expected = pd.concat(expected, ignore_index=True)
    key = ["stay_id", "rule", "table", "itemid_or_ndc", "time"]
    got = data["truth/companion_events"]
    pd.testing.assert_frame_equal(got[key].sort_values(key).reset_index(drop=True),
                                  expected[key].sort_values(key).reset_index(drop=True))
    counts = got.groupby("rule")["stay_id"].nunique()
    # The named proxies are there and correlated with their rule's stays, but not collinear
    # with the planted events: most planted events have no companion at the same minute
    # (pending/negative blood cultures, lactates not above the threshold, older
    # troponins, Intubations 0-30 min before a share of ventilations).
    same_minute = planted.merge(got, on=["stay_id", "rule", "time"])[["stay_id", "rule", "time"]].drop_duplicates()
    for rule in ("positive_blood_culture", "high_lactate", "recent_troponin_abnormal", "invasive_ventilation"):
        fired = planted[planted["rule"] == rule]
        assert 0.05 * fired["stay_id"].nunique() < counts[rule] <= fired["stay_id"].nunique(), rule
        assert (same_minute["rule"] == rule).sum() < 0.5 * len(fired.drop_duplicates(["stay_id", "time"])), rule


def test_intubation_accompanies_a_share_of_ventilations(data, tmp_path):
    """An Intubation is charted 0-30 min before a share (intubation_share) of invasive
    ventilations and in a few stays never ventilated; with share 1 before every one."""
    def paired(procs):
        vent = procs[procs["itemid"] == 225792][["stay_id", "starttime"]]
        tube = procs[procs["itemid"] == 224385][["stay_id", "starttime"]]
        both = vent.merge(tube, on="stay_id", suffixes=("", "_tube"))
        lead = both["starttime"] - both["starttime_tube"]
        near = both[(lead >= pd.Timedelta(0)) & (lead <= pd.Timedelta(minutes=30))]
        share = vent.set_index(["stay_id", "starttime"]).index.isin(
            near.set_index(["stay_id", "starttime"]).index).mean()
        return share, set(tube["stay_id"]) - set(vent["stay_id"]), len(vent)

    share, lone, n_vent = paired(data["icu/procedureevents"])
    assert data["rules"]["generator"]["intubation_share"] == 0.6
    assert abs(share - 0.6) < 4 * np.sqrt(0.24 / n_vent) + 0.01, share
    assert len(lone) > 10
    generate(tmp_path / "all", n_patients=150, seed=3, intubation_share=1.0)
    procs = pd.read_csv(tmp_path / "all/icu/procedureevents.csv.gz", parse_dates=["starttime"])
    assert paired(procs)[0] == 1.0
    with pytest.raises(ValueError, match="intubation_share"):
        generate(tmp_path / "bad", n_patients=10, seed=1, intubation_share=1.5)


def test_survival_truth_matches_the_generated_death_times(data):
    """Monte-Carlo check of rules.true_survival: the share of cohort-length stays that die
    (their own death: the last stay of the admission) within t hours of the cutoff matches
    the mean of 1 - S_i(t) over stays, within 4 standard errors; sicker stays die sooner."""
    from scipy.stats import spearmanr

    from ehrseq.sources.synthetic.rules import death_rate_per_hour, true_survival

    truth = data["truth/stay_risk"]
    np.testing.assert_allclose(truth["death_rate_per_hour"], death_rate_per_hour(truth["logit"]), rtol=1e-12)
    stays = truth[truth["eligible"]].merge(data["icu/icustays"], on=["subject_id", "hadm_id", "stay_id"]).merge(
        data["hosp/admissions"][["hadm_id", "deathtime"]], on="hadm_id")
    last = stays["intime"] == stays.groupby("hadm_id")["intime"].transform("max")
    own = stays["died_after_cutoff"] & last
    hours = (stays["deathtime"] - stays["intime"]).dt.total_seconds() / 3600 - HOURS
    assert (hours[own] > 0).all()
    for t in (6, 24, 72, 168, 500):
        p = 1 - true_survival(stays["true_risk"], stays["death_rate_per_hour"], t)  # P(own death by t)
        observed = (own & (hours <= t)).mean()
        se = np.sqrt((p * (1 - p)).sum()) / len(stays)
        assert abs(observed - p.mean()) < 4 * se, (t, observed, p.mean(), se)
    assert 0.7 < (hours[own] <= 168).mean() < 0.95  # most deaths within 7 days, some later
    assert spearmanr(stays.loc[own, "death_rate_per_hour"], hours[own]).statistic < -0.1
    # deaths stay in hospital: the admission ends at the death (checked for all in
    # test_no_overlaps_and_nothing_after_death), and S(infinity) = 1 - true_risk
    np.testing.assert_allclose(true_survival(stays["true_risk"], stays["death_rate_per_hour"], np.inf),
                               1 - stays["true_risk"])


def test_catalogue_keeps_codes_and_names_exactly():
    """The catalogue CSVs are read as text: leading zeros and exact spacing survive."""
    from ehrseq.sources.synthetic.catalogue import DIAGNOSES, DRUGS, LABS, SPECIMENS

    assert DIAGNOSES.loc[DIAGNOSES["icd10"] == "A419", "icd9"].item() == "0389"
    assert "Sodium Chloride 0.9%  Flush" in set(DRUGS["drug"])
    assert SPECIMENS["test_name"][0] == "Blood Culture, Routine"
    assert LABS["itemid"].dtype.kind == "i" and LABS["unit"].isna().sum() >= 1  # INR has no unit


REFERENCE = Path(__file__).parent / "data" / "synthetic_reference.json"


def _reference_summary(out: Path) -> dict:
    """What the committed reference pins: rows per file and every stay's truth."""
    rows = {}
    for path in sorted(out.rglob("*.csv.gz")):
        with gzip.open(path, "rt") as f:
            rows[str(path.relative_to(out))] = sum(1 for _ in f) - 1  # minus the header
    risk = pd.read_csv(out / "truth/stay_risk.csv.gz")
    return {"rows": rows, "stay_risk": {c: risk[c].tolist() for c in ("stay_id", "logit", "true_risk",
                                                                      "death_rate_per_hour", "died_after_cutoff")}}


def test_same_seed_matches_the_committed_reference(tmp_path):
    """Same seed, same data, across machines: a tiny run against a committed reference,
    floats within a tolerance (float formatting may differ in the last digit across CPUs,
    so no hash). Regenerate after an intended change of the data with
    `python tests/test_synthetic.py` and say why in the commit."""
    generate(tmp_path / "s", n_patients=40, seed=2)
    got, want = _reference_summary(tmp_path / "s"), json.loads(REFERENCE.read_text())
    assert got["rows"] == want["rows"]
    assert got["stay_risk"]["stay_id"] == want["stay_risk"]["stay_id"]
    assert got["stay_risk"]["died_after_cutoff"] == want["stay_risk"]["died_after_cutoff"]
    for col in ("logit", "true_risk", "death_rate_per_hour"):
        np.testing.assert_allclose(got["stay_risk"][col], want["stay_risk"][col], rtol=1e-9, atol=1e-12)


if __name__ == "__main__":  # regenerate the committed reference
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp) / "s", n_patients=40, seed=2)
        REFERENCE.parent.mkdir(exist_ok=True)
        REFERENCE.write_text(json.dumps(_reference_summary(Path(tmp) / "s"), indent=1) + "\n")
