"""DVC stage `extract`: source tables -> data/interim/{events,cohort}.parquet (+ truth)."""
import json
import logging
import time

from ehrseq import paths
from ehrseq.io import setup_logging, write_json
from ehrseq.params import load_params
from ehrseq.sources.extract import extract
from ehrseq.sources.truth import export_truth

log = logging.getLogger("ehrseq.stages.extract")


def main() -> None:
    setup_logging()
    params = load_params("data", "cohort")
    data, cohort = params["data"], params["cohort"]
    start = time.time()
    metrics = extract(
        source=data["source"],
        path=data["path"],
        events_path=paths.EVENTS,
        cohort_path=paths.COHORT,
        diagnoses_path=paths.DIAGNOSES,
        observation_hours=cohort["observation_hours"],
        min_age=cohort["min_age"],
        split_fractions=cohort["split"],
        seed=cohort["seed"],
        threads=data.get("threads"),
        memory_limit=data.get("memory_limit"),
    )
    metrics["truth"] = export_truth(data["source"], data["path"], paths.EVENTS, paths.TRUTH)
    metrics["seconds"] = round(time.time() - start, 2)
    write_json(paths.metrics_json("extract"), metrics)
    log.info(
        "wrote %d events (%d after the cutoff) for %d stays; dropped %d events: %s; excluded stays: %s",
        metrics["events"]["kept_total"], metrics["events"]["after_cutoff"], metrics["stays"]["kept"],
        metrics["events"]["dropped_total"],
        json.dumps({r: sum(v.values()) for r, v in metrics["events"]["dropped"].items()}),
        json.dumps(metrics["stays"]["excluded"]),
    )
    ev = metrics["events"]
    log.info(
        "before the cutoff: values withheld until known %s; date-only events moved to the cutoff %s; "
        "ingredient rows per charting system %s; lab result time: %s",
        json.dumps(ev["values_withheld_at_cutoff"]), json.dumps(ev["date_only_moved_after_cutoff"]),
        json.dumps(ev["ingredient_rows_by_system"]), ev["lab_result_time"],
    )
    if metrics["missing_tables"]:
        log.warning("missing optional tables (no events of that kind): %s", ", ".join(metrics["missing_tables"]))


if __name__ == "__main__":
    main()
