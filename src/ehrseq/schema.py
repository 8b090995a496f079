"""Names shared by several stages: the data contracts of DESIGN.md in code."""
from __future__ import annotations

# The five event kinds, in the fixed order used by every one-hot encoding.
EVENT_TYPES = ("prescription", "procedure", "lab", "microbiology", "ingredient")

# events.parquet, one row per clinical event, sorted by stay_id, time.
EVENT_COLUMNS = (
    "subject_id", "hadm_id", "stay_id", "time", "hours", "event_type", "code", "text",
    "value", "unit", "flag",
    "after_cutoff",  # True for events at or after the stay's cutoff: never shown to a mortality model
)

# Static features of cohort.parquet that models may use (known at ICU admission).
STATIC_CATEGORICAL = ("gender", "race", "admission_type", "insurance", "marital_status", "first_careunit")
STATIC_NUMERIC = ("age",)

# Special tokens: fixed ids at the top of every vocabulary.
PAD, UNK, BOS, EOS, VISIT = "<pad>", "<unk>", "<bos>", "<eos>", "<visit>"
SPECIAL_TOKENS = (PAD, UNK, BOS, EOS, VISIT)
PAD_ID, UNK_ID, BOS_ID, EOS_ID, VISIT_ID = range(len(SPECIAL_TOKENS))

SPLITS = ("train", "val", "test")
