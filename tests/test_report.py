"""The report stage, the logistic-regression baseline, the smoke comparison and CI files."""
from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from ehrseq import report
from ehrseq.baseline import bag_of_codes, fit_logreg
from ehrseq.metrics import auroc

ROOT = Path(__file__).resolve().parents[1]


def test_fmt_interval_number_undefined_and_not_run():
    assert report.fmt({"value": 0.8044, "ci_low": 0.7474, "ci_high": 0.8543}) == "0.804 [0.747, 0.854]"
    assert report.fmt({"value": None, "reason": "no deaths in test"}) == "undefined (no deaths in test)"
    assert report.fmt(None) == "not run"
    assert report.fmt(5148) == "5,148"
    assert report.dig({"a": {"b": 1}}, "a.b") == 1 and report.dig({"a": {}}, "a.b") is None


def test_mortality_section_marks_missing_models_not_run_and_keeps_oracle():
    metrics = {"lstm": {"stays": 10, "deaths": 2, "resample_unit": "patient",
                        "auroc": {"value": 0.8, "ci_low": 0.7, "ci_high": 0.9},
                        "oracle_auroc": {"value": 0.86, "ci_low": 0.8, "ci_high": 0.9}}}
    text, rows = report.mortality_section(metrics, ["lstm", "gpt2"])
    assert rows[0][:2] == ["lstm", "0.800 [0.700, 0.900]"]
    assert rows[1] == ["gpt2"] + ["not run"] * 5
    assert rows[2][:2] == ["oracle (true risk)", "0.860 [0.800, 0.900]"]
    assert "resample patient" in text


def _run_stage(workdir: Path) -> str:
    env = {"PYTHONPATH": str(ROOT / "src"), "PATH": str(Path(sys.executable).parent)}
    subprocess.run([sys.executable, "-P", str(ROOT / "stages" / "report.py")], cwd=workdir, env=env, check=True,
                   capture_output=True)
    return (workdir / "reports" / "summary.md").read_text()


def test_report_stage_with_nothing_run_says_not_run(tmp_path):
    summary = _run_stage(tmp_path)
    assert "## Data\n\nnot run." in summary
    assert summary.count("not run") > 10
    report.extract_headline(summary)  # the block exists even when empty


def test_report_stage_draws_figures_from_plot_tables(tmp_path):
    metrics_dir, plots = tmp_path / "reports" / "metrics", tmp_path / "reports" / "plots" / "lstm"
    metrics_dir.mkdir(parents=True)
    plots.mkdir(parents=True)
    (metrics_dir / "lstm.json").write_text(json.dumps(
        {"stays": 4, "deaths": 2, "auroc": {"value": 0.75, "ci_low": 0.5, "ci_high": 1.0}, "seconds": 12.0}))
    pd.DataFrame({"fpr": [0, 0.5, 1], "tpr": [0, 1, 1]}).to_csv(plots / "roc.csv", index=False)
    pd.DataFrame({"mean_predicted": [0.1, 0.6], "observed_rate": [0.0, 1.0]}).to_csv(plots / "calibration.csv",
                                                                                     index=False)
    summary = _run_stage(tmp_path)
    figures = tmp_path / "reports" / "figures"
    assert (figures / "roc.png").read_bytes()[:4] == b"\x89PNG"
    assert (figures / "calibration.png").exists() and not (figures / "deletion.png").exists()
    assert "0.750 [0.500, 1.000]" in summary and "| lstm | 12 |" in summary


def test_cost_section_lists_every_stage_with_seconds_and_their_parts():
    metrics = {
        "extract": {"seconds": 5.2},
        "train_lstm": {"stage": "train@lstm", "seconds": 130.4, "nproc": 2,
                       "seconds_by_phase": {"load": 3.1, "pretrain": 40.0, "finetune": 87.0},
                       "epochs_by_phase": {"pretrain": 2, "finetune": 9}},
        "explain_lstm": {"seconds": {"explain": 12.0, "total": 40.2}},
        "lstm": {"auroc": 0.8},  # a file without seconds (an older run) is not a row
    }
    section = report.cost_section(metrics)
    assert "| train@lstm | 130 | load 3, pretrain 40 (2 epochs), finetune 87 (9 epochs) (2 processes) |" in section
    assert "| extract | 5 |  |" in section and "| explain_lstm | 40 | explain 12 |" in section
    assert "| total | 175 |  |" in section and "lstm | 0" not in section  # 5 + 130 + 40, as shown


def test_readme_results_are_the_committed_summary_headline():
    summary = ROOT / "reports" / "summary.md"
    if not summary.exists():
        pytest.fail("reports/summary.md is not committed: run `dvc repro report` and commit it")
    readme = (ROOT / "README.md").read_text()
    assert report.extract_headline(summary.read_text()) in readme


def test_bag_of_codes_counts_each_token_per_stay():
    ids = pd.Series([np.array([2, 5, 5, 3]), np.array([2, 7, 3])])
    x = bag_of_codes(ids, vocab_size=8).toarray()
    assert x.shape == (2, 8)
    assert x[0, 5] == pytest.approx(np.log1p(2)) and x[0, 7] == 0 and x[1, 7] == pytest.approx(np.log1p(1))


def test_logreg_finds_a_planted_token_and_picks_c_on_validation():
    rng = np.random.default_rng(0)

    def split(n):
        y = rng.integers(0, 2, n)
        ids = pd.Series([np.concatenate([rng.integers(5, 40, 10), [4] if label and rng.random() < 0.8 else []])
                         for label in y])
        return bag_of_codes(ids, 40), y

    (xt, yt), (xv, yv), (xs, ys) = split(400), split(200), split(200)
    model, tuning = fit_logreg(xt, yt, xv, yv, [0.01, 1.0], seed=0)
    assert set(tuning["val_auroc_by_C"]) == {"0.01", "1.0"}
    assert tuning["val_auroc_by_C"][str(tuning["chosen_C"])] == max(tuning["val_auroc_by_C"].values())
    assert auroc(ys, model.predict_proba(xs)[:, 1]) > 0.85


def _script(name: str):
    """A module of scripts/ (not a package), imported by name."""
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.pop(0)


def test_smoke_compare_counts_exact_floats_within_tolerance(tmp_path, capsys):
    smoke = _script("smoke")
    base, run = tmp_path / "base", tmp_path / "run"
    base.mkdir()
    run.mkdir()
    (base / "lstm.json").write_text(json.dumps({"stays": 60, "auroc": {"value": 0.70}, "seconds": 3.0}))
    (run / "lstm.json").write_text(json.dumps({"stays": 60, "auroc": {"value": 0.71}, "seconds": 9.0}))
    assert smoke.compare(str(base), str(run)) == 0
    (run / "lstm.json").write_text(json.dumps({"stays": 61, "auroc": {"value": 0.71}, "seconds": 3.0}))
    assert smoke.compare(str(base), str(run)) == 1
    (run / "lstm.json").write_text(json.dumps({"stays": 60, "auroc": {"value": 0.60}, "seconds": 3.0}))
    assert smoke.compare(str(base), str(run)) == 1
    (run / "lstm.json").write_text(json.dumps({"stays": 60, "seconds": 3.0}))
    assert smoke.compare(str(base), str(run)) == 1
    assert "auroc.value missing from the run" in capsys.readouterr().out


def test_smoke_overrides_name_existing_params_only(tmp_path):
    smoke = _script("smoke")
    params = tmp_path / "params.yaml"
    params.write_text((ROOT / "params.yaml").read_text())
    smoke.apply_params(str(ROOT / "scripts" / "smoke_params.yaml"), str(params))
    merged = yaml.safe_load(params.read_text())
    assert merged["synthetic"]["n_patients"] == 300 and merged["train"]["lstm"]["finetune"]["epochs"] == 1
    assert merged["train"]["lstm"]["lr"] == yaml.safe_load((ROOT / "params.yaml").read_text())["train"]["lstm"]["lr"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {lstm: {lrr: 0.1}}\n")
    with pytest.raises(SystemExit, match="train.lstm.lrr is not a key"):
        smoke.apply_params(str(bad), str(params))


@pytest.mark.parametrize("profile", sorted(p.name for p in (ROOT / "benchmarks").glob("*.yaml")))
def test_benchmark_profiles_name_existing_params_only(tmp_path, profile):
    """benchmarks/default_run.py --params PROFILE fails at its first unknown key, after the tree is
    copied: a renamed param must not leave a profile that README quotes unrunnable."""
    params = tmp_path / "params.yaml"
    params.write_text((ROOT / "params.yaml").read_text())
    _script("smoke").apply_params(str(ROOT / "benchmarks" / profile), str(params))
    assert yaml.safe_load(params.read_text()) != yaml.safe_load((ROOT / "params.yaml").read_text())


def test_mortality_as_committed_profile_leaves_the_mortality_models_alone():
    """Its claim (README, *The default run*): every mortality model trains and is evaluated as
    committed, so its test AUROCs and intervals are the committed ones. That holds only while it
    sets nothing those stages read: their train sections, evaluate, and the data before them."""
    profile = yaml.safe_load((ROOT / "benchmarks" / "mortality_as_committed.yaml").read_text())
    upstream = {"synthetic", "data", "cohort", "vocab", "tokenize", "embed", "evaluate", "logreg"}
    assert not upstream & set(profile)
    assert not {"lstm", "transformer", "gpt2", "clinical_lf"} & set(profile.get("train", {}))


def test_ci_runs_tests_then_smoke_and_the_workflow_calls_the_same_script():
    ci = (ROOT / ".ci" / "run").read_text()
    assert ci.index("scripts/test.sh") < ci.index("scripts/smoke.sh")
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "smoke.yaml").read_text())
    steps = workflow["jobs"]["smoke"]["steps"]
    assert any(".ci/run" in step.get("run", "") for step in steps)
    assert any("dvc metrics diff main --md" in step.get("run", "") for step in steps)


def test_exp_wrapper_sees_outputs_a_fresh_clone_lacks(tmp_path):
    missing_outputs = _script("lock_cache").missing_outputs
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": {
        "synthesize": {"outs": [{"path": "data/raw", "md5": "35a5c711ef7d5fe1c3d8d66e730d89fd.dir"},
                                {"path": "reports/metrics/synthesize.json",
                                 "md5": "a5704ccffa50a33a6a5ae715d76b28b9"}]},
    }}))
    (tmp_path / "reports" / "metrics").mkdir(parents=True)
    (tmp_path / "reports" / "metrics" / "synthesize.json").write_text("{}")  # in git, as cache: false metrics are
    assert missing_outputs(tmp_path) == ["data/raw"]
    cached = tmp_path / ".dvc" / "cache" / "files" / "md5" / "35"
    cached.mkdir(parents=True)
    (cached / "a5c711ef7d5fe1c3d8d66e730d89fd.dir").write_text("[]")
    assert missing_outputs(tmp_path) == []


def test_shuffled_label_cell_shows_the_seed_mean_each_seed_and_the_verdict():
    from ehrseq.report import NOT_RUN, shuffled_label_cell

    label = {"mean": 0.5419, "test_auroc_per_seed": [0.4719, 0.6418, 0.5123], "passes": True}
    assert shuffled_label_cell(label) == "0.542 [0.472, 0.642, 0.512] pass"
    assert shuffled_label_cell({**label, "passes": False}).endswith("FAIL")
    assert shuffled_label_cell({"test_auroc": {"value": 0.6}}) == NOT_RUN  # an old file without the seeds' verdict


def test_seed_spread_reproducibility_check_ignores_only_the_wall_seconds():
    """Retraining the committed seed must give its metrics file again. The check compared
    whole files, seconds included, so it said DIFFERS for every model of every run; it now
    compares what the smoke comparison compares (smoke.comparable)."""
    without_seconds = _script("seed_spread").comparable
    committed = {"auroc": {"value": 0.70, "ci_low": 0.6}, "stays": 772, "seconds": 3.0}
    assert without_seconds({**committed, "seconds": 9.0}) == without_seconds(committed)
    assert without_seconds({**committed, "auroc": {"value": 0.70, "ci_low": 0.61}}) != without_seconds(committed)
    assert without_seconds({**committed, "stays": 771}) != without_seconds(committed)
