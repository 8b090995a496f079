"""Time and peak memory of the synthetic generator.

    .venv/bin/python benchmarks/synthesize.py            # 10k and 100k patients
    .venv/bin/python benchmarks/synthesize.py 10000      # one size

Each size runs in a fresh child process so its peak RSS is its own.
"""
import json
import resource
import subprocess
import sys
import tempfile
import time

SIZES = (10_000, 100_000)


def run_one(n_patients: int) -> None:
    from ehrseq.sources.synthetic import generate

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        summary = generate(f"{tmp}/synthetic", n_patients=n_patients, seed=0)
        seconds = time.perf_counter() - start
        du = subprocess.run(["du", "-sb", f"{tmp}/synthetic"], check=True, capture_output=True, text=True)
        size = du.stdout.split()[0]
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    print(json.dumps({
        "n_patients": n_patients, "seconds": round(seconds, 1), "peak_rss_mb": round(peak_mb),
        "output_mb": round(int(size) / 2**20), "icu_stays": summary["icu_stays"],
        "rows": sum(summary["rows"].values()), "mortality_eligible": round(summary["mortality_eligible"], 4),
        "oracle_auroc": round(summary["oracle_auroc"], 4),
        "deaths_within_7_days_share": round(summary["deaths_within_7_days_share"], 4),
        "planted_events": summary["planted_events"], "companion_events": summary["companion_events"],
    }))


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--one":
        run_one(int(sys.argv[2]))
    else:
        for n in [int(a) for a in sys.argv[1:]] or SIZES:
            subprocess.run([sys.executable, __file__, "--one", str(n)], check=True)
