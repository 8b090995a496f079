"""Reading params.yaml: only stage modules call this; library code takes plain arguments."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


def load_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    with open(path) as f:
        return yaml.safe_load(f)
