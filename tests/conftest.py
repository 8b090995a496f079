"""Shared fixtures and toy data; test modules import from here, never from each other.

    build_tiny_mimic4 / tiny_mimic4   a hand-built MIMIC-IV folder whose every row's fate is known
    toy_sequences, write_toy_split    token-model stays with a planted risk token (TOY_VOCAB ids)
    make_toy_data, train_tiny, TINY   clinical_lf stays labelled by a planted "danger" text
    run_python                        a stage, script or benchmark as DVC and README run it
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader

from ehrseq.features import collate
from ehrseq.models.clinical_lf import ClinicalLF, clinical_lf_loss
from ehrseq.schema import BOS_ID, EOS_ID, EVENT_COLUMNS, EVENT_TYPES
from ehrseq.tasks import MortalityTask

DEMO = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mimic-iii-demo-1.4"


def write_table(root: Path, stem: str, rows: list[dict], columns: list[str]) -> None:
    path = root / f"{stem}.csv.gz"
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=columns).to_csv(path, index=False)


PROC_COLUMNS = ["subject_id", "hadm_id", "stay_id", "starttime", "endtime", "itemid", "value", "valueuom"]
MICRO_COLUMNS = ["subject_id", "hadm_id", "micro_specimen_id", "chartdate", "charttime", "spec_itemid",
                 "spec_type_desc", "test_itemid", "org_itemid", "org_name", "ab_itemid", "ab_name",
                 "storedate", "storetime"]
INGREDIENT_COLUMNS = ["subject_id", "hadm_id", "stay_id", "starttime", "endtime", "itemid", "amount", "amountuom"]


def append_rows(root: Path, stem: str, rows: list[dict], columns: list[str]) -> None:
    """Add rows to a table written by write_table (or create it)."""
    path = root / f"{stem}.csv.gz"
    old = [pd.read_csv(path, dtype=str)] if path.exists() else []
    new = pd.DataFrame(rows, columns=columns, dtype=object)  # object: ids with a None stay integers
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.concat([*old, new], ignore_index=True).to_csv(path, index=False)


def build_tiny_mimic4(root: Path) -> Path:
    """Four ICU stays, two kept; events chosen to hit every drop reason once.

    stay 100 (subject 1, 70 y): kept, dies 2150-01-05 12:00 (after the 48 h cutoff)
    stay 200 (subject 2, 50 y): kept, survives, discharged 2150-02-08
    stay 300 (subject 3, 16 y): excluded, under_min_age
    stay 400 (subject 2): excluded, shorter_than_window (19 h)
    """
    write_table(root, "hosp/patients", [
        dict(subject_id=1, gender="F", anchor_age=70, anchor_year=2150, anchor_year_group="2008 - 2010",
             dod="2150-01-05"),
        dict(subject_id=2, gender="M", anchor_age=50, anchor_year=2150, anchor_year_group="2008 - 2010", dod=None),
        dict(subject_id=3, gender="M", anchor_age=16, anchor_year=2150, anchor_year_group="2008 - 2010", dod=None),
    ], ["subject_id", "gender", "anchor_age", "anchor_year", "anchor_year_group", "dod"])
    adm_cols = ["subject_id", "hadm_id", "admittime", "dischtime", "deathtime", "admission_type",
                "insurance", "marital_status", "race", "hospital_expire_flag"]
    write_table(root, "hosp/admissions", [
        dict(subject_id=1, hadm_id=11, admittime="2150-01-01 00:00:00", dischtime="2150-01-05 12:00:00",
             deathtime="2150-01-05 12:00:00", admission_type="EW EMER.", insurance="Medicare",
             marital_status="WIDOWED", race="WHITE", hospital_expire_flag=1),
        dict(subject_id=2, hadm_id=21, admittime="2150-02-01 00:00:00", dischtime="2150-02-08 00:00:00",
             deathtime=None, admission_type="URGENT", insurance="Other", marital_status="MARRIED",
             race="BLACK/AFRICAN AMERICAN", hospital_expire_flag=0),
        dict(subject_id=3, hadm_id=31, admittime="2150-04-01 00:00:00", dischtime="2150-04-09 00:00:00",
             deathtime=None, admission_type="URGENT", insurance="Other", marital_status=None,
             race="WHITE", hospital_expire_flag=0),
        dict(subject_id=2, hadm_id=22, admittime="2150-03-01 00:00:00", dischtime="2150-03-03 00:00:00",
             deathtime=None, admission_type="URGENT", insurance="Other", marital_status="MARRIED",
             race="BLACK/AFRICAN AMERICAN", hospital_expire_flag=0),
    ], adm_cols)
    write_table(root, "icu/icustays", [
        dict(subject_id=1, hadm_id=11, stay_id=100, first_careunit="MICU",
             intime="2150-01-01 06:00:00", outtime="2150-01-05 12:00:00"),
        dict(subject_id=2, hadm_id=21, stay_id=200, first_careunit="SICU",
             intime="2150-02-01 06:00:00", outtime="2150-02-04 06:00:00"),
        dict(subject_id=3, hadm_id=31, stay_id=300, first_careunit="MICU",
             intime="2150-04-01 06:00:00", outtime="2150-04-05 06:00:00"),
        dict(subject_id=2, hadm_id=22, stay_id=400, first_careunit="MICU",
             intime="2150-03-01 01:00:00", outtime="2150-03-01 20:00:00"),
    ], ["subject_id", "hadm_id", "stay_id", "first_careunit", "intime", "outtime"])
    lab_cols = ["subject_id", "hadm_id", "itemid", "charttime", "value", "valuenum", "valueuom", "flag"]
    creat = dict(subject_id=1, hadm_id=11, itemid=50912, value="2.3", valuenum=2.3, valueuom="mg/dL", flag="abnormal")
    write_table(root, "hosp/labevents", [
        {**creat, "charttime": "2150-01-01 07:00:00"},                       # kept, hour 1
        {**creat, "charttime": "2150-01-01 07:00:00"},                       # duplicate
        {**creat, "charttime": "2150-01-04 00:00:00", "flag": None},         # kept, after cutoff
        {**creat, "charttime": "2149-12-31 23:00:00"},                       # outside_stay
        {**creat, "subject_id": 2, "hadm_id": 22, "charttime": "2150-03-01 05:00:00"},  # stay 400: not in cohort
        {**creat, "subject_id": 99, "hadm_id": None, "charttime": "2150-01-01 07:00:00"},  # orphan subject
        # kept, no hadm
        {**creat, "hadm_id": None, "charttime": "2150-01-01 08:00:00", "value": None, "valuenum": None},
    ], lab_cols)
    rx_cols = ["subject_id", "hadm_id", "starttime", "drug", "ndc", "prod_strength", "dose_val_rx", "dose_unit_rx",
               "route"]
    write_table(root, "hosp/prescriptions", [
        dict(subject_id=2, hadm_id=21, starttime="2150-02-01 08:00:00", drug="Norepinephrine", ndc="00409144901",
             prod_strength="4mg/4mL", dose_val_rx="0.1", dose_unit_rx="mcg/kg/min", route="IV DRIP"),
        dict(subject_id=2, hadm_id=999, starttime="2150-02-01 08:00:00", drug="Heparin", ndc="0",
             prod_strength=None, dose_val_rx="5000", dose_unit_rx="UNIT", route="SC"),  # orphan admission
        dict(subject_id=2, hadm_id=21, starttime=None, drug="Heparin", ndc="0",
             prod_strength=None, dose_val_rx="5000", dose_unit_rx="UNIT", route="SC"),  # missing_time
    ], rx_cols)
    # procedure values (durations) are known at endtime; this one ends before the cutoff
    write_table(root, "icu/procedureevents", [
        dict(subject_id=1, hadm_id=11, stay_id=100, starttime="2150-01-01 10:00:00", endtime="2150-01-01 20:00:00",
             itemid=225792, value=600, valueuom="min"),
        dict(subject_id=1, hadm_id=11, stay_id=555, starttime="2150-01-01 10:00:00", endtime="2150-01-01 20:00:00",
             itemid=225792, value=600, valueuom="min"),  # orphan stay
    ], PROC_COLUMNS)
    # culture results are known when stored; this one is stored before stay 200's cutoff
    culture = dict(subject_id=2, hadm_id=21, micro_specimen_id=7, chartdate="2150-02-02",
                   charttime="2150-02-02 00:00:00", spec_itemid=70012, spec_type_desc="BLOOD CULTURE",
                   test_itemid=90201, org_itemid=80002, org_name="E. COLI",
                   storedate="2150-02-02", storetime="2150-02-02 20:00:00")
    write_table(root, "hosp/microbiologyevents", [
        {**culture, "ab_itemid": None, "ab_name": None},
        {**culture, "ab_itemid": 90015, "ab_name": "VANCOMYCIN"},  # susceptibility row: merged
    ], MICRO_COLUMNS)
    write_table(root, "hosp/d_labitems", [dict(itemid=50912, label="Creatinine")], ["itemid", "label"])
    write_table(root, "icu/d_items", [dict(itemid=225792, label="Invasive Ventilation")], ["itemid", "label"])
    write_table(root, "hosp/diagnoses_icd", [
        dict(subject_id=1, hadm_id=11, seq_num=1, icd_code="4275", icd_version=9),
        dict(subject_id=1, hadm_id=11, seq_num=2, icd_code="I10", icd_version=10),
        dict(subject_id=2, hadm_id=21, seq_num=1, icd_code="0389", icd_version=9),
        dict(subject_id=3, hadm_id=31, seq_num=1, icd_code="V3000", icd_version=9),  # patient not in cohort
    ], ["subject_id", "hadm_id", "seq_num", "icd_code", "icd_version"])
    # icu/ingredientevents is deliberately absent: an optional table.
    return root


@pytest.fixture
def tiny_mimic4(tmp_path: Path) -> Path:
    return build_tiny_mimic4(tmp_path / "mimic4")


def run_python(cwd: Path, script: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """`python -P script args` in `cwd`, as dvc.yaml and README run stages, scripts and
    benchmarks (-P: stages/tokenize.py must not shadow the standard module); a non-zero exit
    fails the test with the end of its stderr."""
    done = subprocess.run([sys.executable, "-P", str(script), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, f"{script.name} {' '.join(args)}:\n{done.stderr[-3000:]}"
    return done


# ------------------------------------------------------- token-model toy stays

TOY_VOCAB = 40
DEMOGRAPHIC_IDS = (5, 6, 7, 8)  # two age bins, two genders
RISK_TOKEN = 9  # present in a stay -> high mortality
FIRST_EVENT = 10


def toy_sequences(n: int, seed: int, risk_rate: float = 0.3, max_events: int = 60) -> pd.DataFrame:
    """Stays in the sequences/{split}.parquet contract with a learnable signal.

    Events walk up the vocabulary (next = previous + 1 most of the time, something a
    language model can learn); a stay holding RISK_TOKEN somewhere dies with probability
    0.95, others with 0.02. `true_risk` is that probability (the oracle's score).
    Lengths are long-tailed (log-normal).
    """
    rng = np.random.default_rng(seed)
    n_event_ids = TOY_VOCAB - FIRST_EVENT
    rows = []
    for i in range(n):
        n_events = int(np.clip(rng.lognormal(np.log(15), 0.6), 3, max_events))
        events = [FIRST_EVENT + rng.integers(n_event_ids)]
        for _ in range(n_events - 1):
            step = 1 if rng.random() < 0.8 else rng.integers(n_event_ids)
            events.append(FIRST_EVENT + (events[-1] - FIRST_EVENT + step) % n_event_ids)
        has_risk = rng.random() < risk_rate
        if has_risk:
            events[rng.integers(n_events)] = RISK_TOKEN
        true_risk = 0.95 if has_risk else 0.02
        ids = [BOS_ID, int(rng.choice(DEMOGRAPHIC_IDS[:2])), int(rng.choice(DEMOGRAPHIC_IDS[2:])), *events, EOS_ID]
        hours = np.r_[0, 0, 0, np.sort(rng.uniform(0, 24, n_events)), 0].astype(np.float32)
        rows.append({
            "stay_id": 1000 + i, "subject_id": 10 * i,
            "input_ids": np.array(ids, dtype=np.int32), "hours": hours,
            "event_row": np.r_[-1, -1, -1, np.arange(n_events), -1].astype(np.int64),
            "mortality": np.int8(rng.random() < true_risk),
            "event_hours": np.float32(rng.uniform(1, 100)), "event": np.int8(0), "true_risk": true_risk,
        })
    return pd.DataFrame(rows)


def write_toy_split(path, frame: pd.DataFrame) -> str:
    frame.drop(columns="true_risk").to_parquet(path, index=False)
    return str(path)


# ------------------------------------------------------------ clinical_lf toy stays

DIM = 8  # toy text-embedding size
TINY = dict(d_model=16, n_layers=2, n_heads=4, ff_dim=32, dropout=0.0, attention_dropout=0.0, pool_heads=4,
            mlp_hidden=32, norm_first=False)


def make_toy_data(n_stays: int = 200, seed: int = 0):
    """Stays whose label is 1 exactly when a "danger" text occurs before the cutoff.

    Danger texts' embeddings carry a fixed direction; the same texts also occur AFTER the
    cutoff in survivors, so a model that saw post-cutoff events would be misled.
    Returns events, cohort, texts (text, row), vectors [N, DIM], planted event rows.
    """
    rng = np.random.default_rng(seed)
    direction = np.zeros(DIM, dtype=np.float32)
    direction[0] = 1.0
    normal = [f"Lab: routine result {i}" for i in range(30)]
    danger = [f"Lab: critical lactate {i}" for i in range(3)]
    texts = normal + danger
    vectors = rng.normal(size=(len(texts), DIM)).astype(np.float32) / np.sqrt(DIM)
    vectors[:, 0] = 0.0
    vectors[len(normal):] += 2.0 * direction
    origin = pd.Timestamp("2150-01-01")
    events, cohort, planted = [], [], []
    for i in range(n_stays):
        stay_id = 1000 + i
        intime = origin + pd.Timedelta(days=10 * i)
        cutoff = intime + pd.Timedelta(hours=48)
        dies = i % 2 == 0
        n = int(rng.integers(4, 12))
        hours = np.sort(rng.uniform(0.5, 47.5, size=n))
        chosen = list(rng.choice(normal, size=n))
        if dies:
            chosen[int(rng.integers(n))] = str(rng.choice(danger))
        rows = [(h, t, False) for h, t in zip(hours, chosen)]
        rows += [(48.5, str(rng.choice(danger)), True), (50.0, str(rng.choice(normal)), True)]
        for h, text, after in rows:
            if text in danger and not after:
                planted.append(len(events))
            events.append(dict(
                subject_id=i, hadm_id=10 * i, stay_id=stay_id, time=intime + pd.Timedelta(hours=float(h)),
                hours=float(h), event_type=str(rng.choice(EVENT_TYPES)), code=f"LAB//{texts.index(text)}",
                text=text, value=float(rng.normal()), unit="mg/dL", flag=None, after_cutoff=after,
            ))
        cohort.append(dict(
            subject_id=i, hadm_id=10 * i, stay_id=stay_id, intime=intime, outtime=cutoff + pd.Timedelta(hours=24),
            cutoff=cutoff, age=float(rng.uniform(20, 90)), gender=str(rng.choice(["F", "M"])),
            race=str(rng.choice(["WHITE", "BLACK", "ASIAN"])), admission_type="URGENT",
            insurance=str(rng.choice(["Medicare", "Other"])), marital_status=rng.choice(["MARRIED", None]),
            first_careunit=str(rng.choice(["MICU", "SICU"])), mortality=int(dies), event_hours=72.0,
            event=int(dies), split="train" if i % 10 < 7 else ("val" if i % 10 < 8 else "test"),
        ))
    events = pd.DataFrame(events, columns=list(EVENT_COLUMNS))
    text_table = pd.DataFrame({"text": texts, "row": np.arange(len(texts))})
    return events, pd.DataFrame(cohort), text_table, vectors, np.array(planted)


def train_tiny(dataset, steps: int = 250, seed: int = 0, temporal_lambda: float = 0.0, **overrides) -> ClinicalLF:
    """A tiny clinical_lf trained with a few lines of loop (the shared loop is tested elsewhere)."""
    torch.manual_seed(seed)
    first = dataset[0]
    model = ClinicalLF(first["steps"].shape[1], first["static"].shape[0], **{**TINY, **overrides})
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    loader = DataLoader(dataset, batch_size=32, shuffle=True, collate_fn=collate,
                        generator=torch.Generator().manual_seed(seed))
    model.train()
    step = 0
    while step < steps:
        for batch in loader:
            out = model(batch["steps"], batch["static"], batch["padding_mask"])
            loss = clinical_lf_loss(out, batch, temporal_lambda=temporal_lambda)["loss"]
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            if step == steps:
                break
    return model.eval()


# ------------------------------------------------------------ toy patients (prompt_bart, generate)

N_TOY_CODES = 12  # diagnosis codes D00..D11
CODES_PER_VISIT = 3


def toy_patients(n: int, seed: int, split: str = "train", first_id: int = 1):
    """One visit each: a diagnosis block of 3 distinct codes drawn uniformly from 12, and a
    medication that is a function of the diagnoses (M + the smallest diagnosis index).

    The diagnosis block of a patient has 220 equally likely values, so any model, given
    nothing about the patient, has a perplexity of at least 220 ** (1/4) ~ 3.85 per
    target over its 3 codes and the token closing the block.
    """
    rng = np.random.default_rng(seed)
    demo, rows = [], []
    for i in range(n):
        subject = first_id + i
        diag = np.sort(rng.choice(N_TOY_CODES, CODES_PER_VISIT, replace=False))
        rows += [(subject, 0, "diagnosis", f"D{d:02d}") for d in diag]
        rows.append((subject, 0, "medication", f"M{diag[0]:02d}"))
        demo.append((subject, split, float(rng.integers(20, 90)), rng.choice(["F", "M"]), "white"))
    from ehrseq.patient_visits import Patients

    return Patients(pd.DataFrame(demo, columns=["subject_id", "split", "age", "gender", "race"]),
                    pd.DataFrame(rows, columns=["subject_id", "visit", "code_type", "code"]))


def tiny_model(vocab, **overrides):
    """A 1-layer PromptBart for a `PatientVocab`."""
    config = {"prompt_length": 1, "d_model": 32, "encoder_layers": 1, "decoder_layers": 1, "attention_heads": 2,
              "ffn_dim": 64, "dropout": 0.0, "attention_dropout": 0.0, "max_length": 64}
    from ehrseq.models import build_model
    from ehrseq.patient_visits import build_model_inputs

    return build_model("prompt_bart", **build_model_inputs(vocab), **{**config, **overrides})


def corruption(**overrides):
    """`Corruption` with the rates of params.yaml's default, or `overrides`."""
    from ehrseq.patient_visits import Corruption

    rates = {"mask_rate": 0.15, "infill_rate": 0.3, "infill_lambda": 3.0, "shuffle_rate": 0.5, "future_rate": 0.25,
             "type_rate": 0.25, "full_mask_rate": 0.2}
    return Corruption(**{**rates, **overrides})


def sampling(**overrides):
    """`SamplingConfig`: plain sampling (temperature 1, top-k and top-p off), or `overrides`."""
    from ehrseq.generate import SamplingConfig

    return SamplingConfig(**{"temperature": 1.0, "top_k": 0, "top_p": 1.0, "max_visits": 8, "batch_size": 64,
                             **overrides})


class Killed(Exception):
    """What `KilledAfter` raises: the test expects it, so an unrelated error still fails."""


class KilledAfter(MortalityTask):
    """Dies like a killed process after `steps` training steps (resume tests)."""

    def __init__(self, steps: int, **kw):
        super().__init__(**kw)
        self.steps_left = steps

    def loss(self, model, batch):
        if self.steps_left == 0:
            raise Killed(f"killed after the planned number of steps: {batch['stay_id'].tolist()[:3]}...")
        self.steps_left -= 1
        return super().loss(model, batch)
