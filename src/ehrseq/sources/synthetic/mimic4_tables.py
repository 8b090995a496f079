"""Formatting simulated rows into MIMIC-IV v2.2 tables, and the deliberate defects.

Each table has MIMIC-IV's file name and column order, is sorted by subject, time and
item, and numbers its ids in that order. Times are written 'YYYY-MM-DD HH:MM:SS'; the
csv.gz bytes are deterministic (gzip mtime 0). The defects (duplicate lab rows, orphan
prescriptions and procedureevents) are what an extraction must count and drop.
"""
from __future__ import annotations

import gzip
import io
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from ehrseq.sources.synthetic.catalogue import (
    ANTIBIOTICS,
    DIAGNOSES,
    DRUG_INDEX,
    DRUG_NDCS,
    DRUGS,
    INGREDIENT_INDEX,
    INGREDIENTS,
    LABS,
    ORGANISMS,
    PROCEDURES,
    SPECIMENS,
)
from ehrseq.sources.synthetic.rules import (
    CREATININE,
    INVASIVE_VENTILATION,
    LACTATE,
    NOREPINEPHRINE,
    POTASSIUM,
    TROPONIN_T,
)
from ehrseq.sources.synthetic.simulate import (
    ARTERIAL_LINE,
    DAY,
    HOUR,
    MINUTE,
    ORDER_RECIPES,
    Ids,
    choice,
    lognormal,
    providers,
)

GZIP_LEVEL = 4  # level 6 costs ~4x the time for ~7% smaller files

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
    "truth/stay_risk": ["subject_id", "hadm_id", "stay_id", "logit", "true_risk", "death_rate_per_hour", "eligible",
                        "died_after_cutoff"],
    "truth/planted_events": ["subject_id", "stay_id", "rule", "table", "itemid_or_ndc", "time"],
    "truth/companion_events": ["subject_id", "stay_id", "rule", "table", "itemid_or_ndc", "time"],
    "truth/problem_codes": ["problem", "kind", "code"],
}

# Recording habits of MIMIC-IV (probabilities per row, draw or culture)
NO_HADM_SHARE = 0.05  # lab draws and cultures with no hadm_id
LAB_PROVIDER_SHARE = 0.4  # lab draws with an order_provider_id
ICU_STAT_SHARE = 0.5  # ICU lab draws ordered STAT (ward draws are ROUTINE)
NO_PRIORITY_SHARE = 0.05  # lab draws with no priority
DOSES_PER_DAY = ([1.0, 2.0, 3.0, 4.0, np.nan], [0.35, 0.25, 0.15, 0.1, 0.15])  # NaN: not recorded
DILUTION_AT_MOST_SHARE = 0.7  # MIC reported as "<=" ...
DILUTION_EQUAL_SHARE = 0.5  # ... else "=" this often, else ">="
INTERPRETATIONS = (["S", "R", "I"], [0.72, 0.22, 0.06])  # susceptible, resistant, intermediate
MICRO_PROVIDER_SHARE = 0.3  # cultures with an order_provider_id
PROCEDURE_FINISHED_SHARE = 0.9  # procedureevents FinishedRunning (else Stopped)
INGREDIENT_FINISHED_SHARE = 0.85  # ingredientevents FinishedRunning (else Stopped)
_DILUTIONS = np.array([0.25, 0.5, 1, 2, 4, 8, 16, 32, 64])
_LINE_SITES = ("Right Radial", "Left Radial", "Right IJ", "Left Subclavian", "Right Antecubital", "Left Forearm")
YEAST = int(np.flatnonzero(ORGANISMS["org_name"] == "YEAST")[0])

# --------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------


class CsvGzWriter:
    """One csv.gz file written chunk by chunk; deterministic bytes (gzip mtime=0)."""

    def __init__(self, path: Path, columns: list[str]):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.columns = columns
        self.rows = 0
        self._raw = open(path, "wb")  # noqa: SIM115 -- open across write() calls; close() closes it
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


def _const(value, n: int, kind: pa.DataType | None = None) -> pa.Array:
    kind = pa.string() if kind is None else kind
    return pa.array([value] * n, type=kind) if value is not None else pa.nulls(n, kind)


# --------------------------------------------------------------------------------------
# Formatting as MIMIC-IV tables (each sorted by subject, time, item; ids in that order)
# --------------------------------------------------------------------------------------


def _sorted(rows: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    return rows.sort_values(keys, kind="stable").reset_index(drop=True)


def hadm_known(rng, unit: np.ndarray, n_units: int) -> np.ndarray:
    """Some lab draws and cultures (`unit` numbers each row's) carry no hadm_id, as in MIMIC."""
    return (rng.random(n_units) >= NO_HADM_SHARE)[unit]


def format_patients(patients: pd.DataFrame) -> pa.Table:
    dod = patients["dod"].to_numpy()
    return pa.table({
        "subject_id": _int(patients["subject_id"]), "gender": _str(patients["gender"]),
        "anchor_age": _int(patients["anchor_age"]), "anchor_year": _int(patients["anchor_year"]),
        "anchor_year_group": _str(patients["anchor_year_group"]),
        "dod": pa.array(np.where(dod >= 0, dod // DAY, 0).astype(np.int32), pa.date32(), mask=dod < 0),
    })


def format_admissions(adm: pd.DataFrame) -> pa.Table:
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


def format_icustays(stays: pd.DataFrame) -> pa.Table:
    intime, outtime = stays["intime"].to_numpy(), stays["outtime"].to_numpy()
    return pa.table({
        "subject_id": _int(stays["subject_id"]), "hadm_id": _int(stays["hadm_id"]),
        "stay_id": _int(stays["stay_id"]), "first_careunit": _str(stays["first_careunit"]),
        "last_careunit": _str(stays["last_careunit"]), "intime": _ts(intime), "outtime": _ts(outtime),
        "los": _float((outtime - intime) / DAY, 4),
    })


def format_diagnoses(adm: pd.DataFrame, dx: pd.DataFrame) -> pa.Table:
    a = dx["adm"].to_numpy()
    version = adm["icd_version"].to_numpy()[a]
    codes = np.where(version == 9, DIAGNOSES["icd9"].to_numpy()[dx["dx"]], DIAGNOSES["icd10"].to_numpy()[dx["dx"]])
    return pa.table({
        "subject_id": _int(adm["subject_id"].to_numpy()[a]), "hadm_id": _int(adm["hadm_id"].to_numpy()[a]),
        "seq_num": _int(dx["seq_num"]), "icd_code": _str(codes), "icd_version": _int(version),
    })


def format_labs(rng, labs: pd.DataFrame, stays: pd.DataFrame, ids: Ids) -> tuple[pa.Table, np.ndarray]:
    labs = _sorted(labs, ["subject", "minute", "draw", "lab"])
    n = len(labs)
    first_of_draw = np.r_[True, labs["draw"].to_numpy()[1:] != labs["draw"].to_numpy()[:-1]]
    draw_no = np.cumsum(first_of_draw) - 1  # draws are contiguous after sorting
    n_draws = int(draw_no.max()) + 1 if n else 0
    specimen = ids.sparse("specimen", rng, n_draws)[draw_no]
    stay = labs["stay"].to_numpy()
    lab = labs["lab"].to_numpy()
    has_hadm = hadm_known(rng, draw_no, n_draws)
    charttime = labs["minute"].to_numpy() * MINUTE
    valuenum = labs["valuenum"].to_numpy()
    itemid = LABS["itemid"].to_numpy()[lab]
    # Troponin T below the assay limit is reported as text, with no number (as in MIMIC).
    below_limit = (itemid == TROPONIN_T) & (valuenum < 0.01)
    value = pc.cast(pa.array(valuenum), pa.string())
    value = pc.if_else(pa.array(below_limit), pa.scalar("<0.01"), value)
    provider = providers(rng, n_draws)[draw_no]
    has_provider = (rng.random(n_draws) < LAB_PROVIDER_SHARE)[draw_no]
    priority = np.where(labs["icu"].to_numpy() & (rng.random(n_draws) < ICU_STAT_SHARE)[draw_no], "STAT", "ROUTINE")
    has_priority = (rng.random(n_draws) > NO_PRIORITY_SHARE)[draw_no]
    ref_lo, ref_hi = LABS["ref_lo"].to_numpy()[lab], LABS["ref_hi"].to_numpy()[lab]
    unit = LABS["unit"].to_numpy()[lab]
    table = pa.table({
        "labevent_id": _int(ids.dense("labevent", n)), "subject_id": _int(stays["subject_id"].to_numpy()[stay]),
        "hadm_id": _int(stays["hadm_id"].to_numpy()[stay], has_hadm), "specimen_id": _int(specimen),
        "itemid": _int(itemid), "order_provider_id": _str(provider, has_provider), "charttime": _ts(charttime),
        "storetime": _ts(labs["store_min"].to_numpy() * MINUTE), "value": value,
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


def format_prescriptions(rng, rx: pd.DataFrame, stays: pd.DataFrame, ids: Ids) -> tuple[pa.Table, np.ndarray]:
    rx = _sorted(rx, ["subject", "minute", "drug"])
    n = len(rx)
    stay, drug, ndc_row = rx["stay"].to_numpy(), rx["drug"].to_numpy(), rx["ndc_row"].to_numpy()
    subject = stays["subject_id"].to_numpy()[stay]
    seq = rx.groupby("subject").cumcount().to_numpy() + 1
    start = rx["minute"].to_numpy() * MINUTE
    stop = start + (np.round(lognormal(rng, 36, 0.9, n, 1, 240)) * HOUR).astype(np.int64)
    cat = {c: DRUGS[c].to_numpy()[drug] for c in DRUGS.columns}
    base = cat["drug_type"] == "BASE"
    dose = cat["dose_lo"] + (cat["dose_hi"] - cat["dose_lo"]) * rng.random(n)
    dose = np.where(dose >= 10, np.round(dose), np.round(dose, 2))
    doses_per_day = rng.choice(DOSES_PER_DAY[0], n, p=DOSES_PER_DAY[1])
    table = pa.table({
        "subject_id": _int(subject), "hadm_id": _int(stays["hadm_id"].to_numpy()[stay]),
        "pharmacy_id": _int(ids.sparse("pharmacy", rng, n)),
        "poe_id": _str(np.char.add(np.char.add(subject.astype(str), "-"), seq.astype(str))),
        "poe_seq": _int(seq), "order_provider_id": _str(providers(rng, n)),
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


def format_micro(rng, cultures: pd.DataFrame, stays: pd.DataFrame, ids: Ids) -> pa.Table:
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
    store = cultures["store_min"].to_numpy()[k] * MINUTE  # drawn in _cultures, used by score
    dilution = _DILUTIONS[rng.integers(0, len(_DILUTIONS), n)]
    comparison = np.where(rng.random(n) < DILUTION_AT_MOST_SHARE, "<=",
                          np.where(rng.random(n) < DILUTION_EQUAL_SHARE, "=", ">="))
    interpretation = choice(rng, INTERPRETATIONS, n)
    has_hadm = hadm_known(rng, k, c)
    provider_ok = (rng.random(c) < MICRO_PROVIDER_SHARE)[k]
    no_growth = ~pos & (within == 0)
    urine_count = pos & ~is_ab & (SPECIMENS["spec_type_desc"].to_numpy()[spec] == "URINE")
    return pa.table({
        "microevent_id": _int(ids.dense("microevent", n)),
        "subject_id": _int(stays["subject_id"].to_numpy()[stay]),
        "hadm_id": _int(stays["hadm_id"].to_numpy()[stay], has_hadm),
        "micro_specimen_id": _int(ids.sparse("micro_specimen", rng, c)[k]),
        "order_provider_id": _str(providers(rng, c)[k], provider_ok),
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


def format_procedures(rng, procs: pd.DataFrame, stays: pd.DataFrame, patients: pd.DataFrame,
                       ids: Ids) -> tuple[pa.Table, np.ndarray]:
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
        "statusdescription": _str(np.where(rng.random(n) < PROCEDURE_FINISHED_SHARE, "FinishedRunning", "Stopped")),
        "originalamount": _float(value, 1), "originalrate": _int(duration.astype(int)),
    })
    return table, PROCEDURES["itemid"].to_numpy()[proc] != INVASIVE_VENTILATION


def format_ingredients(rng, orders: pd.DataFrame, stays: pd.DataFrame, patients: pd.DataFrame,
                        ids: Ids) -> pa.Table:
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
            parts.append(pd.DataFrame({"order": o, "item": INGREDIENT_INDEX[ingredient], "amount": volume * per_ml,
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
        "statusdescription": _str(np.where(rng.random(n) < INGREDIENT_FINISHED_SHARE, "FinishedRunning", "Stopped")),
        "originalamount": _float(amount), "originalrate": _float(rate, 3, valid=continuous),
    })


def format_stay_risk(kept: pd.DataFrame) -> pa.Table:
    return pa.table({
        "subject_id": _int(kept["subject_id"]), "hadm_id": _int(kept["hadm_id"]), "stay_id": _int(kept["stay_id"]),
        "logit": _float(kept["logit"]), "true_risk": _float(kept["true_risk"]),
        "death_rate_per_hour": _float(kept["death_rate_per_hour"]),
        "eligible": pa.array(kept["eligible"].to_numpy()),
        "died_after_cutoff": pa.array(kept["died_after_cutoff"].to_numpy()),
    })


def format_planted(planted: pd.DataFrame, stays: pd.DataFrame) -> pa.Table:
    """Planted (or companion) events: the item as its table names it, the time as written."""
    planted = _sorted(planted.assign(stay_id=stays["stay_id"].to_numpy()[planted["stay"]]),
                      ["stay_id", "minute", "rule", "code"])
    stay = planted["stay"].to_numpy()
    time = pc.strftime(_ts(planted["minute"].to_numpy() * MINUTE), format="%Y-%m-%d %H:%M:%S")
    return pa.table({
        "subject_id": _int(stays["subject_id"].to_numpy()[stay]), "stay_id": _int(planted["stay_id"]),
        "rule": _str(planted["rule"]), "table": _str(planted["table"]), "itemid_or_ndc": _str(planted["code"]),
        "time": time,
    })


def format_problem_codes(emissions: dict[str, dict[str, list]]) -> pa.Table:
    """What each latent problem emits (simulate.PROBLEM_EMISSIONS), as the codes the
    MIMIC-IV extraction (sources/sql/mimic4/canonical.sql) gives those events and
    diagnoses: LAB//itemid, NDC//ndc (every NDC of the drug), ITEM//itemid,
    MICRO//spec_itemid//org_itemid (every organism, NEG for no growth, PENDING for a
    result not yet stored at the cutoff), ICD9//code and ICD10//code."""
    rows = []
    for problem, kinds in emissions.items():
        for kind, items in kinds.items():
            for item in items:
                if kind == "lab" or kind == "procedure":
                    codes = [f"{'LAB' if kind == 'lab' else 'ITEM'}//{item}"]
                elif kind == "prescription":
                    codes = [f"NDC//{ndc}" for ndc in DRUG_NDCS.loc[DRUG_NDCS["drug_index"] == DRUG_INDEX[item], "ndc"]]
                elif kind == "microbiology":
                    spec = SPECIMENS["spec_itemid"][item]
                    codes = [f"MICRO//{spec}//{org}" for org in [*ORGANISMS["org_itemid"], "NEG", "PENDING"]]
                else:  # diagnosis, named by its ICD-10 code
                    row = DIAGNOSES[DIAGNOSES["icd10"] == item].iloc[0]
                    codes = [f"ICD9//{row['icd9']}", f"ICD10//{row['icd10']}"]
                rows += [(problem, "diagnosis" if kind == "diagnosis" else kind, code) for code in codes]
    problem, kind, code = zip(*rows)
    return pa.table({"problem": _str(problem), "kind": _str(kind), "code": _str(code)})


def dictionaries() -> dict[str, pa.Table]:
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


def insert_copies(table: pa.Table, rng, candidates: np.ndarray, count: int,
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




def place_defects(rng, due: dict, labs: tuple[pa.Table, np.ndarray], rx: tuple[pa.Table, np.ndarray],
                  procs: tuple[pa.Table, np.ndarray]) -> tuple[pa.Table, pa.Table, pa.Table, dict]:
    """Place the defects still `due` (defect -> rows) among the candidate rows of each
    (table, candidates) pair: duplicate lab rows, prescriptions with an unknown hadm_id,
    procedureevents with an unknown stay_id. Returns the three tables and the rows placed."""
    placed = {}
    labs_t, placed["duplicate_lab_rows"] = insert_copies(labs[0], rng, labs[1], due["duplicate_lab_rows"])
    done = ORPHAN_PRESCRIPTION_ROWS - due["orphan_prescription_rows"]
    rx_t, placed["orphan_prescription_rows"] = insert_copies(
        rx[0], rng, rx[1], due["orphan_prescription_rows"], "hadm_id",
        ORPHAN_HADM_ID_START + done + np.arange(ORPHAN_PRESCRIPTION_ROWS))
    done = ORPHAN_PROCEDURE_ROWS - due["orphan_procedureevent_rows"]
    procs_t, placed["orphan_procedureevent_rows"] = insert_copies(
        procs[0], rng, procs[1], due["orphan_procedureevent_rows"], "stay_id",
        ORPHAN_STAY_ID_START + done + np.arange(ORPHAN_PROCEDURE_ROWS))
    return labs_t, rx_t, procs_t, placed
