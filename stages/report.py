"""DVC stage `report`: reports/summary.md and reports/figures/*.png, every model side by side.

    python -P stages/report.py

Reads every metrics file and plot table the pipeline writes; anything missing shows as
"not run" (see `ehrseq.report`). The summary's headline block is what `scripts/run.sh`
prints and what README's results section copies.
"""
import logging

import pandas as pd

from ehrseq import report
from ehrseq import report_figures as figures
from ehrseq.io import atomic_path, setup_logging
from ehrseq.metrics import classification_curves
from ehrseq.models import REGISTRY
from ehrseq.paths import COHORT, FIGURES, METRICS, STAY_RISK, SUMMARY, explain_dir, plots_dir, tertile_plot

log = logging.getLogger("ehrseq.stages.report")

MORTALITY_MODELS = ["lstm", "transformer", "gpt2", "clinical_lf", "logreg"]
EXPLAINED_MODELS = ["lstm", "transformer", "gpt2", "clinical_lf", "survival_lstm"]


def read_csv(path) -> pd.DataFrame | None:
    return pd.read_csv(path) if path.exists() else None


def oracle_roc() -> pd.DataFrame | None:
    """The true risk's ROC on the test split (synthetic data only)."""
    if not (STAY_RISK.exists() and COHORT.exists()):
        return None
    test = pd.read_parquet(COHORT, columns=["stay_id", "split", "mortality"]).query("split == 'test'")
    risk = pd.read_parquet(STAY_RISK, columns=["stay_id", "true_risk"])
    test = test.merge(risk, on="stay_id", how="inner")
    return classification_curves(test["mortality"].to_numpy(int), test["true_risk"].to_numpy(), 10)["roc"]


def draw_figures(metrics: dict) -> list[str]:
    """Every figure whose inputs exist; returns the lines the summary lists."""
    drawn = []
    rocs = {m: read_csv(plots_dir(m) / "roc.csv") for m in MORTALITY_MODELS}
    rocs = {m: t for m, t in rocs.items() if t is not None and len(t)}
    aurocs = {m: report.entry_value(report.dig(metrics.get(m), "auroc")) for m in rocs}
    oracle = oracle_roc()
    if oracle is not None and len(oracle):
        rocs["oracle (true risk)"] = oracle
        oracle_aurocs = (report.dig(metrics[m], "oracle_auroc") for m in MORTALITY_MODELS if m in metrics)
        aurocs["oracle (true risk)"] = report.entry_value(next(oracle_aurocs, None))
    figure_inputs = {
        "roc.png": (figures.roc_overlay, (rocs, aurocs) if rocs else None),
        "calibration.png": (figures.calibration_overlay,
                            _present({m: plots_dir(m) / "calibration.csv" for m in MORTALITY_MODELS})),
        "deletion.png": (figures.deletion_curves,
                         _present({m: explain_dir(m) / "deletion.csv" for m in EXPLAINED_MODELS})),
        "survival.png": (figures.survival_by_group, read_csv(tertile_plot("survival_lstm", "csv"))),
        "prevalence.png": (figures.prevalence_scatter, read_csv(plots_dir("generate") / "prevalence.csv")),
    }
    for name, (draw, inputs) in figure_inputs.items():
        if inputs is None or (isinstance(inputs, dict) and not inputs):
            drawn.append(f"- `{name}`: {report.NOT_RUN} (no input yet)")
            continue
        draw(*(inputs if isinstance(inputs, tuple) else (inputs,)), FIGURES / name)
        drawn.append(f"- `{name}`")
    return drawn


def _present(paths: dict) -> dict[str, pd.DataFrame] | None:
    tables = {name: pd.read_csv(path) for name, path in paths.items() if path.exists()}
    return tables or None


def main() -> None:
    setup_logging()
    metrics = report.load_metrics(METRICS)
    unknown = set(MORTALITY_MODELS) - set(REGISTRY) - {"logreg"}
    if unknown:
        raise KeyError(f"report lists models the registry does not know: {sorted(unknown)}")
    mortality, rows = report.mortality_section(metrics, MORTALITY_MODELS)
    figure_lines = draw_figures(metrics)
    page = "\n".join([
        "# ehrseq summary", "",
        report.headline(rows), "",
        report.data_section(metrics.get("extract")),
        mortality,
        report.grouped_section(
            "In-hospital survival after the cutoff (landmark)", metrics.get("survival_lstm"), report.SURVIVAL_GROUPS,
            report.survival_columns(metrics.get("survival_lstm")),
            note="survival_lstm / oracle Antolini C: "
                 f"{report.fmt(report.dig(metrics.get('survival_lstm'), 'c_index_vs_oracle'))}\n\n"),
        report.grouped_section("Code embeddings (test patients)", metrics.get("med2vec"), report.EMBEDDING_GROUPS,
                               report.EMBEDDING_COLUMNS),
        report.grouped_section("Synthetic patients (generate, against the real test split)", metrics.get("generate"),
                               report.GENERATION_GROUPS, report.GENERATION_COLUMNS),
        report.grouped_section("prompt_bart perplexity per code type (median over test patients)",
                               metrics.get("prompt_bart"), report.PERPLEXITY_GROUPS, report.PERPLEXITY_COLUMNS),
        report.explain_section(metrics, EXPLAINED_MODELS),
        report.cost_section(metrics),
        "## Figures (reports/figures/)", "", *figure_lines, "",
    ])
    with atomic_path(SUMMARY) as tmp:
        tmp.write_text(page)
    log.info("wrote %s and %d figures from %d metrics files", SUMMARY,
             sum(1 for line in figure_lines if report.NOT_RUN not in line), len(metrics))


if __name__ == "__main__":
    main()
