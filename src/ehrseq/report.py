"""The report: every task's metrics side by side, and the figures a person looks at.

`build_summary(metrics, ...)` turns the metrics files other stages wrote into one
Markdown page; `figures` draws the plots. Both read only what exists: a stage that has
not run (a model not trained yet, real data without a truth folder) shows as "not run",
and a metric that is undefined shows the reason its metrics file gives, never a crash
and never a blank. So the report works at every point of the roadmap and on every source.

A metric entry, as `ehrseq.metrics.bootstrap` writes it, is either a number or
`{"value": v, "ci_low": lo, "ci_high": hi, ...}` or `{"value": null, "reason": "..."}`.

The page starts with a headline block between `HEADLINE_START` and `HEADLINE_END`:
`scripts/run.sh` prints it, and README's results section carries a copy that a test
compares with the committed summary, so the two cannot drift.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Iterable, Mapping

log = logging.getLogger(__name__)

HEADLINE_START = "<!-- headline:start -->"
HEADLINE_END = "<!-- headline:end -->"
NOT_RUN = "not run"

Metrics = Mapping[str, Any]


def load_metrics(directory: str | Path) -> dict[str, dict]:
    """Every `NAME.json` of a metrics folder, by NAME; a missing folder gives {}."""
    directory = Path(directory)
    if not directory.is_dir():
        return {}
    return {p.stem: json.loads(p.read_text()) for p in sorted(directory.glob("*.json"))}


def entry_value(entry: Any) -> float | None:
    """The point value of a metric entry (None when undefined or absent)."""
    if isinstance(entry, Mapping):
        return entry.get("value")
    return entry if isinstance(entry, (int, float)) and not isinstance(entry, bool) else None


def fmt(entry: Any, digits: int = 3) -> str:
    """`0.804 [0.747, 0.854]`, a bare number, or `undefined (reason)`; `not run` when absent."""
    if entry is None:
        return NOT_RUN
    if isinstance(entry, bool):
        return "yes" if entry else "no"
    if isinstance(entry, int):
        return f"{entry:,}"
    if isinstance(entry, float):
        return f"{entry:.{digits}f}"
    if isinstance(entry, Mapping):
        value = entry.get("value")
        if value is None:
            return f"undefined ({entry.get('reason', 'no reason given')})"
        text = fmt(value, digits)
        if entry.get("ci_low") is not None and entry.get("ci_high") is not None:
            text += f" [{entry['ci_low']:.{digits}f}, {entry['ci_high']:.{digits}f}]"
        return text
    return str(entry)


def dig(data: Any, path: str | tuple[str, ...]) -> Any:
    """`dig(m, "pretrain.perplexity")`: a nested key, None where any level is missing.
    A tuple path names keys that themselves contain dots (`("metrics", "auroc_167.5h")`)."""
    for key in (path.split(".") if isinstance(path, str) else path):
        if not isinstance(data, Mapping) or key not in data:
            return None
        data = data[key]
    return data


def markdown_table(header: list[str], rows: Iterable[list[str]]) -> str:
    rows = [[cell.replace("|", "\\|") for cell in row] for row in rows]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def metric_rows(rows: Mapping[str, Metrics | None], columns: Mapping[str, str]) -> list[list[str]]:
    """One table row per name: each column's `dig` path formatted; a missing file is `not run`."""
    out = []
    for name, metrics in rows.items():
        if metrics is None:
            out.append([name] + [NOT_RUN] * len(columns))
        else:
            # a key the file lacks is not measured there ("-"), unlike a file that is absent
            out.append([name] + [fmt(v) if (v := dig(metrics, path)) is not None else "-" for path in columns.values()])
    return out


# ----------------------------------------------------------------------- sections

MORTALITY_COLUMNS = {
    "AUROC": "auroc", "model / oracle AUROC": "auroc_vs_oracle", "AUPRC": "auprc", "Brier": "brier", "ECE": "ece",
}


def mortality_section(metrics: Mapping[str, dict], models: list[str]) -> tuple[str, list[list[str]]]:
    """The mortality table (every model, the logistic-regression baseline, the oracle)."""
    rows = metric_rows({m: metrics.get(m) for m in models}, MORTALITY_COLUMNS)
    oracle = next((dig(metrics[m], "oracle_auroc") for m in models if m in metrics), None)
    rows.append(["oracle (true risk)", fmt(oracle), "1", "", "", ""])
    first = next((metrics[m] for m in models if m in metrics), None)
    split = (f"Test split: {first.get('stays', '?')} stays, {first.get('deaths', '?')} deaths; "
             f"95% intervals resample {first.get('resample_unit', 'stays')}." if first else "")
    table = markdown_table(["model", *MORTALITY_COLUMNS], rows)
    return f"## In-hospital mortality\n\n{split}\n\n{table}\n", rows


def grouped_section(title: str, data: Metrics | None, groups: Mapping[str, str], columns: Mapping[str, str],
                    note: str = "") -> str:
    """A table of one metrics file whose rows are groups (model, oracle, baselines): each
    column is a `dig` path template in which `{g}` stands for the row's group key."""
    if data is None:
        return f"## {title}\n\n{NOT_RUN}.\n"
    def at(path, key):
        return path.format(g=key) if isinstance(path, str) else tuple(p.format(g=key) for p in path)

    rows = [[label] + _collapse([fmt(dig(data, at(path, key))) for path in columns.values()])
            for label, key in groups.items()]
    return f"## {title}\n\n{note}{markdown_table(['', *columns], rows)}\n"


def _collapse(cells: list[str]) -> list[str]:
    """A row undefined for one reason says it once (the oracle on real data), not per column."""
    if len(cells) > 1 and len(set(cells)) == 1 and cells[0].startswith("undefined"):
        return [cells[0]] + ["-"] * (len(cells) - 1)
    return cells


GENERATION_GROUPS = {"prompt_bart": "prompt_bart", "independent-codes baseline": "baseline"}
GENERATION_COLUMNS = {
    "prevalence Spearman": "fidelity.{g}.prevalence_spearman",
    "co-occurrence dependence Pearson": "fidelity.{g}.cooccurrence_dependence_pearson",
    "exact patient copies": "privacy.{g}.exact_patient_copies",
    "membership-inference AUC": "privacy.{g}.membership_inference_auc",
    "TSTR / TRTR AUROC": "utility.{g}.tstr_over_trtr",
}
SURVIVAL_GROUPS = {"survival_lstm": "model", "oracle (true survival)": "oracle",
                   "Cox on pre-cutoff code counts": "cox", "Kaplan-Meier": "kaplan_meier"}


def survival_columns(data: Metrics | None) -> dict[str, tuple[str, ...]]:
    """Antolini C, Uno's C, IBS and one time-dependent AUROC column per evaluated time."""
    columns = {"Antolini C": ("metrics", "{g}", "antolini_c"), "Uno's C": ("metrics", "{g}", "uno_c"),
               "integrated Brier score": ("metrics", "{g}", "integrated_brier_score")}
    for hours in (data or {}).get("auc_hours", []):
        columns[f"AUROC at {hours:g} h"] = ("metrics", "{g}", f"auroc_{hours:g}h")
    return columns


EMBEDDING_GROUPS = {"med2vec (time decay)": "med2vec", "med2vec, lambda = 0": "med2vec_lambda0",
                    "gensim Word2Vec": "gensim"}
EMBEDDING_COLUMNS = {
    "planted-problem precision@10": "models.{g}.planted.precision_at_k.value",
    "(random)": "models.{g}.planted.precision_at_k.random",
    "KMeans NMI": "models.{g}.planted.kmeans_nmi.value",
    "ICD chapter precision@10": "models.{g}.ontology.chapter_precision_at_k.value",
    "next-visit recall@10": "models.{g}.next_visit.similarity.recall_at_10",
}
PERPLEXITY_GROUPS = {t: t for t in ("diagnosis", "medication", "procedure", "lab")}
PERPLEXITY_COLUMNS = {
    "next visit (lpl), prompt_bart": "lpl.{g}.model", "lpl, baseline": "lpl.{g}.baseline",
    "within visit (mpl), prompt_bart": "mpl.{g}.model", "mpl, baseline": "mpl.{g}.baseline",
}


def _best(scores: Any) -> tuple[str, float] | None:
    """The best method of a {method: value, "random": ..., "stays": ...} mapping."""
    if not isinstance(scores, Mapping):
        return None
    methods = {m: v for m, v in scores.items() if m not in ("random", "stays") and isinstance(v, (int, float))}
    return max(methods.items(), key=lambda mv: mv[1]) if methods else None


def explain_row(m: Metrics, k: int = 5) -> list[str]:
    """Best deletion AOPC, strict and companion-aware recall-precision@k, sanity checks."""
    def best(scores):
        found = _best(scores)
        return f"{found[1]:.3f} ({found[0]})" if found else fmt(scores if isinstance(scores, Mapping) else None)

    strict = dig(m, f"recall_precision_at_k.k={k}")
    aware = dig(m, f"companion_aware.recall_precision_at_k.k={k}")
    randomised = dig(m, "sanity.parameter_randomisation.methods") or {}
    passing = [name for name, r in randomised.items() if r.get("passes")]
    return [
        best(m.get("aopc")), fmt(dig(m, "aopc.random")),
        best(strict) if strict else fmt(m.get("precision")), fmt(dig(strict, "random")),
        best(aware) if aware else fmt(m.get("companion_aware")),
        f"{len(passing)} of {len(randomised)}" if randomised else NOT_RUN,
        shuffled_label_cell(dig(m, "sanity.label_randomisation")),
    ]


def shuffled_label_cell(label: Metrics | None) -> str:
    """Mean over seeds of the shuffled-label models' test AUROC within event-count strata,
    each seed's value, and the verdict (sanity.label_randomisation_verdict)."""
    if not isinstance(label, Mapping):
        return NOT_RUN
    if label.get("mean") is None:
        return f"undefined ({label['reason']})" if label.get("reason") else NOT_RUN
    seeds = ", ".join(f"{a:.3f}" for a in label.get("test_auroc_per_seed", []))
    return f"{label['mean']:.3f} [{seeds}] {'pass' if label.get('passes') else 'FAIL'}"


EXPLAIN_HEADER = ["model", "best deletion AOPC", "random AOPC", "strict recall-precision@5 (best)", "random",
                  "companion-aware recall-precision@5", "methods passing parameter randomisation",
                  "shuffled-label test AUROC within event strata: mean [per seed] verdict"]


def explain_section(metrics: Mapping[str, dict], models: list[str]) -> str:
    rows = [[m, *explain_row(metrics[f"explain_{m}"])] if f"explain_{m}" in metrics
            else [m] + [NOT_RUN] * (len(EXPLAIN_HEADER) - 1) for m in models]
    return "## Explanations (test split)\n\n" + markdown_table(EXPLAIN_HEADER, rows) + "\n"


def data_section(extract: Metrics | None) -> str:
    """Cohort, splits, events per kind (kept, withheld at the cutoff, dropped) and drops by reason."""
    if extract is None:
        return f"## Data\n\n{NOT_RUN}.\n"
    stays, events = extract.get("stays", {}), extract.get("events", {})
    excluded = ", ".join(f"{k} {fmt(v)}" for k, v in stays.get("excluded", {}).items()) or "none"
    lines = [f"Source `{extract.get('source')}`, observation window {extract.get('observation_hours')} h: "
             f"{fmt(stays.get('read'))} ICU stays read, {fmt(stays.get('kept'))} kept; excluded: {excluded}.", ""]
    splits = extract.get("splits", {})
    lines += [markdown_table(["split", "stays", "patients", "deaths", "mortality"],
                             [[s, fmt(v.get("stays")), fmt(v.get("patients")), fmt(v.get("deaths")),
                               fmt(v.get("mortality_rate"))] for s, v in splits.items()]), ""]
    dropped = events.get("dropped", {})
    kinds = list(events.get("kept", {}))
    withheld = events.get("values_withheld_at_cutoff", {})
    moved = events.get("date_only_moved_after_cutoff", {})
    header = ["event kind", "kept", "value withheld at cutoff", "date-only moved after cutoff", *dropped]
    lines += [markdown_table(header, [[k, fmt(events["kept"][k]), fmt(withheld.get(k, 0)), fmt(moved.get(k, 0)),
                                       *(fmt(dropped[r].get(k, 0)) for r in dropped)] for k in kinds]), ""]
    for key in ("lab_result_time", "ingredient_rows_by_system"):
        if key in events:
            lines.append(f"- {key.replace('_', ' ')}: {_inline(events[key])}")
    missing = extract.get("missing_tables")
    lines.append(f"- missing optional tables: {', '.join(missing) if missing else 'none'}")
    return "## Data\n\n" + "\n".join(lines) + "\n"


def _inline(value: Any) -> str:
    """A small nested dict on one line: `metavision read 13,224; kept 12,238`."""
    if isinstance(value, Mapping):
        return "; ".join(f"{k} {_inline(v)}" for k, v in value.items())
    return fmt(value)


def cost_row(name: str, m: Any) -> list[str] | None:
    """[stage, wall seconds, their parts] of one metrics file, None if it records no seconds.

    A file gives `seconds` as a number (with its parts in `seconds_by_phase`, and `stage`,
    `nproc` and `epochs_by_phase` in the train stages' files) or as a mapping of parts
    with a `total`."""
    if not isinstance(m, Mapping):
        return None
    seconds = m.get("seconds")
    parts = m.get("seconds_by_phase", {})
    if isinstance(seconds, Mapping):
        seconds, parts = seconds.get("total"), {k: v for k, v in seconds.items() if k != "total"}
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool):
        return None
    epochs = m.get("epochs_by_phase", {})
    detail = ", ".join(f"{k} {v:.0f}" + (f" ({epochs[k]} epochs)" if k in epochs else "")
                       for k, v in parts.items() if isinstance(v, (int, float)))
    if m.get("nproc", 1) > 1:
        detail += f" ({m['nproc']} processes)"
    return [m.get("stage", name), f"{seconds:.0f}", detail]


def cost_section(metrics: Mapping[str, dict]) -> str:
    """Wall seconds per stage, and per phase where recorded, from every metrics file that records them."""
    rows = [row for name, m in metrics.items() if (row := cost_row(name, m)) is not None]
    if not rows:
        return f"## Run cost\n\n{NOT_RUN}.\n"
    total = sum(float(r[1]) for r in rows)
    table = markdown_table(["stage", "seconds", "of which"], rows + [["total", f"{total:.0f}", ""]])
    return "## Run cost\n\n" + table + "\n"


def headline(mortality_rows: list[list[str]]) -> str:
    """The few lines `run.sh` prints and README copies: test AUROC and its share of the oracle."""
    rows = [[r[0], r[1], r[2]] for r in mortality_rows]
    return "\n".join([HEADLINE_START, markdown_table(["model", "test AUROC", "model / oracle AUROC"], rows),
                      HEADLINE_END])


def extract_headline(summary: str) -> str:
    """The headline block of a summary (markers included); ValueError if it has none."""
    start, end = summary.find(HEADLINE_START), summary.find(HEADLINE_END)
    if start < 0 or end < start:
        raise ValueError(f"no headline block ({HEADLINE_START} ... {HEADLINE_END}) in the summary")
    return summary[start:end + len(HEADLINE_END)]

