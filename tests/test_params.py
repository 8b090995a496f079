"""Parameter validation: params.yaml is checked against one schema before a stage works.

Each failure mode is planted in a copy of the real params.yaml; the error must name the
key, the value and what is allowed. The committed params.yaml must pass, and the schema,
the registry and the constructors' defaults must agree with it.
"""
from __future__ import annotations

import copy
import dataclasses
import inspect
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ehrseq.model_data import data_inputs
from ehrseq.models import OWN_STAGE_MODELS, REGISTRY, model_class
from ehrseq.params import SCHEMA, ParamsError, check_model_kwargs, load_params, validate_params

REPO = Path(__file__).resolve().parents[1]
PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())


def planted(edit) -> dict:
    params = copy.deepcopy(PARAMS)
    edit(params)
    return params


def problems_of(params: dict, *sections: str) -> str:
    with pytest.raises(ParamsError) as err:
        validate_params(params, "params.yaml", sections)
    return str(err.value)


def test_the_committed_params_are_valid():
    assert validate_params(copy.deepcopy(PARAMS), "params.yaml", tuple(PARAMS)) == PARAMS
    for model, section in PARAMS["train"].items():
        if model not in OWN_STAGE_MODELS:  # their stages check their own sections
            check_model_kwargs(model, section["model"], data_inputs(model))


def test_unknown_key_names_key_value_and_the_allowed_keys():
    message = problems_of(planted(lambda p: p["train"]["lstm"].update(lrr=0.1)))
    assert "train.lstm.lrr = 0.1: unknown key; allowed here: seed, batch_size," in message
    assert "weight_decay" in message  # the key the user probably meant is listed


def test_unknown_key_in_a_nested_section_and_at_the_top():
    message = problems_of(planted(lambda p: (p["train"]["gpt2"]["finetune"].update(epoch=3), p.update(trian={}))))
    assert "train.gpt2.finetune.epoch = 3: unknown key; allowed here: epochs, patience" in message
    assert "trian = {}: unknown key" in message
    assert "2 invalid parameter(s)" in message  # every problem at once, not the first only


def test_an_unknown_model_section_is_refused():
    message = problems_of(planted(lambda p: p["train"].update(lstmm=p["train"]["lstm"])))
    assert "train.lstmm = {" in message and "unknown key; allowed here: lstm, transformer, gpt2, clinical_lf" in message


@pytest.mark.parametrize("edit, expected", [
    # YAML 1.1 reads 1e-3 (no dot) as a string
    (lambda p: p["train"]["lstm"].update(lr="1e-3"), "train.lstm.lr = '1e-3' (str): expected a number >= 0"),
    (lambda p: p["train"]["lstm"]["finetune"].update(epochs=2.5),
     "train.lstm.finetune.epochs = 2.5 (float): expected an integer >= 0"),
    (lambda p: p["cohort"].update(min_age=True), "cohort.min_age = True (bool): expected a number >= 0"),
    (lambda p: p["vocab"].update(icd_grouping="no"), "vocab.icd_grouping = 'no' (str): expected a bool"),
    (lambda p: p["train"]["lstm"].update(imbalance="weights"),
     "train.lstm.imbalance = 'weights': expected one of 'pos_weight', 'sampler', 'none'"),
    (lambda p: p["data"].update(source="mimic5"),
     "data.source = 'mimic5': expected one of 'synthetic', 'mimic4', 'mimic3'"),
    (lambda p: p["train"]["lstm"]["finetune"].update(patience=0),
     "train.lstm.finetune.patience = 0: expected an integer >= 1 or null"),
    (lambda p: p["explain"].update(precision_k=[1, "5"]),
     "explain.precision_k[1] = '5' (str): expected an integer >= 1"),
    (lambda p: p["embed"].pop("pooling"), "embed.pooling: missing"),
])
def test_wrong_type_or_value_names_key_value_and_what_is_allowed(edit, expected):
    assert expected in problems_of(planted(edit))


def test_split_fractions_must_sum_to_one():
    # cohort.split.train=0.9 with 0.15/0.15 was silently renormalised to 75/12.5/12.5 %
    message = problems_of(planted(lambda p: p["cohort"]["split"].update(train=0.9)))
    assert "cohort.split = {'train': 0.9, 'val': 0.15, 'test': 0.15}: fractions must sum to 1" in message
    assert "train 0.9 + val 0.15 + test 0.15 = 1.2" in message
    assert "0.15 + 0.15" not in problems_of(planted(lambda p: p["cohort"]["split"].update(train=-0.3)))  # range first
    validate_params(planted(lambda p: p["cohort"].update(split={"train": 0.8, "val": 0.1, "test": 0.1})))


def test_a_stage_names_the_sections_it_reads():
    params = planted(lambda p: p["train"].pop("gpt2"))
    validate_params(params, "params.yaml", ("train.lstm",))
    assert "train.gpt2: missing (this stage reads it)" in problems_of(params, "train.gpt2")


def test_model_kwargs_against_the_constructor():
    kwargs = dict(PARAMS["train"]["lstm"]["model"], hidden_sise=32)
    with pytest.raises(ParamsError, match=r"lstm.model.hidden_sise = 32: unknown key; allowed here: embedding_dim"):
        check_model_kwargs("lstm", kwargs, data_inputs("lstm"))
    kwargs = {k: v for k, v in PARAMS["train"]["clinical_lf"]["model"].items() if k != "d_model"}
    with pytest.raises(ParamsError, match=r"train.clinical_lf.model.d_model: missing"):
        check_model_kwargs("clinical_lf", kwargs, data_inputs("clinical_lf"))
    with pytest.raises(ParamsError, match=r"train.lstm.model.vocab_size = 9: unknown key"):  # the data fixes it
        check_model_kwargs("lstm", {**PARAMS["train"]["lstm"]["model"], "vocab_size": 9}, data_inputs("lstm"))


def test_the_train_stage_refuses_a_typo_before_reading_any_data(tmp_path):
    """`dvc exp run -S +train.lstm.lrr=0.1` as the stage sees it: no data exists, yet the
    error is about the parameter, not a missing file."""
    params = planted(lambda p: p["train"]["lstm"].update(lrr=0.1))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    done = subprocess.run([sys.executable, "-P", str(REPO / "stages" / "train.py"), "lstm"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "train.lstm.lrr = 0.1: unknown key" in done.stderr
    assert "No such file" not in done.stderr


def test_load_params_reads_and_validates_a_file(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text((REPO / "params.yaml").read_text().replace("min_age: 18", "min_age: 18\n  min_ag: 18"))
    with pytest.raises(ParamsError, match=r"cohort.min_ag = 18: unknown key"):
        load_params("cohort", path=path)


# ------------------------------------------------ one home for defaults and model names


def test_schema_lists_every_registered_model():
    assert set(SCHEMA.fields["train"].spec.fields) == set(REGISTRY) | set(OWN_STAGE_MODELS)


@pytest.mark.parametrize("model", sorted(REGISTRY))
def test_constructor_defaults_equal_params_yaml(model):
    """params.yaml is where defaults live: a constructor default that disagrees with it
    would silently change a model built without params (tests, notebooks)."""
    signature = inspect.signature(model_class(model).__init__)
    for name, parameter in signature.parameters.items():
        if parameter.default is not inspect.Parameter.empty:
            assert PARAMS["train"][model]["model"][name] == parameter.default, f"{model}.{name}"


def test_explain_config_has_no_defaults_of_its_own():
    from ehrseq.explain.run import ExplainConfig

    fields = dataclasses.fields(ExplainConfig)
    assert all(f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING for f in fields)
    assert {f.name for f in fields} == set(PARAMS["explain"])


def _defaults(function) -> dict:
    return {name: p.default for name, p in inspect.signature(function).parameters.items()
            if p.default is not inspect.Parameter.empty}


def test_library_defaults_equal_params_yaml():
    """Library functions keep a few defaults for callers outside the pipeline (tests,
    notebooks); each must be params.yaml's value, or a notebook silently runs another setup."""
    from ehrseq.embeddings import TextEncoder
    from ehrseq.sources.synthetic import generate
    from ehrseq.vocab import fit_vocab

    encoder = _defaults(TextEncoder.__init__)
    assert {k: encoder[k] for k in ("pooling", "max_length", "batch_size")} == {
        k: PARAMS["embed"][k] for k in ("pooling", "max_length", "batch_size")}
    vocab = _defaults(fit_vocab)
    assert list(vocab.pop("binned_types")) == PARAMS["vocab"]["binned_event_types"]
    assert vocab == {k: PARAMS["vocab"][k] for k in vocab}
    assert _defaults(generate)["observation_hours"] == PARAMS["cohort"]["observation_hours"]


def test_schema_choices_are_the_ones_the_code_accepts():
    from ehrseq.embeddings.encoder import POOLINGS
    from ehrseq.sources.extract import SOURCES
    from ehrseq.tasks import IMBALANCE_STRATEGIES

    sections = SCHEMA.fields
    assert set(sections["data"].spec.fields["source"].options) == set(SOURCES)
    assert set(sections["embed"].spec.fields["pooling"].options) == set(POOLINGS)
    for model, section in sections["train"].spec.fields.items():
        if "imbalance" in section.spec.fields:  # mortality models (prompt_bart has no labels)
            assert set(section.spec.fields["imbalance"].options) == set(IMBALANCE_STRATEGIES), model


def test_nproc_and_compile_are_checked_and_may_be_absent():
    message = problems_of(planted(lambda p: p["train"]["gpt2"].update(nproc=0, compile="yes")))
    assert "train.gpt2.nproc = 0: expected an integer >= 1" in message
    assert "train.gpt2.compile = 'yes' (str): expected a bool" in message
    absent = planted(lambda p: [p["train"]["lstm"].pop(k) for k in ("nproc", "compile")])
    assert validate_params(absent, "params.yaml", ("train.lstm",)) is absent  # the stage reads 1 and false
    assert all(PARAMS["train"][m]["nproc"] == 1 for m in ("lstm", "transformer", "gpt2", "clinical_lf",
                                                           "survival_lstm", "prompt_bart"))
