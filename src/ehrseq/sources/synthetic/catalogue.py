"""The generator's catalogues: real MIMIC-IV item names and codes, read from `csv/`.

Each CSV in `csv/` (package data) is one catalogue: labs (with the distribution of a
value and the direction a sicker patient moves it), drugs, ICU procedures, ingredients,
culture specimens, organisms, antibiotics, and diagnoses (ICD-10 and ICD-9 side by side).
Derived details that must not depend on the seed (the long tail of filler lab tests, the
NDCs of each drug) come from a stable hash of their name, so the catalogue is the same
in every run. Row order matters: the Zipf-like draws favour the earlier rows.
"""
from __future__ import annotations

import hashlib
from importlib import resources

import pandas as pd


def _read(name: str, types: dict[str, type] | None = None) -> pd.DataFrame:
    """One catalogue CSV, every column text ('' -> None) except those cast in `types`.

    Read as text first so codes keep their leading zeros (ICD-9 0389) and names their
    exact spacing; numbers are cast from that text.
    """
    with resources.files(__package__).joinpath("csv", f"{name}.csv").open() as f:
        df = pd.read_csv(f, dtype=str, keep_default_na=False).replace({"": None})
    for col, kind in (types or {}).items():
        df[col] = df[col].astype(float).astype(kind) if kind is int else df[col].astype(float)
    return df


def _stable_uniform(key: str) -> float:
    """A number in [0, 1) fixed by `key`: catalogue details must not depend on the seed."""
    return int(hashlib.sha256(key.encode()).hexdigest()[:12], 16) / 16**12


# ---- labs ------------------------------------------------------------------------------

FILLER_LABS = 140  # rare tests that give the lab vocabulary its long tail
_FILLER_UNITS = ("mg/dL", "ng/mL", "IU/L", "%", "mmol/L", "U/L", "ug/dL", "pg/mL", "mg/L", "nmol/L")


def _lab_catalogue() -> pd.DataFrame:
    """Real labs (labs.csv: unit, reference range, mean/sd/min/max of a value, decimals,
    `direction` a sicker patient moves it), then FILLER_LABS labelled filler tests."""
    real = _read("labs", {"itemid": int, "ref_lo": float, "ref_hi": float, "mean": float, "sd": float,
                          "min": float, "max": float, "decimals": int, "direction": int})
    filler = []
    for i in range(FILLER_LABS):
        mean = 10 ** (3 * _stable_uniform(f"lab-mean-{i}") - 1)
        filler.append({
            "itemid": 52100 + i, "label": f"Reference Laboratory Assay {i + 1:03d}", "fluid": "Blood",
            "category": "Chemistry", "unit": _FILLER_UNITS[i % len(_FILLER_UNITS)],
            "ref_lo": round(mean * 0.5, 2), "ref_hi": round(mean * 1.5, 2), "mean": mean, "sd": mean * 0.22,
            "min": mean * 0.05, "max": mean * 20, "decimals": 2, "direction": 1 if i % 3 else -1,
        })
    return pd.concat([real, pd.DataFrame(filler)], ignore_index=True)


LABS = _lab_catalogue()
LAB_INDEX = {int(itemid): i for i, itemid in enumerate(LABS["itemid"])}

# ---- drugs -----------------------------------------------------------------------------

# Labelers of real NDC prefixes (Hospira, Baxter, Fresenius, ...). Product and package
# digits are synthetic: a stable hash of the drug and variant.
_NDC_LABELERS = ("00409", "00338", "63323", "00904", "51079", "00121", "00054", "00182", "68084", "00641")


def _drug_catalogue() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Drugs (drugs.csv) and their NDCs: `ndc_variants` per drug, one row each."""
    drugs = _read("drugs", {"dose_lo": float, "dose_hi": float, "ndc_variants": int})
    ndcs = []
    for d, row in drugs.iterrows():
        for v in range(row["ndc_variants"]):
            key = f"{row['drug']}|{v}"
            digits = int(hashlib.sha256(key.encode()).hexdigest(), 16)
            ndcs.append({
                "drug_index": d,
                "ndc": _NDC_LABELERS[digits % len(_NDC_LABELERS)] + f"{digits // 10 % 10**6:06d}",
                "gsn": f"{digits // 10**7 % 10**6:06d}",
                "formulary_drug_cd": "".join(ch for ch in row["drug"].upper() if ch.isalpha())[:4] + str(v + 1),
            })
    return drugs, pd.DataFrame(ndcs)


DRUGS, DRUG_NDCS = _drug_catalogue()
DRUG_INDEX = {name: i for i, name in enumerate(DRUGS["drug"])}

# ---- ICU items -------------------------------------------------------------------------

# kind: `duration` (a value in minutes, known at endtime) or a one-off `task`
PROCEDURES = _read("procedures", {"itemid": int})
PROC_INDEX = {int(i): k for k, i in enumerate(PROCEDURES["itemid"])}
INGREDIENTS = _read("ingredients", {"itemid": int})
INGREDIENT_INDEX = {label: k for k, label in enumerate(INGREDIENTS["label"])}

# ---- microbiology ----------------------------------------------------------------------

# share: of background cultures; positive_rate: share of background cultures that grow
SPECIMENS = _read("specimens", {"spec_itemid": int, "test_itemid": int, "share": float, "positive_rate": float})
ORGANISMS = _read("organisms", {"org_itemid": int})
ANTIBIOTICS = _read("antibiotics", {"ab_itemid": int})

# ---- diagnoses -------------------------------------------------------------------------

# icd10|title10|icd9|title9: problem and outcome codes first, then background (from I10 on)
DIAGNOSES = _read("diagnoses")
DIAGNOSIS_INDEX = {code: k for k, code in enumerate(DIAGNOSES["icd10"])}
