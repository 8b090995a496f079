"""Simulation: patients, admissions, ICU stays, their latent problems, events and outcomes.

Everything here lives in generator space: a stay is a row of the `stays` DataFrame
(`stay` in an event = that row number), event times are whole minutes since 1970
(`minute`), stay and admission times seconds. Formatting into MIMIC-IV tables is
`mimic4_tables`'; the planted risk is `rules`'.

The trap: every function draws from the chunk's one random stream, in call order.
Reordering calls, or adding a draw in the middle, changes every later draw and hence the
bytes a seed produces.
"""
from __future__ import annotations

from typing import ClassVar

import numpy as np
import pandas as pd

from ehrseq.sources.synthetic.catalogue import (
    DIAGNOSES,
    DIAGNOSIS_INDEX,
    DRUG_INDEX,
    DRUGS,
    LAB_INDEX,
    LABS,
    ORGANISMS,
    PROC_INDEX,
    PROCEDURES,
    SPECIMENS,
)
from ehrseq.sources.synthetic.rules import (
    BLOOD_CULTURE,
    CK,
    CK_MB,
    CREATININE,
    CRRT,
    DIALYSIS_CATHETER,
    EXTUBATION,
    INTUBATION,
    INVASIVE_VENTILATION,
    LACTATE,
    NOREPINEPHRINE,
    POTASSIUM,
    TROPONIN_T,
    death_rate_per_hour,
    sigmoid,
)

MINUTE = 60
HOUR = 3600
DAY = 86400
NEVER = np.iinfo(np.int64).max  # death time of a patient who does not die in hospital

# ---- population ------------------------------------------------------------------------

MALE_SHARE = 0.56  # MIMIC-IV ICU patients are 56% male
ONE_ADMISSION_P = 0.72  # admissions per patient ~ 1 + Geometric(this), capped at 6
ICU_STAYS_PER_ADMISSION = ([1, 2, 3], [0.9, 0.08, 0.02])  # readmissions to the ICU are rare
EMERGENCY_SHARE = 0.55  # admissions through the emergency room (with ED times)
ICD9_SHARE = 0.45  # admissions coded in ICD-9 (MIMIC-IV switches to ICD-10 in 2015)
SAME_CAREUNIT_SHARE = 0.88  # stays that end in the unit they started in
FIRST_YEAR, LAST_FIRST_YEAR = 2110, 2200  # first admissions; later ones stay before 2210
ANCHOR_YEAR_GROUPS = ["2008 - 2010", "2011 - 2013", "2014 - 2016", "2017 - 2019", "2020 - 2022"]

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

# ---- latent problems -------------------------------------------------------------------

DKA_PREVALENCE = 0.04  # diabetic ketoacidosis, independent of severity
MILD_TROPONIN_SHARE = 0.25  # stays without cardiac injury whose troponin is mildly elevated (demand, CKD)

# ---- event rates (per ICU stay) --------------------------------------------------------

EVENTS_PER_HOUR_MEDIAN = 1.0  # all kinds together, in the observation window
EVENTS_PER_HOUR_SIGMA = 0.5  # log-normal spread across stays: the long tail of busy stays
AFTER_WINDOW_FACTOR = 0.45  # event rate after the window, relative to the window
SHARE = {"lab": 0.58, "prescription": 0.15, "ingredient": 0.14, "procedure": 0.09, "microbiology": 0.04}
WARD_LAB_DRAWS_PER_DAY = 1.2
WARD_PRESCRIPTIONS_PER_DAY = 3.0

# ---- labs ------------------------------------------------------------------------------

# Panels share one specimen and charttime.
PANELS = {
    "bmp": [50983, 50971, 50902, 50882, 51006, 50912, 50931, 50868],
    "cbc": [51301, 51222, 51221, 51265, 51279, 51250, 51248, 51249, 51277],
    "blood_gas": [50820, 50818, 50821, 50802, 50804, 50813, 50809, 50822, 50808],
    "coag": [51237, 51274, 51275],
    "lft": [50861, 50878, 50863, 50885, 50862],
    "mg_phos_ca": [50960, 50970, 50893],
    "troponin": [51003],
    "ck": [50911, 50910],  # CK-MB and CK: ordered apart from troponin, so not its exact proxy
    "differential": [51256, 51244, 51254, 51200, 51146],
    "urinalysis": [51491, 51498, 51516, 51493],
}
# Probability that a draw includes the panel: (on the ward, in the ICU) ...
PANEL_PROBABILITY = {
    "bmp": (0.9, 0.8), "cbc": (0.8, 0.65), "blood_gas": (0.02, 0.12), "coag": (0.15, 0.3), "lft": (0.1, 0.12),
    "mg_phos_ca": (0.3, 0.5), "troponin": (0.02, 0.04), "ck": (0.02, 0.04), "differential": (0.2, 0.3),
    "urinalysis": (0.03, 0.06),
}
# ... plus, in the ICU, this much for a stay with any of the problems: blood gases follow
# ventilation, shock and DKA, liver tests and differentials infection, troponin and CK injury.
PANEL_PROBLEM_EXTRA = {
    "blood_gas": [(("resp", "shock"), 0.45), (("dka",), 0.3)],
    "lft": [(("sepsis",), 0.2)],
    "troponin": [(("cardiac",), 0.4)],
    "ck": [(("cardiac",), 0.25)],
    "differential": [(("sepsis",), 0.2)],
}
SINGLE_TESTS_PER_DRAW = 0.6  # Poisson mean of single tests ordered with a draw
# Minutes from charttime until the results of a draw are stored (known): log-normal,
# median 80 min, most between 30 min and 4 h, clipped to 10 min - 24 h.
LAB_STORE_MINUTES = (80, 0.6, 10, 1440)  # median, sigma, min, max
LAB_ITEMS_PER_DRAW = 14.0  # turns the lab share of the event rate into draws per hour
_IN_PANEL = {item for items in PANELS.values() for item in items}
# Single tests: the rest of the catalogue, most frequent first (Zipf over this order).
SINGLE_LABS = np.array([LAB_INDEX[i] for i in LABS["itemid"] if i not in _IN_PANEL])
GLUCOSE = 50931

# ---- drugs, cultures, procedures -------------------------------------------------------

# Background drugs: every drug except the planted vasopressor, Zipf over catalogue order.
BACKGROUND_DRUGS = np.array([i for i in range(len(DRUGS)) if i != NOREPINEPHRINE])
NOREPINEPHRINE_REPEAT_SHARE = 0.5  # shock stays with a second Norepinephrine order later in the stay
NOREPINEPHRINE_WITHOUT_SHOCK_RATE = 0.03  # stays without shock that get Norepinephrine anyway (peri-operative)
FUROSEMIDE_REPEAT_SHARE = 0.6  # renal stays with a second Furosemide order later in the stay

BACTEREMIA_SHARE = 0.5  # septic stays whose blood cultures can grow an organism
BLOOD_CULTURE_YIELD = 0.8  # each blood culture of such a stay grows it (the others stay negative)
DATE_ONLY_CULTURE_SHARE = 0.1  # non-blood cultures charted with a date only, as in MIMIC

ARTERIAL_LINE = 225752
# Background procedures exclude the planted and bundle-driven ones (placed by latents).
BACKGROUND_PROCEDURES = np.array([k for k, i in enumerate(PROCEDURES["itemid"])
                                  if i not in (INVASIVE_VENTILATION, INTUBATION, EXTUBATION, CRRT, DIALYSIS_CATHETER)])
EXTUBATION_SHARE = 0.7  # ventilated stays extubated (if that falls inside the stay)
VENTILATION_WITHOUT_RESP_RATE = 0.04  # stays without respiratory failure ventilated at some time (surgery)
INTUBATION_LEAD_MINUTES = 30  # a charted Intubation precedes its ventilation by 0-30 min
INTUBATION_WITHOUT_VENTILATION_RATE = 0.03  # stays never ventilated here with an Intubation (e.g. for a procedure)
CRRT_SHARE_OF_RENAL = 0.45  # renal-failure stays started on CRRT
ARTERIAL_LINE_RATE = 0.35  # stays with an arterial line ...
ARTERIAL_LINE_SHOCK_EXTRA = 0.4  # ... plus this much for shock

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

# ---- outcomes and diagnoses ------------------------------------------------------------

SHORT_STAY_DEATH_RATE = 0.06  # stays shorter than the window that end in death
OUT_OF_HOSPITAL_DEATH_RATE = 0.08  # patients alive at discharge with a dod within a year
BACKGROUND_DIAGNOSES = np.arange(DIAGNOSIS_INDEX["I10"], len(DIAGNOSES))
BACKGROUND_DIAGNOSES_MEAN = 7  # Poisson mean of background codes per admission, beyond 2

# What each latent problem emits (truth/problem_codes), by event kind: the items the
# functions below add because of the problem (bundle drugs, procedures, blood cultures,
# serial troponins, CK), the labs whose value the problem sets, and its discharge
# diagnoses (ICD-10 names; both versions are listed). Routine panels a problem only makes
# likelier (blood gases, liver tests, differentials) are not listed.
PROBLEM_EMISSIONS = {
    "sepsis": {"microbiology": [BLOOD_CULTURE], "prescription": ["Vancomycin", "Piperacillin-Tazobactam"],
               "diagnosis": ["A419", "R6520", "R6521"]},
    "shock": {"prescription": ["Norepinephrine"], "lab": [LACTATE], "procedure": [ARTERIAL_LINE],
              "diagnosis": ["R6521", "E872"]},
    "renal_failure": {"lab": [CREATININE, POTASSIUM], "prescription": ["Furosemide"],
                      "procedure": [CRRT, DIALYSIS_CATHETER], "diagnosis": ["N179", "E875"]},
    "dka": {"lab": [GLUCOSE, POTASSIUM], "prescription": ["Insulin"], "diagnosis": ["E1010", "E875"]},
    "cardiac_injury": {"lab": [TROPONIN_T, CK_MB, CK], "diagnosis": ["I214"]},
    "respiratory_failure": {"procedure": [INVASIVE_VENTILATION, INTUBATION, EXTUBATION], "diagnosis": ["J9600"]},
}


# --------------------------------------------------------------------------------------
# Random helpers and ids
# --------------------------------------------------------------------------------------


def zipf_weights(n: int, exponent: float = 1.1) -> np.ndarray:
    w = 1.0 / np.arange(1, n + 1) ** exponent
    return w / w.sum()


class Ids:
    """Next free id per kind, shared by all chunks. MIMIC ids are not dense: each step
    skips 1-6 numbers."""

    STARTS: ClassVar[dict[str, int]] = {"subject": 10_000_000, "hadm": 20_000_000, "stay": 30_000_000, "labevent": 1,
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


def providers(rng: np.random.Generator, n: int) -> np.ndarray:
    """MIMIC-IV provider ids: 'P', three digits, then two letters or digits."""
    alphabet = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"))
    digits = rng.integers(0, 1000, n)
    tail = alphabet[rng.integers(0, len(alphabet), (n, 2))]
    return np.char.add(np.char.add("P", np.char.zfill(digits.astype(str), 3)), np.char.add(tail[:, 0], tail[:, 1]))


def choice(rng: np.random.Generator, spec: tuple[list, list], n: int) -> np.ndarray:
    values, probs = spec
    return np.asarray(values, dtype=object)[rng.choice(len(values), n, p=np.asarray(probs) / np.sum(probs))]


def lognormal(rng, median, sigma, n, low, high):
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
# Patients, admissions, stays and their latent problems
# --------------------------------------------------------------------------------------


def population(rng, n_patients: int, ids: Ids,
               observation_seconds: int) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Patients, their admissions, and the ICU stays with latent problems and window bounds."""
    patients = _patients(rng, n_patients, ids)
    adm, stays = _admissions(rng, patients, ids)
    _latents(rng, stays, patients, observation_seconds)
    return patients, adm, stays


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
        "gender": np.where(rng.random(n) < MALE_SHARE, "M", "F"),
        "anchor_age": np.where(capped, 91, age_first - back),
        "anchor_year": first_year - back,
        "anchor_year_group": np.asarray(ANCHOR_YEAR_GROUPS, dtype=object)[rng.integers(0, 5, n)],
        "first_admit": first_admit,
        "n_admissions": 1 + np.minimum(rng.geometric(ONE_ADMISSION_P, n) - 1, 5),
    })


def _admissions(rng, patients: pd.DataFrame, ids) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Admissions and the ICU stays inside them, in time order per patient."""
    pat = np.repeat(np.arange(len(patients)), patients["n_admissions"].to_numpy())
    n = len(pat)
    n_icu = rng.choice(ICU_STAYS_PER_ADMISSION[0], n, p=ICU_STAYS_PER_ADMISSION[1])
    stay_adm = np.repeat(np.arange(n), n_icu)
    m = len(stay_adm)
    # Durations in seconds: ward before the first ICU stay, the ICU stays, ward between
    # stays, ward after the last stay.
    pre = (lognormal(rng, 6, 1.0, n, 0.5, 96) * HOUR).astype(np.int64)
    icu = (lognormal(rng, 95, 0.72, m, 2, 45 * 24) * HOUR).astype(np.int64)
    gap_after = (lognormal(rng, 60, 0.8, m, 6, 400) * HOUR).astype(np.int64)
    last_in_adm = np.r_[stay_adm[1:] != stay_adm[:-1], True]
    gap_after[last_in_adm] = (lognormal(rng, 60, 0.9, last_in_adm.sum(), 2, 600) * HOUR).astype(np.int64)
    in_adm = _group_offsets(stay_adm, icu + gap_after)  # stay start relative to its first ICU stay
    span = pre + np.bincount(stay_adm, weights=icu + gap_after, minlength=n).astype(np.int64)
    between = (lognormal(rng, 150, 1.0, n, 3, 700) * DAY).astype(np.int64)
    admit = patients["first_admit"].to_numpy()[pat] + _group_offsets(pat, span + between)

    emergency = rng.random(n) < EMERGENCY_SHARE
    ed_reg = admit - (lognormal(rng, 5, 0.5, n, 1, 24) * HOUR).astype(np.int64)
    adm = pd.DataFrame({
        "patient": pat,
        "subject_id": patients["subject_id"].to_numpy()[pat],
        "hadm_id": ids.sparse("hadm", rng, n),
        "admittime": admit,
        "dischtime": admit + span,
        "admission_type": choice(rng, ADMISSION_TYPES, n),
        "admit_provider_id": providers(rng, n),
        "admission_location": np.where(emergency, "EMERGENCY ROOM",
                                       choice(rng, (ADMISSION_LOCATIONS[0][1:], ADMISSION_LOCATIONS[1][1:]), n)),
        "discharge_location": choice(rng, DISCHARGE_LOCATIONS, n),
        "insurance": choice(rng, INSURANCE, n),
        "language": choice(rng, LANGUAGE, n),
        "marital_status": choice(rng, MARITAL, n),
        "race": choice(rng, RACE, n),
        "edregtime": ed_reg,
        "edouttime": admit + (rng.random(n) * HOUR).astype(np.int64),
        "has_ed": emergency,
        "icd_version": np.where(rng.random(n) < ICD9_SHARE, 9, 10),
    })
    intime = admit[stay_adm] + pre[stay_adm] + in_adm + rng.integers(0, 60, m)  # MIMIC intimes have seconds
    careunit = choice(rng, CAREUNITS, m)
    stays = pd.DataFrame({
        "adm": stay_adm,
        "patient": pat[stay_adm],
        "subject_id": adm["subject_id"].to_numpy()[stay_adm],
        "hadm_id": adm["hadm_id"].to_numpy()[stay_adm],
        "stay_id": ids.sparse("stay", rng, m),
        "first_careunit": careunit,
        "last_careunit": np.where(rng.random(m) < SAME_CAREUNIT_SHARE, careunit, choice(rng, CAREUNITS, m)),
        "intime": intime,
        "outtime": intime + icu,
    })
    return adm, stays


def _latents(rng, stays: pd.DataFrame, patients: pd.DataFrame, observation_seconds: int) -> None:
    """Per-stay problems that bundle events together, and per-stay lab levels (in place).

    A standard-normal severity z raises every problem's log-odds (the coefficients below)
    and derails routine labs; shock is likelier with sepsis, respiratory failure with shock.
    """
    m = len(stays)
    z = rng.standard_normal(m)  # severity
    stays["severity"] = z
    stays["sepsis"] = rng.random(m) < sigmoid(-1.3 + 0.8 * z)
    stays["shock"] = rng.random(m) < sigmoid(-2.6 + 0.9 * z + 1.2 * stays["sepsis"])
    stays["renal"] = rng.random(m) < sigmoid(-2.0 + 0.6 * z)
    stays["dka"] = rng.random(m) < DKA_PREVALENCE
    stays["cardiac"] = rng.random(m) < sigmoid(-1.6 + 0.3 * z)
    stays["resp"] = rng.random(m) < sigmoid(-1.0 + 0.8 * z + 0.5 * stays["shock"])
    stays["events_per_hour"] = EVENTS_PER_HOUR_MEDIAN * np.exp(EVENTS_PER_HOUR_SIGMA * rng.standard_normal(m)
                                                               + 0.12 * z)
    stays["creatinine_level"] = np.where(stays["renal"], np.exp(np.log(2.6) + 0.35 * rng.standard_normal(m)),
                                         np.exp(np.log(0.88) + 0.22 * rng.standard_normal(m)))
    stays["potassium_level"] = np.where(stays["renal"] | stays["dka"], 5.45 + 0.35 * rng.standard_normal(m),
                                        4.1 + 0.3 * rng.standard_normal(m))
    stays["lactate_level"] = np.where(stays["shock"], np.exp(np.log(5.2) + 0.35 * rng.standard_normal(m)),
                                      np.exp(np.log(1.3) + 0.35 * rng.standard_normal(m)))
    # Troponin T: injured hearts are high; some others are mildly elevated; most are <0.01.
    mild = rng.random(m) < MILD_TROPONIN_SHARE
    stays["troponin_level"] = np.where(stays["cardiac"], np.exp(np.log(0.25) + 1.0 * rng.standard_normal(m)),
                                       np.where(mild, np.exp(np.log(0.03) + 0.4 * rng.standard_normal(m)), 0.004))
    stays["weight"] = np.round(lognormal(rng, 80, 0.22, m, 38, 220), 1)
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


# --------------------------------------------------------------------------------------
# Events
# --------------------------------------------------------------------------------------


def events(rng, adm: pd.DataFrame, stays: pd.DataFrame, intubation_share: float) -> dict[str, pd.DataFrame]:
    """All events of a chunk before outcomes are known: labs, cultures, prescriptions
    (`rx`), procedures (`procs`) and ingredient orders (`orders`), one row per event with
    its owner `stay`, `minute`, `icu` (False: on the ward) and kind-specific columns.
    Labs and cultures carry `store_min`, the minute their result is stored (known).
    `intubation_share`: share of invasive ventilations with a charted Intubation."""
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
                                                                p=zipf_weights(len(BACKGROUND_DRUGS)))]})
    rx = pd.concat([_prescriptions(rng, stays, first_bc).assign(icu=True), ward_rx], ignore_index=True)
    rx = _unique(rx.assign(subject=subject_of[rx["stay"]]), ["subject", "drug", "minute"])
    first_ndc = np.r_[0, np.cumsum(DRUGS["ndc_variants"].to_numpy())[:-1]]
    drug = rx["drug"].to_numpy()
    rx["ndc_row"] = first_ndc[drug] + (rng.random(len(rx)) * DRUGS["ndc_variants"].to_numpy()[drug]).astype(int)

    procs = _unique(_procedures(rng, stays, intubation_share).assign(icu=True), ["stay", "proc", "minute"])
    orders = _unique(_ingredient_orders(rng, stays), ["stay", "minute"])
    return {"labs": labs, "cultures": cultures, "rx": rx, "procs": procs, "orders": orders}


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


def _unique(rows: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Events of one kind and item never share a minute for a patient (no accidental duplicates)."""
    return rows[~rows.duplicated(keys)].reset_index(drop=True)


# ---- labs ----------------------------------------------------------------------------

def _panel_probabilities(stays: pd.DataFrame, owner: np.ndarray, icu: np.ndarray,
                         serial: np.ndarray) -> dict[str, np.ndarray]:
    """Per draw and panel, the probability the draw includes it; a serial troponin draw is
    a troponin only."""
    s = {k: stays[k].to_numpy()[owner] for k in ("sepsis", "shock", "resp", "cardiac", "renal", "dka")}
    ward = ~icu
    out = {}
    for name, (on_ward, in_icu) in PANEL_PROBABILITY.items():
        for problems, extra in PANEL_PROBLEM_EXTRA.get(name, ()):
            in_icu = in_icu + extra * np.logical_or.reduce([s[p] for p in problems])
        out[name] = np.where(serial, float(name == "troponin"), np.where(ward, on_ward, in_icu))
    return out


def _lab_rows(rng, stays: pd.DataFrame, owner: np.ndarray, minute: np.ndarray, icu: np.ndarray,
              serial: np.ndarray) -> pd.DataFrame:
    """Expand lab draws (owner stay, minute) into one row per test with a value; all
    tests of a draw are stored at the same `store_min`."""
    n_draws = len(owner)
    probs = _panel_probabilities(stays, owner, icu, serial)
    draw_parts, item_parts = [], []
    for name, items in PANELS.items():
        chosen = np.flatnonzero(rng.random(n_draws) < probs[name])
        draw_parts.append(np.repeat(chosen, len(items)))
        item_parts.append(np.tile([LAB_INDEX[i] for i in items], len(chosen)))
    n_single = np.where(serial, 0, rng.poisson(SINGLE_TESTS_PER_DRAW, n_draws))
    draw_parts.append(np.repeat(np.arange(n_draws), n_single))
    item_parts.append(SINGLE_LABS[rng.choice(len(SINGLE_LABS), n_single.sum(), p=zipf_weights(len(SINGLE_LABS)))])
    draw, item = np.concatenate(draw_parts), np.concatenate(item_parts)
    keep = ~pd.DataFrame({"d": draw, "i": item}).duplicated().to_numpy()  # a test once per draw
    draw, item = draw[keep], item[keep]
    median, sigma, low, high = LAB_STORE_MINUTES
    store_delay = np.round(lognormal(rng, median, sigma, n_draws, low, high)).astype(np.int64)  # per draw
    rows = pd.DataFrame({"draw": draw, "stay": owner[draw], "icu": icu[draw], "minute": minute[draw],
                         "store_min": minute[draw] + store_delay[draw], "lab": item})
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
    # Rule labs follow the stay's latent level (so they are consistent within a stay).
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
    owner, minute = _timed(rng, stays, stays["events_per_hour"].to_numpy() * SHARE["lab"] / LAB_ITEMS_PER_DRAW)
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
    drug = BACKGROUND_DRUGS[rng.choice(len(BACKGROUND_DRUGS), len(owner), p=zipf_weights(len(BACKGROUND_DRUGS)))]
    parts = [(owner, minute, drug)]

    def add(idx, minutes, name):
        parts.append((idx, minutes, np.full(len(idx), DRUG_INDEX[name])))

    shock = np.flatnonzero(stays["shock"])
    add(shock, _early(rng, stays, shock, 18), "Norepinephrine")
    again = shock[rng.random(len(shock)) < NOREPINEPHRINE_REPEAT_SHARE]
    add(again, _anytime(rng, stays, again), "Norepinephrine")
    stray = np.flatnonzero(~stays["shock"].to_numpy() & (rng.random(len(stays)) < NOREPINEPHRINE_WITHOUT_SHOCK_RATE))
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
    renal2 = renal[rng.random(len(renal)) < FUROSEMIDE_REPEAT_SHARE]
    add(renal2, _anytime(rng, stays, renal2), "Furosemide")
    return pd.DataFrame({"stay": np.concatenate([p[0] for p in parts]), "minute": np.concatenate([p[1] for p in parts]),
                         "drug": np.concatenate([p[2] for p in parts])})


def _cultures(rng, stays: pd.DataFrame) -> pd.DataFrame:
    """One row per culture: specimen kind, organism (-1: no growth), and the minute its
    result is stored (12-120 h after the draw; the rule and storetime both use it)."""
    owner, minute = _timed(rng, stays, stays["events_per_hour"].to_numpy() * SHARE["microbiology"])
    spec = rng.choice(len(SPECIMENS), len(owner), p=SPECIMENS["share"].to_numpy())
    positive = rng.random(len(owner)) < SPECIMENS["positive_rate"].to_numpy()[spec]
    # Sepsis: one to three blood cultures early in the stay; some septic stays grow an organism.
    septic = np.flatnonzero(stays["sepsis"])
    n_bc = rng.integers(1, 4, len(septic))
    bc_stay = np.repeat(septic, n_bc)
    bc_minute = _early(rng, stays, bc_stay, 30)
    grows = (np.repeat(rng.random(len(septic)) < BACTEREMIA_SHARE, n_bc)
             & (rng.random(len(bc_stay)) < BLOOD_CULTURE_YIELD))
    owner = np.r_[owner, bc_stay]
    minute = np.r_[minute, bc_minute]
    spec = np.r_[spec, np.full(len(bc_stay), BLOOD_CULTURE)]
    positive = np.r_[positive, grows]
    org_p = zipf_weights(len(ORGANISMS), 1.0)
    organism = np.where(positive, rng.choice(len(ORGANISMS), len(owner), p=org_p), -1)
    date_only = (spec != BLOOD_CULTURE) & (rng.random(len(owner)) < DATE_ONLY_CULTURE_SHARE)
    store_min = minute + (lognormal(rng, 40, 0.4, len(owner), 12, 120) * HOUR).astype(np.int64) // MINUTE
    return pd.DataFrame({"stay": owner, "minute": minute, "spec": spec, "organism": organism,
                         "date_only": date_only, "store_min": store_min})


def _procedures(rng, stays: pd.DataFrame, intubation_share: float) -> pd.DataFrame:
    """Background procedures, plus the problem-driven ones: ventilation for respiratory
    failure (and a few others), with an Intubation charted for `intubation_share` of them
    (the rest arrive intubated from the ED or OR) and in a few stays never ventilated
    here; CRRT with its catheter for renal failure; more arterial lines in shock."""
    owner, minute = _timed(rng, stays, stays["events_per_hour"].to_numpy() * SHARE["procedure"])
    proc = BACKGROUND_PROCEDURES[rng.choice(len(BACKGROUND_PROCEDURES), len(owner),
                                            p=zipf_weights(len(BACKGROUND_PROCEDURES), 0.9))]
    parts = [(owner, minute, proc)]

    def add(idx, minutes, itemid):
        parts.append((idx, minutes, np.full(len(idx), PROC_INDEX[itemid])))

    resp = np.flatnonzero(stays["resp"])
    vent_start = _early(rng, stays, resp, 20)
    weaned = rng.random(len(resp)) < EXTUBATION_SHARE
    off_vent = vent_start + np.round(lognormal(rng, 36 * 60, 0.8, len(resp), 120, 20 * 24 * 60)).astype(np.int64)
    weaned &= off_vent <= stays["last_min"].to_numpy()[resp]
    add(resp[weaned], off_vent[weaned], EXTUBATION)
    late = np.flatnonzero(~stays["resp"].to_numpy() & (rng.random(len(stays)) < VENTILATION_WITHOUT_RESP_RATE))
    vent_stay, vent_minute = np.r_[resp, late], np.r_[vent_start, _anytime(rng, stays, late)]
    add(vent_stay, vent_minute, INVASIVE_VENTILATION)
    intubated = rng.random(len(vent_stay)) < intubation_share
    tube_minute = np.maximum(vent_minute - rng.integers(0, INTUBATION_LEAD_MINUTES + 1, len(vent_stay)),
                             stays["first_min"].to_numpy()[vent_stay])
    add(vent_stay[intubated], tube_minute[intubated], INTUBATION)
    never = np.ones(len(stays), bool)
    never[vent_stay] = False
    spare = np.flatnonzero(never & (rng.random(len(stays)) < INTUBATION_WITHOUT_VENTILATION_RATE))
    add(spare, _anytime(rng, stays, spare), INTUBATION)
    crrt = np.flatnonzero(stays["renal"].to_numpy() & (rng.random(len(stays)) < CRRT_SHARE_OF_RENAL))
    crrt_start = _anytime(rng, stays, crrt)
    add(crrt, crrt_start, DIALYSIS_CATHETER)
    add(crrt, np.minimum(crrt_start + 30, stays["last_min"].to_numpy()[crrt]), CRRT)
    aline = np.flatnonzero(rng.random(len(stays)) < ARTERIAL_LINE_RATE
                           + ARTERIAL_LINE_SHOCK_EXTRA * stays["shock"].to_numpy())
    add(aline, _early(rng, stays, aline, 12), ARTERIAL_LINE)
    rows = pd.DataFrame({"stay": np.concatenate([p[0] for p in parts]),
                         "minute": np.concatenate([p[1] for p in parts]),
                         "proc": np.concatenate([p[2] for p in parts])})
    duration = PROCEDURES["kind"].to_numpy()[rows["proc"]] == "duration"
    rows["duration_min"] = np.where(duration, np.round(lognormal(rng, 36 * 60, 1.0, len(rows), 30, 20 * DAY // 60)),
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
                         "hours": lognormal(rng, 8, 0.8, len(owner), 1, 48)})


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


# --------------------------------------------------------------------------------------
# Outcomes, diagnoses, and cutting histories at death
# --------------------------------------------------------------------------------------


def outcomes(rng, patients, adm, stays, logit) -> None:
    """Draw deaths and their times, then cut every patient's history at the death (in place).

    A stay that lasts the window dies with probability true_risk = sigmoid(logit), at
    cutoff + Exponential(death_rate_per_hour(logit)) hours (rules.py), rounded up to the
    minute: in the ICU if that is before its outtime (which then ends at death), else on
    the ward, the admission lasting until the death however long that takes, so every
    drawn death is an in-hospital death after the cutoff. A shorter stay dies at its end
    with probability SHORT_STAY_DEATH_RATE. Survivors keep their discharge time, drawn
    before any of this and independent of the risk. Only a patient's first death counts;
    the stays and admissions after it are dropped (`kept`).
    """
    m = len(stays)
    risk = sigmoid(logit)
    rate = death_rate_per_hour(logit)
    eligible = stays["eligible"].to_numpy()
    dies = np.where(eligible, rng.random(m) < risk, rng.random(m) < SHORT_STAY_DEATH_RATE)
    wait_hours = rng.exponential(1.0 / rate)
    pat = stays["patient"].to_numpy()
    order = np.arange(m)
    first_death = np.full(len(patients), m)
    np.minimum.at(first_death, pat[dies], order[dies])
    death_stay = first_death[pat]
    stays["kept"] = order <= death_stay
    stays["death_here"] = order == death_stay

    after_cutoff = -(-(stays["cutoff"].to_numpy() + np.round(wait_hours * HOUR).astype(np.int64)) // MINUTE)
    death_min = np.where(eligible, after_cutoff, stays["last_min"].to_numpy())
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
    later = last_disch + (lognormal(rng, 120, 0.9, len(patients), 1, 365) * DAY).astype(np.int64)
    patients["dod"] = np.where(patient_death < NEVER, patient_death, np.where(died_later, later, -1))

    # The label as the extraction defines it: death in this hospitalisation after the cutoff.
    death_of_adm = adm_death[stays["adm"].to_numpy()]
    stays["logit"] = logit
    stays["true_risk"] = risk
    stays["death_rate_per_hour"] = rate
    stays["died_after_cutoff"] = eligible & (death_of_adm >= stays["cutoff"].to_numpy())


def alive(rows: pd.DataFrame, stays: pd.DataFrame, patients: pd.DataFrame) -> pd.DataFrame:
    """The events of kept stays up to the patient's death."""
    s = rows["stay"].to_numpy()
    death = patients["death_time"].to_numpy()[stays["patient"].to_numpy()[s]]
    keep = stays["kept"].to_numpy()[s] & (rows["minute"].to_numpy() * MINUTE <= death)
    return rows[keep]


def diagnoses(rng, adm: pd.DataFrame, stays: pd.DataFrame) -> pd.DataFrame:
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
        code_parts.append(np.full(len(hit), DIAGNOSIS_INDEX[code]))
    n_background = 2 + rng.poisson(BACKGROUND_DIAGNOSES_MEAN, n)
    a = np.repeat(np.arange(n), n_background)
    adm_parts.append(a)
    code_parts.append(BACKGROUND_DIAGNOSES[rng.choice(len(BACKGROUND_DIAGNOSES), len(a),
                                                      p=zipf_weights(len(BACKGROUND_DIAGNOSES), 0.9))])
    dx = pd.DataFrame({"adm": np.concatenate(adm_parts), "dx": np.concatenate(code_parts)})
    dx = dx.drop_duplicates().sort_values("adm", kind="stable")
    dx = dx[adm["kept"].to_numpy()[dx["adm"].to_numpy()]]
    dx["seq_num"] = dx.groupby("adm").cumcount() + 1
    return dx
