"""survival_lstm's inputs for explanation: pre-cutoff visits whose codes name their events.

The survival view (`tokenize.survival_sequences`) keeps no event rows: a visit is the SET
of token ids of the events in one `visit_hours` bin, so one code in one visit may stand
for several events (a lab drawn twice in 6 h). The unit an explanation scores and
removes is therefore a (visit, code) pair. It is named by its first event_row, and it is
a planted (companion) unit when ANY of its events is planted (a companion):
`unit_truth` maps the truth onto these representative rows, so precision@k counts units
the way the model sees them.

Only the pre-cutoff visits are kept (`pre_cutoff_frame`): the landmark state of the
one-direction LSTM reads visits 0..landmark and nothing after, so the risk at the cutoff
does not depend on post-cutoff visits, and they must not be scored as "events" of it.
The mapping re-derives each event's visit with `tokenize.cutoff_bins` and its token with
the vocabulary, and checks that it reproduces the view's codes exactly; a mismatch
(a view tokenized with other params) raises with the stay and visit.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ehrseq.explain.inputs import Truth
from ehrseq.survival_data import SurvivalDataset, collate_visits
from ehrseq.tokenize import cutoff_bins
from ehrseq.vocab import Vocab


def pre_cutoff_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """The survival view with each stay's visits cut to its `pre_visits` (the landmark view)."""
    return frame.assign(visits=[list(v[:p]) for v, p in zip(frame["visits"], frame["pre_visits"])])


def unit_rows(events: pd.DataFrame, cohort: pd.DataFrame, vocab: Vocab, visit_hours: float,
              frame: pd.DataFrame, path: str | Path = "survival view") -> tuple[list[list[np.ndarray]], pd.Series]:
    """Per stay of `frame` (the survival view), per pre-cutoff visit, the representative
    event_row of each of its codes (aligned with the visit's ids); and the map
    event_row -> representative row of every pre-cutoff event of these stays.

    `events`: the full events.parquet (row order = event_row); `cohort`: stay_id, intime, cutoff.
    """
    stays = frame["stay_id"].to_numpy()
    ev = events.loc[events["stay_id"].isin(stays) & ~events["after_cutoff"].astype(bool)]
    timing = cohort.set_index("stay_id").loc[stays]
    cutoff_hours = pd.Series(((timing["cutoff"] - timing["intime"]).dt.total_seconds() / 3600.0).to_numpy(),
                             index=stays)
    pre = pd.Series(frame["pre_visits"].to_numpy(np.int64), index=stays)
    rel = (ev["hours"] - ev["stay_id"].map(cutoff_hours)).to_numpy(dtype=float)
    position = cutoff_bins(rel, np.zeros(len(ev), bool), visit_hours) + ev["stay_id"].map(pre).to_numpy()
    units = pd.DataFrame({"stay_id": ev["stay_id"].to_numpy(), "position": position,
                          "token": vocab.ids(vocab.event_tokens(ev)), "event_row": ev.index.to_numpy(np.int64)})
    units = units[units["position"] >= 0]  # before the first pre-cutoff bin: not in the view
    units["unit_row"] = units.groupby(["stay_id", "position", "token"])["event_row"].transform("min")
    lookup = units.drop_duplicates(["stay_id", "position", "token"]).set_index(["stay_id", "position", "token"])
    lookup = lookup["unit_row"].to_dict()
    out = []
    for stay_id, visits, n_pre in zip(stays, frame["visits"], frame["pre_visits"]):
        per_visit = []
        for v in range(int(n_pre)):
            rows = [lookup.get((stay_id, v, int(t)), -1) for t in visits[v]]
            if -1 in rows:
                t = int(visits[v][rows.index(-1)])
                raise ValueError(f"{path}: stay_id {stay_id}, visit {v}: code id {t} has no pre-cutoff event in "
                                 "events.parquet; was the view tokenized with other vocab/tokenize params?")
            per_visit.append(np.asarray(rows, dtype=np.int64))
        out.append(per_visit)
    # every unit of events.parquet must be a code of the view (the other direction is checked above)
    n_units = units.drop_duplicates(["stay_id", "position", "token"]).groupby("stay_id").size()
    n_view = pd.Series([sum(len(r) for r in per) for per in out], index=stays)
    extra = n_units.reindex(stays, fill_value=0) - n_view
    if (extra != 0).any():
        stay_id = extra.index[(extra != 0).to_numpy()][0]
        raise ValueError(f"{path}: stay_id {stay_id} has {int(n_units.get(stay_id, 0))} (visit, code) units in "
                         f"events.parquet but {int(n_view[stay_id])} codes in its pre-cutoff visits")
    return out, units.set_index("event_row")["unit_row"]


def unit_truth(truth: Truth, representative: pd.Series) -> Truth:
    """`truth` on (visit, code) units: a unit is planted (companion) when any of its events is."""
    def mapped(rows: np.ndarray | None) -> np.ndarray | None:
        if rows is None:
            return None
        return np.unique(representative.reindex(rows).dropna().to_numpy(np.int64))
    return Truth(mapped(truth.planted_rows), mapped(truth.companion_rows), truth.companion_reason)


class SurvivalEventDataset(SurvivalDataset):
    """SurvivalDataset of the landmark view whose items also hold `event_row`: per visit,
    the representative event row of each code (aligned with `visits`)."""

    def __init__(self, frame: pd.DataFrame, event_rows: list[list[np.ndarray]]):
        super().__init__(pre_cutoff_frame(frame))
        self.event_rows = [[torch.from_numpy(r) for r in per] for per in event_rows]
        for i, (visits, rows) in enumerate(zip(self.visits, self.event_rows)):
            if [len(v) for v in visits] != [len(r) for r in rows]:
                raise ValueError(f"stay_id {int(self.columns['stay_id'][i])}: event rows do not align with codes")

    def __getitem__(self, i: int) -> dict:
        return {**super().__getitem__(i), "event_row": self.event_rows[i]}


def collate_survival_events(items: Sequence[dict]) -> dict[str, torch.Tensor]:
    """`collate_visits` plus event_row [B, V, C] (-1 on padding) and `label` [B] = event
    (death within the horizon), the label the explanation's predictions table shows."""
    out = collate_visits(items)
    rows = torch.full(out["visit_codes"].shape, -1, dtype=torch.long)
    for b, item in enumerate(items):
        for v, r in enumerate(item["event_row"]):
            rows[b, v, : len(r)] = r
    out["event_row"] = rows
    out["label"] = out["event"]
    return out
