"""The planted rules: their codes and constants, the risk function, the survival truth,
the companions of planted events, and rules.json.

Everything that decides a stay's true risk and death time is here; `simulate` only
makes the events the rules look at (and draws the outcome with these functions), and
the test suite recomputes the rules from the written tables with the constants in
rules.json.

A rule sees a result only once it is known: a lab or culture counts when its result is
stored (storetime) before the cutoff, the same condition the extraction uses to show a
value before the cutoff. A result drawn in the window but stored later is pending at the
cutoff and fires nothing (it can be a companion).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ehrseq.sources.synthetic.catalogue import (
    DRUG_INDEX,
    DRUG_NDCS,
    DRUGS,
    LABS,
    ORGANISMS,
    PROC_INDEX,
    PROCEDURES,
    SPECIMENS,
)


@dataclass(frozen=True)
class Rule:
    name: str
    effect: float  # added to the logit when the rule fires (at most once per stay)
    table: str  # the MIMIC-IV table of the events that fire it
    description: str


# Codes the rules look at
CREATININE, POTASSIUM, LACTATE, TROPONIN_T = 50912, 50971, 50813, 51003  # lab itemids
INVASIVE_VENTILATION = 225792  # procedureevents itemid
NOREPINEPHRINE = DRUG_INDEX["Norepinephrine"]  # row of DRUGS; any of its NDCs counts
BLOOD_CULTURE = 0  # row of SPECIMENS (spec_itemid 70012)
# Codes of companions (emitted by the same latent problem as a rule's events)
CK_MB, CK = 50911, 50910  # lab itemids: ordered with troponin in cardiac stays, though not in the same draws
INTUBATION, EXTUBATION, CRRT, DIALYSIS_CATHETER = 224385, 227194, 225802, 224270  # procedureevents itemids
VANCOMYCIN, PIPERACILLIN, FUROSEMIDE = (DRUG_INDEX[d] for d in ("Vancomycin", "Piperacillin-Tazobactam", "Furosemide"))

BASE_LOGIT = -4.0
AGE_EFFECT_PER_DECADE = 0.3  # per decade of age over 60
LACTATE_THRESHOLD = 4.0  # mmol/L; a lactate strictly above it fires high_lactate
TROPONIN_RECENT_HOURS = 12.0  # an abnormal troponin this close to the cutoff fires recent_troponin_abnormal
RULES = (
    Rule("vasopressor", 1.6, "prescriptions", "Norepinephrine prescription (any of its NDCs) started in the window"),
    Rule("high_lactate", 1.5, "labevents",
         f"Lactate (itemid {LACTATE}) valuenum > {LACTATE_THRESHOLD:g} mmol/L charted in the window and stored "
         "before the cutoff"),
    Rule("positive_blood_culture", 1.0, "microbiologyevents",
         "BLOOD CULTURE (spec_itemid 70012) with an organism (org_itemid set), charttime in the window and "
         "result stored (storetime) before the cutoff; a result still pending at the cutoff adds 0"),
    Rule("invasive_ventilation", 0.9, "procedureevents",
         f"Invasive Ventilation (itemid {INVASIVE_VENTILATION}) started in the window (its duration is not used)"),
    Rule("creatinine_and_potassium_abnormal", 1.4, "labevents",
         f"abnormal Creatinine ({CREATININE}) AND abnormal Potassium ({POTASSIUM}) both charted in the window "
         "and stored before the cutoff; either alone adds 0"),
    Rule("recent_troponin_abnormal", 1.2, "labevents",
         f"abnormal Troponin T ({TROPONIN_T}) charted within the last {TROPONIN_RECENT_HOURS:g} h before the "
         "cutoff and stored before it; earlier ones add 0"),
)
RULE_EFFECT = {r.name: r.effect for r in RULES}

# Companions: in a stay where a rule fired, its window events of these (table, item) that
# are not planted themselves. They come from the rule's latent problem (shock, sepsis,
# respiratory failure, renal failure, cardiac injury), so they correlate with the planted
# events without firing anything: lactates not above the threshold or still pending,
# blood cultures still pending or negative and the sepsis antibiotics, the Intubation
# and Extubation around a ventilation, older or pending troponins, ...
COMPANIONS = {
    "vasopressor": [("labevents", LACTATE)],
    "high_lactate": [("labevents", LACTATE)],
    "positive_blood_culture": [("microbiologyevents", BLOOD_CULTURE), ("prescriptions", VANCOMYCIN),
                               ("prescriptions", PIPERACILLIN)],
    "invasive_ventilation": [("procedureevents", INTUBATION), ("procedureevents", EXTUBATION)],
    "creatinine_and_potassium_abnormal": [("labevents", CREATININE), ("labevents", POTASSIUM),
                                          ("prescriptions", FUROSEMIDE), ("procedureevents", CRRT),
                                          ("procedureevents", DIALYSIS_CATHETER)],
    "recent_troponin_abnormal": [("labevents", TROPONIN_T), ("labevents", CK_MB), ("labevents", CK)],
}

# Time to death: a stay that dies (probability true_risk) dies at cutoff + Exponential(
# death_rate_per_hour) hours, death_rate_per_hour = DEATH_RATE_AT_ZERO_LOGIT *
# exp(DEATH_RATE_PER_LOGIT * logit): sicker stays die sooner. At the logit of a typical
# death (-1.5) the median wait is ~2.5 days and 85% die within 7 days.
DEATH_RATE_AT_ZERO_LOGIT = 1 / 48  # per hour
DEATH_RATE_PER_LOGIT = 0.4


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def death_rate_per_hour(logit):
    """Hazard of death after the cutoff for a stay that dies, increasing in the logit."""
    return DEATH_RATE_AT_ZERO_LOGIT * np.exp(DEATH_RATE_PER_LOGIT * np.asarray(logit, float))


def true_survival(true_risk, rate, hours):
    """P(no in-hospital death by `hours` after the cutoff) = 1 - true_risk * (1 - exp(-rate * hours)).

    The trap: discharge alive is a competing event, not independent censoring: a stay
    that dies is never discharged first. This is 1 minus the cumulative incidence of
    in-hospital death; a Kaplan-Meier estimate that censors at discharge estimates
    something else (it would treat the discharged as still at risk of dying in hospital).
    Arguments broadcast (numpy).
    """
    return 1.0 - np.asarray(true_risk, float) * (1.0 - np.exp(-np.asarray(rate, float) * np.asarray(hours, float)))


def score(stays: pd.DataFrame, labs: pd.DataFrame, rx: pd.DataFrame, cultures: pd.DataFrame,
          procs: pd.DataFrame) -> tuple[np.ndarray, pd.DataFrame]:
    """The planted logit per stay from its window events, and the events that fired.

    Window: ICU events at a minute before `cut_min` (the first minute at or after the
    cutoff); labs and cultures must also be stored before it. Returns the logit
    [n_stays] and one row per firing event (stay, rule, table, code, minute, and `row`,
    its index label in its table).
    """
    cut_min = stays["cut_min"].to_numpy()

    def stored(rows):
        return rows["store_min"].to_numpy() < cut_min[rows["stay"].to_numpy()]

    lab_item = LABS["itemid"].to_numpy()[labs["lab"].to_numpy()]
    abnormal = labs["abnormal"].to_numpy()
    lw = in_window(labs, cut_min) & stored(labs)
    fired = {
        "vasopressor": ("prescriptions", rx[in_window(rx, cut_min) & (rx["drug"].to_numpy() == NOREPINEPHRINE)]),
        "high_lactate": ("labevents", labs[lw & (lab_item == LACTATE) & (labs["valuenum"].to_numpy()
                                                                          > LACTATE_THRESHOLD)]),
        "positive_blood_culture": ("microbiologyevents", cultures[
            in_window(cultures, cut_min) & (cultures["spec"].to_numpy() == BLOOD_CULTURE)
            & (cultures["organism"] >= 0) & ~cultures["date_only"].to_numpy() & stored(cultures)]),
        "invasive_ventilation": ("procedureevents", procs[
            in_window(procs, cut_min) & (procs["proc"].to_numpy() == PROC_INDEX[INVASIVE_VENTILATION])]),
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
        planted.append(_event_rows(rows, rule, table, event_code(table, rows)))
    return logit, pd.concat(planted, ignore_index=True)


def in_window(rows: pd.DataFrame, cut_min: np.ndarray) -> np.ndarray:
    """ICU events charted before their stay's cutoff (`cut_min` per stay)."""
    return rows["icu"].to_numpy() & (rows["minute"].to_numpy() < cut_min[rows["stay"].to_numpy()])


def companions(stays: pd.DataFrame, tables: dict[str, pd.DataFrame], planted: pd.DataFrame) -> pd.DataFrame:
    """The companions of each rule that fired (see COMPANIONS), as rows like score's.

    `tables`: event rows by MIMIC-IV table name (labevents, prescriptions,
    microbiologyevents, procedureevents). A culture's code is its spec_itemid (a
    companion culture may be negative or pending, with no organism to name).
    """
    cut_min = stays["cut_min"].to_numpy()
    item_column = {"labevents": ("lab", LABS["itemid"].to_numpy()), "prescriptions": ("drug", None),
                   "microbiologyevents": ("spec", None), "procedureevents": ("proc", PROCEDURES["itemid"].to_numpy())}
    out = []
    for rule, items in COMPANIONS.items():
        fired = planted.loc[planted["rule"] == rule, "stay"].unique()
        for table, item in items:
            rows = tables[table]
            column, itemids = item_column[table]
            code = rows[column].to_numpy() if itemids is None else itemids[rows[column].to_numpy()]
            taken = planted.loc[planted["table"] == table, "row"].to_numpy()
            rows = rows[(code == item) & in_window(rows, cut_min) & np.isin(rows["stay"].to_numpy(), fired)
                        & ~rows.index.isin(taken)]
            culture = SPECIMENS["spec_itemid"].to_numpy()[rows["spec"].to_numpy()].astype(str) \
                if table == "microbiologyevents" else None
            out.append(_event_rows(rows, rule, table, event_code(table, rows) if culture is None else culture))
    return pd.concat(out, ignore_index=True)


def _event_rows(rows: pd.DataFrame, rule: str, table: str, code: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({"stay": rows["stay"].to_numpy(), "rule": rule, "table": table, "code": code,
                         "minute": rows["minute"].to_numpy(), "row": rows.index.to_numpy()})


def event_code(table: str, rows: pd.DataFrame) -> np.ndarray:
    """What identifies the event in its table: NDC, lab/procedure itemid, or org_itemid."""
    if table == "prescriptions":
        return DRUG_NDCS["ndc"].to_numpy()[rows["ndc_row"].to_numpy()]
    if table == "labevents":
        return LABS["itemid"].to_numpy()[rows["lab"].to_numpy()].astype(str)
    if table == "microbiologyevents":
        return ORGANISMS["org_itemid"].to_numpy()[rows["organism"].to_numpy()].astype(str)
    return PROCEDURES["itemid"].to_numpy()[rows["proc"].to_numpy()].astype(str)


def _item_name(table: str, item: int) -> str:
    if table == "prescriptions":
        return str(DRUGS["drug"][item])
    if table == "microbiologyevents":
        return str(SPECIMENS["spec_itemid"][item])
    return str(item)


def rules_document(observation_hours: float, seed: int, n_patients: int, chunk_patients: int,
                   intubation_share: float, defects: dict) -> dict:
    """truth/rules.json: every constant a reader needs to recompute the risk from the tables."""
    return {
        "observation_hours": observation_hours,
        "window": "[intime, intime + observation_hours); only stays lasting at least observation_hours can die "
                  "with probability true_risk = sigmoid(logit); labs and cultures count once stored (storetime) "
                  "before the cutoff",
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
        "death_time": {
            "definition": "a stay that dies does so at cutoff + Exponential(death_rate_per_hour) hours, "
                          "death_rate_per_hour = rate_at_zero_logit * exp(rate_per_logit * logit); "
                          "in-hospital survival after the cutoff "
                          "S(t) = 1 - true_risk * (1 - exp(-death_rate_per_hour * t))",
            "rate_at_zero_logit": DEATH_RATE_AT_ZERO_LOGIT, "rate_per_logit": DEATH_RATE_PER_LOGIT,
        },
        "companions": {rule: [f"{table}:{_item_name(table, item)}" for table, item in items]
                       for rule, items in COMPANIONS.items()},
        "defects": defects,
        "generator": {"seed": seed, "n_patients": n_patients, "chunk_patients": chunk_patients,
                      "intubation_share": intubation_share},
    }
