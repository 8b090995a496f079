"""DVC stage `synthesize`: synthetic MIMIC-IV tables with planted risk -> data/raw/synthetic/.

Reads params `synthetic.n_patients`, `synthetic.seed` and `cohort.observation_hours` (the
planted rules look at the same window the cohort uses).
"""
import logging
import time

from ehrseq import paths
from ehrseq.io import setup_logging, write_json
from ehrseq.params import load_params
from ehrseq.sources.synthetic import generate

log = logging.getLogger("ehrseq.stages.synthesize")

OUT_DIR = paths.SYNTHETIC_RAW
METRICS = paths.metrics_json("synthesize")


def main() -> None:
    setup_logging()
    params = load_params("synthetic", "cohort")
    synthetic = params["synthetic"]
    start = time.time()
    summary = generate(OUT_DIR, n_patients=synthetic["n_patients"], seed=synthetic["seed"],
                       observation_hours=params["cohort"]["observation_hours"])
    summary["seconds"] = round(time.time() - start, 2)
    write_json(METRICS, summary)
    log.info(
        "wrote %s: %d patients, %d admissions, %d ICU stays (%d last the window), %d in-hospital deaths; "
        "mortality after the cutoff %.3f, oracle AUROC %.3f; %d planted events; defects %s",
        OUT_DIR, summary["patients"], summary["admissions"], summary["icu_stays"], summary["eligible_stays"],
        summary["in_hospital_deaths"], summary["mortality_eligible"], summary["oracle_auroc"],
        summary["planted_events"], summary["defects"],
    )
    log.info("rows per table: %s", summary["rows"])


if __name__ == "__main__":
    main()
