"""Synthetic MIMIC-IV-shaped tables with planted, recorded mortality risk.

`generate(out_dir, n_patients, seed, observation_hours, intubation_share)` writes
`hosp/*.csv.gz` and `icu/*.csv.gz` with the MIMIC-IV v2.2 file names and columns, so the
real MIMIC-IV extraction runs on them, plus `truth/` with what the generator knows and a
real dataset never tells.

Shape
-----
Patients (subject_id 10000000+) have 1-6 admissions (hadm_id 20000000+), each with 1-3
ICU stays (stay_id 30000000+) that never overlap. Dates are shifted into 2110-2210;
`anchor_age` is the age in `anchor_year` (90 and over -> 91, as MIMIC-IV does) and the
age at a stay is `anchor_age + year(intime) - anchor_year`. ICU stays last from two hours
to weeks (about 15% shorter than 48 h). During a stay, events arrive at a per-stay rate
(log-normal, so a stay has ~30-150 events in its first 48 h and a few have 300+); fewer
per hour after the window. Labs come in panels (BMP, CBC, blood gas, ...) sharing a
specimen, charttime and storetime (results stored 10 min - 24 h later, median 80 min,
most within 4 h), plus Zipf-distributed single tests; drugs, procedures, ingredient
orders and cultures are drawn Zipf-like from catalogues with real MIMIC-IV names. Labs and
prescriptions also happen on the ward (outside any ICU stay); ~5% of lab and
microbiology rows have no hadm_id, as in MIMIC.

Each stay has latent problems that bundle codes together, so code models have structure:
sepsis (blood cultures, Vancomycin, Piperacillin-Tazobactam), shock (Norepinephrine,
high lactate, arterial lines), renal failure (high creatinine and potassium, Furosemide,
CRRT), DKA (Insulin, very high glucose, high potassium), cardiac injury (serial troponins,
CK), respiratory failure (invasive ventilation; an Intubation is charted 0-30 min before
`intubation_share` of ventilations, the rest arriving intubated, and in a few stays never
ventilated). A sicker stay also has more deranged routine labs. `truth/problem_codes`
lists the codes each problem emits (simulate.PROBLEM_EMISSIONS) as the extraction spells
them (LAB//50813, NDC//..., ITEM//225792, MICRO//70012//80002 | NEG | PENDING, ICD9//0389).
Diagnoses (ICD-9 or ICD-10 per admission) are coded at discharge from the same latents
*and from the outcome* (cardiac arrest, palliative care, DNR for many deaths): the
leakage trap real MIMIC has.

Planted signal (written to `truth/rules.json`)
----------------------------------------------
Only events in the observation window [intime, cutoff), cutoff = intime +
observation_hours, count, and a lab or culture only once its result is stored
(storetime) before the cutoff: what the extraction can show at the cutoff. With age =
the MIMIC-IV age at the stay:

    logit = BASE_LOGIT + sum(effect for each rule that fires)
            + AGE_EFFECT_PER_DECADE * max(0, age - 60) / 10
    true_risk = sigmoid(logit)

Rules (each fires at most once per stay; see RULES for the effect sizes):
- vasopressor: a Norepinephrine prescription (any of its NDCs) starts in the window.
- high_lactate: a Lactate (50813) result > LACTATE_THRESHOLD (4 mmol/L) in the window,
  stored before the cutoff.
- positive_blood_culture: a BLOOD CULTURE (spec_itemid 70012) with an organism is charted
  in the window AND its result is stored (storetime, 12-120 h after the draw) before the
  cutoff. A culture whose result arrives later is only "pending" at the cutoff (the
  extraction shows it so), so it adds nothing.
- invasive_ventilation: an Invasive Ventilation (225792) procedure starts in the window
  (its duration, known only at endtime, plays no part).
- creatinine_and_potassium_abnormal: both an abnormal Creatinine (50912) and an abnormal
  Potassium (50971) in the window, stored before the cutoff; either one alone adds
  nothing (an interaction).
- recent_troponin_abnormal: an abnormal Troponin T (51003) charted in the last
  TROPONIN_RECENT_HOURS before the cutoff and stored before it; earlier abnormal
  troponins add nothing.

Outcome: a stay that lasts at least observation_hours dies with probability true_risk,
at cutoff + Exponential(death_rate_per_hour) hours, death_rate_per_hour =
DEATH_RATE_AT_ZERO_LOGIT * exp(DEATH_RATE_PER_LOGIT * logit) (sicker stays die sooner;
~85% of deaths within 7 days), in the ICU (which then ends at death) or on the ward after
it, the hospitalisation lasting until the death. So the true in-hospital survival t hours
after the cutoff is rules.true_survival: S(t) = 1 - true_risk * (1 - exp(-death_rate_per_hour
* t)); discharge alive is a competing event, drawn independently of the risk, not
censoring. hospital_expire_flag, deathtime, dischtime = deathtime and dod are set and the
patient has nothing after the death. A few short stays end in death too (they are
excluded from a 48 h cohort). `truth/stay_risk.csv.gz` has each stay's logit, true_risk,
death_rate_per_hour, eligibility and `died_after_cutoff`, which is the extraction's
label: death in the same hospitalisation after this stay's cutoff. For the earlier stay of an admission whose
*later* stay dies that label is 1 although its own draw survived, exactly as the label
means in MIMIC (a few percent of deaths). `truth/planted_events.csv.gz` lists every event
that fired a rule (both events of the interaction; only the recent troponin), with its
time exactly as in the source table; for cultures `itemid_or_ndc` is the org_itemid and
the time is the charttime (the draw), as the extracted event has it.
`truth/companion_events.csv.gz` (same columns) lists, for each rule that fired in a stay,
the stay's window events the same latent problem emitted that are not planted
(rules.COMPANIONS: pending or negative blood cultures and the sepsis antibiotics,
lactates not above the threshold or pending, the Intubation and Extubation of a
ventilation, creatinine/potassium still pending and the renal bundle, older or pending
troponins and CK): correlated with the planted events, never collinear with them, and
firing nothing; a companion culture is named by its spec_itemid.

Deliberate defects, counted in rules.json: exact duplicate lab rows (inside cohort stays),
prescriptions whose hadm_id is not in admissions, procedureevents whose stay_id is not in
icustays. Nothing else is duplicated: events of one kind and item never share a minute.

Output is a pure function of (n_patients, seed, observation_hours, intubation_share): patients are made in
chunks of CHUNK_PATIENTS with one random stream per chunk, so memory stays bounded and a
smaller run is a prefix of a larger one; gzip headers carry no time stamp.

Layout: `catalogue` (item names and codes, from the CSVs in `csv/`), `rules` (the planted
rules, their constants, the risk function, rules.json), `simulate` (stays, latent
problems, events, outcomes), `mimic4_tables` (formatting and the deliberate defects);
this module runs them chunk by chunk.
"""
from __future__ import annotations

import json
import logging
import os

import numpy as np

from ehrseq.io import atomic_path
from ehrseq.sources.synthetic import simulate
from ehrseq.sources.synthetic.mimic4_tables import (
    DUPLICATE_LAB_ROWS,
    ORPHAN_HADM_ID_START,
    ORPHAN_PRESCRIPTION_ROWS,
    ORPHAN_PROCEDURE_ROWS,
    ORPHAN_STAY_ID_START,
    TABLE_COLUMNS,
    TRUTH_COLUMNS,
    CsvGzWriter,
    dictionaries,
    format_admissions,
    format_diagnoses,
    format_icustays,
    format_ingredients,
    format_labs,
    format_micro,
    format_patients,
    format_planted,
    format_prescriptions,
    format_problem_codes,
    format_procedures,
    format_stay_risk,
    place_defects,
)
from ehrseq.sources.synthetic.rules import RULES, companions, rules_document, score

log = logging.getLogger(__name__)

CHUNK_PATIENTS = 2000
HOUR = simulate.HOUR


def _chunk(rng, n_patients: int, ids: simulate.Ids, observation_seconds: int, intubation_share: float,
           defects_due: dict) -> dict:
    """One chunk of patients, simulated and formatted: tables, placed defects, and counts."""
    patients, adm, stays = simulate.population(rng, n_patients, ids, observation_seconds)
    ev = simulate.events(rng, adm, stays, intubation_share)
    by_table = {"labevents": ev["labs"], "prescriptions": ev["rx"], "microbiologyevents": ev["cultures"],
                "procedureevents": ev["procs"]}
    logit, planted = score(stays, ev["labs"], ev["rx"], ev["cultures"], ev["procs"])
    companion = companions(stays, by_table, planted)
    simulate.outcomes(rng, patients, adm, stays, logit)
    dx = simulate.diagnoses(rng, adm, stays)
    labs, rx, cultures, procs, orders = (simulate.alive(ev[k], stays, patients)
                                         for k in ("labs", "rx", "cultures", "procs", "orders"))
    kept_stay = stays["kept"].to_numpy()
    planted = planted[kept_stay[planted["stay"].to_numpy()]]
    companion = companion[kept_stay[companion["stay"].to_numpy()]]
    kept = stays[stays["kept"]]

    labs_t, duplicable = format_labs(rng, labs, stays, ids)
    rx_t, rx_candidates = format_prescriptions(rng, rx, stays, ids)
    procs_t, proc_candidates = format_procedures(rng, procs, stays, patients, ids)
    labs_t, rx_t, procs_t, placed = place_defects(rng, defects_due, (labs_t, duplicable), (rx_t, rx_candidates),
                                                  (procs_t, proc_candidates))
    tables = {
        "hosp/patients": format_patients(patients),
        "hosp/admissions": format_admissions(adm[adm["kept"]]),
        "hosp/diagnoses_icd": format_diagnoses(adm, dx),
        "hosp/prescriptions": rx_t,
        "hosp/labevents": labs_t,
        "hosp/microbiologyevents": format_micro(rng, cultures, stays, ids),
        "icu/icustays": format_icustays(kept),
        "icu/procedureevents": procs_t,
        "icu/ingredientevents": format_ingredients(rng, orders, stays, patients, ids),
        "truth/stay_risk": format_stay_risk(kept),
        "truth/planted_events": format_planted(planted, stays),
        "truth/companion_events": format_planted(companion, stays),
    }
    eligible = kept["eligible"].to_numpy()
    fired = planted.drop_duplicates(["stay", "rule"])
    fired = fired[stays["eligible"].to_numpy()[fired["stay"].to_numpy()]]
    own_death = kept["death_here"].to_numpy() & eligible
    death_hours = (patients["death_time"].to_numpy()[kept["patient"].to_numpy()[own_death]]
                   - kept["cutoff"].to_numpy()[own_death]) / HOUR
    return {
        "tables": tables, "defects": placed,
        "eligible_risk": kept["true_risk"].to_numpy()[eligible],
        "eligible_died": kept["died_after_cutoff"].to_numpy()[eligible],
        "death_hours": death_hours,
        "rule_stays": fired["rule"].value_counts().to_dict(),
        "companions_per_rule": companion["rule"].value_counts().to_dict(),
        "counts": {"admissions": int(adm["kept"].sum()), "in_hospital_deaths": int(adm["hospital_expire_flag"].sum()),
                   "short_stay_deaths": int((kept["death_here"] & ~kept["eligible"]).sum())},
    }


def generate(out_dir: str | os.PathLike, n_patients: int, seed: int, observation_hours: float = 48.0,
             intubation_share: float = 0.6) -> dict:
    """Write the synthetic MIMIC-IV folder and its truth to `out_dir` (replaced atomically).

    `intubation_share`: share of invasive ventilations with a charted Intubation (the
    Intubation is a companion, not a planted event; 1.0 makes it a perfect proxy).
    Returns a summary: rows per table, stays, deaths, mortality, oracle AUROC and the
    share of deaths within 7 days among stays that last the observation window, stays
    per rule, companions per rule, and the defect counts.
    """
    from sklearn.metrics import roc_auc_score

    if int(n_patients) != n_patients or n_patients < 1:
        raise ValueError(f"n_patients must be a positive integer, got {n_patients!r}")
    observation_seconds = observation_hours * HOUR
    if observation_hours <= 0 or observation_seconds != round(observation_seconds):
        raise ValueError(f"observation_hours must be positive and a whole number of seconds, got {observation_hours!r}")
    observation_seconds = round(observation_seconds)
    if not 0.0 <= intubation_share <= 1.0:
        raise ValueError(f"intubation_share must be in [0, 1], got {intubation_share!r}")
    due = {"duplicate_lab_rows": DUPLICATE_LAB_ROWS, "orphan_prescription_rows": ORPHAN_PRESCRIPTION_ROWS,
           "orphan_procedureevent_rows": ORPHAN_PROCEDURE_ROWS}
    ids = simulate.Ids()
    risk, died, death_hours = [], [], []
    rule_stays, companions_per_rule = {r.name: 0 for r in RULES}, {r.name: 0 for r in RULES}
    counts = {"admissions": 0, "in_hospital_deaths": 0, "short_stay_deaths": 0}
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        writers = {name: CsvGzWriter(tmp / f"{name}.csv.gz", columns)
                   for name, columns in {**TABLE_COLUMNS, **TRUTH_COLUMNS}.items()}
        try:
            for name, table in dictionaries().items():
                writers[name].write(table)
            writers["truth/problem_codes"].write(format_problem_codes(simulate.PROBLEM_EMISSIONS))
            for chunk, start in enumerate(range(0, int(n_patients), CHUNK_PATIENTS)):
                size = min(CHUNK_PATIENTS, int(n_patients) - start)
                result = _chunk(np.random.default_rng([seed, chunk]), size, ids, observation_seconds,
                                intubation_share, due)
                for name, table in result["tables"].items():
                    writers[name].write(table)
                for name, placed in result["defects"].items():
                    due[name] -= placed
                for name, value in result["counts"].items():
                    counts[name] += value
                for name, value in result["rule_stays"].items():
                    rule_stays[name] += int(value)
                for name, value in result["companions_per_rule"].items():
                    companions_per_rule[name] += int(value)
                death_hours.append(result["death_hours"])
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
        risk, died, death_hours = np.concatenate(risk), np.concatenate(died), np.concatenate(death_hours)
        rows = {name: w.rows for name, w in writers.items()}
        summary = {
            "patients": int(n_patients), "admissions": counts["admissions"], "icu_stays": rows["icu/icustays"],
            "eligible_stays": len(risk), "in_hospital_deaths": counts["in_hospital_deaths"],
            "short_stay_deaths": counts["short_stay_deaths"], "died_after_cutoff": int(died.sum()),
            "mortality_eligible": float(died.mean()) if len(died) else None,
            "mean_true_risk_eligible": float(risk.mean()) if len(risk) else None,
            "oracle_auroc": float(roc_auc_score(died, risk)) if 0 < died.sum() < len(died) else None,
            "deaths_within_7_days_share": float((death_hours <= 168).mean()) if len(death_hours) else None,
            "median_death_hours": float(np.median(death_hours)) if len(death_hours) else None,
            "stays_per_rule": rule_stays, "planted_events": rows["truth/planted_events"],
            "companions_per_rule": companions_per_rule, "companion_events": rows["truth/companion_events"],
            "defects": defects, "rows": {n: r for n, r in rows.items() if not n.startswith("truth/")},
        }
        (tmp / "truth" / "rules.json").write_text(json.dumps(rules_document(
            observation_hours, seed, n_patients, CHUNK_PATIENTS, intubation_share, defects), indent=2) + "\n")
    return summary
