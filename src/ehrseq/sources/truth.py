"""The synthetic generator's ground truth, joined to the extracted events.

`data/interim/truth/` holds, for the synthetic source only:
- `stay_risk.parquet`: stay_id, true_risk (the generator's probability of death after
  the cutoff): the oracle score for AUROC.
- `stay_survival.parquet`: stay_id, true_risk, death_rate_per_hour: the true in-hospital
  survival t hours after the cutoff is

      S(t) = 1 - true_risk * (1 - exp(-death_rate_per_hour * t))

  (`ehrseq.sources.synthetic.rules.true_survival`): a stay dies with probability
  true_risk, at cutoff + Exponential(death_rate_per_hour) hours. The trap: discharge
  alive is a competing event, not independent censoring (a stay that dies is never
  discharged first), so S(t) is 1 minus the cumulative incidence of in-hospital death,
  not what a Kaplan-Meier estimate censoring at discharge converges to.
- `planted_events.parquet`: stay_id, event_row (row of events.parquet), rule: the events
  that carry the planted risk, for checking explanations against the truth.
- `companion_events.parquet`: stay_id, event_row, rule: events the generator emits
  because of the same latent problem as a rule that fired in the stay (pending or
  negative blood cultures, lactates not above the threshold, older troponins, the
  Intubation of a ventilation, ...): correlated with the planted events, firing nothing.
- `problem_codes.parquet`: problem, kind (event type or `diagnosis`), code: the codes each
  latent problem (sepsis, shock, renal_failure, dka, cardiac_injury,
  respiratory_failure) emits, exactly as events.parquet `code` or diagnoses.parquet
  `code` spell them.
Models never read this folder; evaluation and explanation do.
"""
from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from ehrseq.io import atomic_path

log = logging.getLogger(__name__)

TABLE_EVENT_TYPE = {
    "prescriptions": "prescription", "procedureevents": "procedure", "labevents": "lab",
    "microbiologyevents": "microbiology", "ingredientevents": "ingredient",
}


def match_planted_events(planted: pd.DataFrame, events: pd.DataFrame) -> pd.DataFrame:
    """Find each planted (or companion) event's row in events.parquet by stay, kind, time and code.

    The generator names the item (itemid, NDC, org_itemid, or for a companion culture its
    spec_itemid); the extracted code contains it as one of its `//`-separated parts
    (`LAB//50813`, `NDC//...`, `MICRO//70012//80002`, `MICRO//70012//PENDING`). A
    culture keeps its organism code only when its result was stored before the cutoff
    (otherwise it is `MICRO//70012//PENDING`); the generator plants only such cultures.
    """
    ev = events[["stay_id", "event_type", "time", "code"]].reset_index(names="event_row")
    pl = planted.assign(
        event_type=planted["table"].map(TABLE_EVENT_TYPE),
        time=pd.to_datetime(planted["time"]),
        item=planted["itemid_or_ndc"].astype(str),
    )
    merged = pl.merge(ev, on=["stay_id", "event_type", "time"], how="inner")
    hit = [item in code.split("//")[1:] for item, code in zip(merged["item"], merged["code"])]
    merged = merged[hit].drop_duplicates(["stay_id", "event_row", "rule"])
    return merged[["stay_id", "event_row", "rule"]].reset_index(drop=True)


def export_truth(source: str, path: str | Path, events_path: str | Path, out_dir: str | Path,
                 diagnoses_path: str | Path | None = None) -> dict:
    """Write the truth folder (empty for real data) and return counts for extract.json.

    `diagnoses_path` (diagnoses.parquet), when given, is used to count listed problem
    codes that occur in no extracted event or diagnosis.
    """
    truth_in = Path(path) / "truth"
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        if source != "synthetic" or not truth_in.is_dir():
            return {"available": False}
        risk = pd.read_csv(truth_in / "stay_risk.csv.gz")
        # as text: NDCs keep their leading zeros (00121963886), or they never match a code
        planted = pd.read_csv(truth_in / "planted_events.csv.gz", dtype={"itemid_or_ndc": str})
        companions = pd.read_csv(truth_in / "companion_events.csv.gz", dtype={"itemid_or_ndc": str})
        problem_codes = pd.read_csv(truth_in / "problem_codes.csv.gz", dtype=str)
        events = pd.read_parquet(events_path, columns=["stay_id", "event_type", "time", "code"])
        matched = match_planted_events(planted, events)
        matched_companions = match_planted_events(companions, events)
        risk[["stay_id", "true_risk"]].to_parquet(tmp / "stay_risk.parquet", index=False)
        risk[["stay_id", "true_risk", "death_rate_per_hour"]].to_parquet(tmp / "stay_survival.parquet", index=False)
        matched.to_parquet(tmp / "planted_events.parquet", index=False)
        matched_companions.to_parquet(tmp / "companion_events.parquet", index=False)
        problem_codes.to_parquet(tmp / "problem_codes.parquet", index=False)
    counts = {"available": True, "stays_with_risk": len(risk), "planted_events": len(planted),
              "planted_events_matched": len(matched), "companion_events": len(companions),
              "companion_events_matched": len(matched_companions), "problem_codes": len(problem_codes)}
    unmatched = len(planted) - len(matched)
    if unmatched:
        log.info("%d planted events are not among the extracted events (stays outside the cohort)", unmatched)
    if diagnoses_path is not None:
        seen = set(events["code"].unique()) | set(pd.read_parquet(diagnoses_path, columns=["code"])["code"])
        missing = sorted(set(problem_codes["code"]) - seen)
        counts["problem_codes_not_extracted"] = len(missing)
        if missing:
            log.warning("%d problem codes occur in no extracted event or diagnosis, e.g. %s",
                        len(missing), missing[:3])
    return counts
