"""The planted rules: their codes and constants, the risk function, and rules.json.

Everything that decides a stay's true risk is here; `simulate` only makes the events
the rules look at, and the test suite recomputes the rules from the written tables with
the constants in rules.json.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ehrseq.sources.synthetic.catalogue import (
    DRUG_INDEX,
    DRUG_NDCS,
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

BASE_LOGIT = -4.0
AGE_EFFECT_PER_DECADE = 0.3  # per decade of age over 60
LACTATE_THRESHOLD = 4.0  # mmol/L; a lactate strictly above it fires high_lactate
TROPONIN_RECENT_HOURS = 12.0  # an abnormal troponin this close to the cutoff fires recent_troponin_abnormal
RULES = (
    Rule("vasopressor", 1.6, "prescriptions", "Norepinephrine prescription (any of its NDCs) started in the window"),
    Rule("high_lactate", 1.5, "labevents",
         f"Lactate (itemid {LACTATE}) valuenum > {LACTATE_THRESHOLD:g} mmol/L in the window"),
    Rule("positive_blood_culture", 1.0, "microbiologyevents",
         "BLOOD CULTURE (spec_itemid 70012) with an organism (org_itemid set), charttime in the window and "
         "result stored (storetime) before the cutoff; a result still pending at the cutoff adds 0"),
    Rule("invasive_ventilation", 0.9, "procedureevents",
         f"Invasive Ventilation (itemid {INVASIVE_VENTILATION}) started in the window (its duration is not used)"),
    Rule("creatinine_and_potassium_abnormal", 1.4, "labevents",
         f"abnormal Creatinine ({CREATININE}) AND abnormal Potassium ({POTASSIUM}) both in the window; "
         "either alone adds 0"),
    Rule("recent_troponin_abnormal", 1.2, "labevents",
         f"abnormal Troponin T ({TROPONIN_T}) within the last {TROPONIN_RECENT_HOURS:g} h before the cutoff; "
         "earlier ones add 0"),
)
RULE_EFFECT = {r.name: r.effect for r in RULES}


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def score(stays: pd.DataFrame, labs: pd.DataFrame, rx: pd.DataFrame, cultures: pd.DataFrame,
          procs: pd.DataFrame) -> tuple[np.ndarray, pd.DataFrame]:
    """The planted logit per stay from its window events, and the events that fired.

    Window: ICU events at a minute before `cut_min` (the first minute at or after the
    cutoff). Returns the logit [n_stays] and one row per firing event (stay, rule, table,
    code, minute).
    """
    cut_min = stays["cut_min"].to_numpy()

    def in_window(rows):
        return rows["icu"].to_numpy() & (rows["minute"].to_numpy() < cut_min[rows["stay"].to_numpy()])

    lab_item = LABS["itemid"].to_numpy()[labs["lab"].to_numpy()]
    abnormal = labs["abnormal"].to_numpy()
    lw = in_window(labs)
    fired = {
        "vasopressor": ("prescriptions", rx[in_window(rx) & (rx["drug"].to_numpy() == NOREPINEPHRINE)]),
        "high_lactate": ("labevents", labs[lw & (lab_item == LACTATE) & (labs["valuenum"].to_numpy()
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
                                     "code": event_code(table, rows), "minute": rows["minute"].to_numpy()}))
    return logit, pd.concat(planted, ignore_index=True)


def event_code(table: str, rows: pd.DataFrame) -> np.ndarray:
    """What identifies the event in its table: NDC, lab/procedure itemid, or org_itemid."""
    if table == "prescriptions":
        return DRUG_NDCS["ndc"].to_numpy()[rows["ndc_row"].to_numpy()]
    if table == "labevents":
        return LABS["itemid"].to_numpy()[rows["lab"].to_numpy()].astype(str)
    if table == "microbiologyevents":
        return ORGANISMS["org_itemid"].to_numpy()[rows["organism"].to_numpy()].astype(str)
    return PROCEDURES["itemid"].to_numpy()[rows["proc"].to_numpy()].astype(str)


def rules_document(observation_hours: float, seed: int, n_patients: int, chunk_patients: int,
                   defects: dict) -> dict:
    """truth/rules.json: every constant a reader needs to recompute the risk from the tables."""
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
        "generator": {"seed": seed, "n_patients": n_patients, "chunk_patients": chunk_patients},
    }
