"""The synthetic generator's ground truth, joined to the extracted events.

`data/interim/truth/` holds, for the synthetic source only:
- `stay_risk.parquet`: stay_id, true_risk (the generator's probability of death after
  the cutoff): the oracle score for AUROC.
- `planted_events.parquet`: stay_id, event_row (row of events.parquet), rule: the events
  that carry the planted risk, for checking explanations against the truth.
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
    """Find each planted event's row in events.parquet by stay, kind, time and code.

    The generator names the item (itemid or NDC); the extracted code contains it as one
    of its `//`-separated parts (`LAB//50813`, `NDC//...`, `MICRO//70012//80002`). A
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


def export_truth(source: str, path: str | Path, events_path: str | Path, out_dir: str | Path) -> dict:
    """Write the truth folder (empty for real data) and return counts for extract.json."""
    truth_in = Path(path) / "truth"
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        if source != "synthetic" or not truth_in.is_dir():
            return {"available": False}
        risk = pd.read_csv(truth_in / "stay_risk.csv.gz")
        # as text: NDCs keep their leading zeros (00121963886), or they never match a code
        planted = pd.read_csv(truth_in / "planted_events.csv.gz", dtype={"itemid_or_ndc": str})
        events = pd.read_parquet(events_path, columns=["stay_id", "event_type", "time", "code"])
        matched = match_planted_events(planted, events)
        risk[["stay_id", "true_risk"]].to_parquet(tmp / "stay_risk.parquet", index=False)
        matched.to_parquet(tmp / "planted_events.parquet", index=False)
    unmatched = len(planted) - len(matched)
    if unmatched:
        log.info("%d planted events are not among the extracted events (stays outside the cohort)", unmatched)
    return {"available": True, "stays_with_risk": len(risk), "planted_events": len(planted),
            "planted_events_matched": len(matched)}
