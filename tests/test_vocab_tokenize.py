import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from ehrseq.schema import BOS_ID, EOS_ID, SPECIAL_TOKENS, UNK_ID
from ehrseq.tokenize import patient_sequences, stay_sequences, write_sequences
from ehrseq.vocab import GAP_TOKENS, Vocab, coverage, fit_vocab, gender_token, group_icd


def make_data():
    """Three stays: 1 and 2 in train, 3 in test. Stay 3 has a code never seen in train."""
    rows = []
    for stay, split_codes in ((1, "A"), (2, "A"), (3, "B")):
        for i in range(30):
            value = float(i + 30 * (stay == 3) * 100)
            rows.append(dict(stay_id=stay, hours=float(i), event_type="lab", code="LAB//1", value=value))
        rows.append(dict(stay_id=stay, hours=5.5, event_type="prescription", code=f"NDC//{split_codes}", value=np.nan))
        rows.append(dict(stay_id=stay, hours=60.0, event_type="procedure", code="ITEM//9", value=np.nan))
    events = pd.DataFrame(rows).sort_values(["stay_id", "hours"], kind="stable").reset_index(drop=True)
    events["after_cutoff"] = events["hours"] >= 48
    cohort = pd.DataFrame(dict(
        stay_id=[1, 2, 3], subject_id=[10, 20, 30], age=[71.0, 45.0, 80.0], gender=["F", "M", "F"],
        race=["WHITE", "WHITE", "ASIAN"], mortality=[1, 0, 1], event_hours=[70.0, 100.0, 13.0], event=[1, 0, 1],
        split=["train", "train", "test"],
    ))
    diagnoses = pd.DataFrame(dict(
        subject_id=[10, 10, 10, 20], hadm_id=[1, 1, 2, 3], admittime=pd.to_datetime(
            ["2150-01-01", "2150-01-01", "2150-03-02", "2150-01-01"]),
        age=[70.0, 70.0, 71.0, 45.0], gender=["F", "F", "F", "M"], race=["WHITE"] * 4,
        code=["ICD9//4019", "ICD10//I109", "ICD9//4019", "ICD9//25000"], split=["train"] * 4,
    ))
    return events, cohort, diagnoses


def fit(events, cohort, diagnoses, **kw):
    train_stays = cohort[cohort["split"] == "train"]
    train_events = events[events["stay_id"].isin(train_stays["stay_id"])]
    args = dict(min_frequency=1, value_bins=4, min_values_for_bins=10)
    args.update(kw)
    return fit_vocab(train_events, train_stays, diagnoses, **args)


def test_vocab_is_fitted_on_train_only():
    events, cohort, diagnoses = make_data()
    vocab, stats = fit(events, cohort, diagnoses)
    assert vocab.tokens[: len(SPECIAL_TOKENS)] == list(SPECIAL_TOKENS)
    assert "NDC//A" in vocab.tokens and "NDC//B" not in vocab.tokens  # B occurs only in test
    test_tokens = vocab.event_tokens(events[events["stay_id"] == 3])
    assert (vocab.ids(test_tokens[test_tokens == "NDC//B"]) == UNK_ID).all()
    assert "RACE//ASIAN" not in vocab.tokens and "AGE//80-89" not in vocab.tokens
    cov = coverage(vocab, test_tokens)
    assert cov["unk_rate"] == pytest.approx(1 / len(test_tokens))


def test_value_bins_use_train_quantiles():
    events, cohort, diagnoses = make_data()
    vocab, _ = fit(events, cohort, diagnoses)
    train_values = events.loc[events["stay_id"].isin([1, 2]) & (events["code"] == "LAB//1"), "value"]
    np.testing.assert_allclose(vocab.bin_edges["LAB//1"], np.quantile(train_values, [0.25, 0.5, 0.75]))
    tokens = vocab.event_tokens(events)
    assert tokens[(events["stay_id"] == 1) & (events["value"] == 0)].item() == "LAB//1//Q1"
    assert tokens[(events["stay_id"] == 1) & (events["value"] == 29)].item() == "LAB//1//Q4"
    # test values far above every train value fall in the top train bin, they do not move the edges
    assert set(tokens[(events["stay_id"] == 3) & (events["code"] == "LAB//1")]) >= {"LAB//1//Q4"}


def test_min_frequency_drops_rare_codes():
    events, cohort, diagnoses = make_data()
    vocab, stats = fit(events, cohort, diagnoses, min_frequency=3)
    assert "ICD9//25000" not in vocab.tokens and "ICD9//4019" not in vocab.tokens
    assert stats["dropped_below_min_frequency"] > 0
    assert "ITEM//9" not in vocab.tokens  # seen twice in train


def test_icd_grouping():
    codes = pd.Series(["ICD9//4019", "ICD10//I109", "ICD9//V3000"])
    assert group_icd(codes).tolist() == ["ICD9//401", "ICD10//I10", "ICD9//V30"]


def test_token_to_event_mapping_round_trips_and_excludes_after_cutoff():
    events, cohort, diagnoses = make_data()
    vocab, _ = fit(events, cohort, diagnoses)
    table, stats = stay_sequences(events, cohort, vocab, max_length=512, time_gap_tokens=False)
    event_tokens = vocab.event_tokens(events)
    for row in table.itertuples():
        assert row.input_ids[0] == BOS_ID and row.input_ids[-1] == EOS_ID
        real = row.event_row >= 0
        assert (events.loc[row.event_row[real], "stay_id"] == row.stay_id).all()
        assert not events.loc[row.event_row[real], "after_cutoff"].any()
        np.testing.assert_array_equal(row.input_ids[real], vocab.ids(event_tokens.loc[row.event_row[real]]))
        np.testing.assert_array_equal(row.hours[real], events.loc[row.event_row[real], "hours"].to_numpy())
        assert real.sum() == (~events["after_cutoff"] & (events["stay_id"] == row.stay_id)).sum()
    assert stats["truncated"] == 0


def test_truncation_keeps_most_recent_events():
    events, cohort, diagnoses = make_data()
    vocab, _ = fit(events, cohort, diagnoses)
    table, stats = stay_sequences(events, cohort, vocab, max_length=12, time_gap_tokens=False)
    row = table.iloc[0]
    assert len(row["input_ids"]) == 12 and stats["truncated"] == 3
    kept_hours = row["hours"][row["event_row"] >= 0]
    assert kept_hours.tolist() == [23.0, 24.0, 25.0, 26.0, 27.0, 28.0, 29.0]  # 12 - bos, 3 demo, eos


def test_time_gap_tokens_precede_their_event():
    events, cohort, diagnoses = make_data()
    vocab, _ = fit(events, cohort, diagnoses, time_gap_tokens=True)
    gappy = events[events["stay_id"] == 1].copy()
    gappy.loc[gappy.index[5:], "hours"] += 10.0  # a 10 h gap before the sixth event
    table, _ = stay_sequences(gappy, cohort.iloc[:1], vocab, max_length=512, time_gap_tokens=True)
    ids = table.iloc[0]["input_ids"].tolist()
    gap_id = vocab.tokens.index(GAP_TOKENS[1])  # 6-24 h
    position = ids.index(gap_id)
    assert table.iloc[0]["event_row"][position] == -1
    assert table.iloc[0]["event_row"][position + 1] == gappy.index[5]
    assert ids.count(gap_id) == 1


def test_patient_sequences_group_admissions():
    events, cohort, diagnoses = make_data()
    vocab, _ = fit(events, cohort, diagnoses)
    table, stats = patient_sequences(diagnoses, vocab)
    p10 = table[table["subject_id"] == 10].iloc[0]
    assert [len(v) for v in p10["visits"]] == [2, 1]
    np.testing.assert_allclose(p10["days_since_prev"], [0.0, 60.0])
    assert stats == {"patients": 2, "admissions": 3}


def test_patient_sequences_match_a_per_patient_loop_on_shuffled_rows_with_ties_and_gaps():
    """Oracle: the plain per-patient loop (admissions by time, ties by first appearance,
    a code once per admission where it first appears, days 0 for the first admission and
    where a time is missing), on shuffled rows with equal and missing admission times."""
    rng = np.random.default_rng(0)
    rows, choices = [], pd.to_datetime(["2150-01-01 00:00", "2150-02-01 00:00", "2150-02-01 06:00", "2150-05-01 00:00"])
    for subject in rng.permutation(40) + 100:
        times = rng.choice(choices, size=rng.integers(1, 5))  # equal times in one patient: ties
        for a, t in enumerate(times):
            t = pd.NaT if rng.random() < 0.1 else t
            for code in rng.choice(["ICD9//4019", "ICD9//25000", "ICD10//I109", "ICD9//0389"], size=rng.integers(1, 6)):
                rows.append(dict(subject_id=subject, hadm_id=subject * 10 + a, admittime=t, age=60.0 + a,
                                 gender=rng.choice(["F", "M"]), race=rng.choice(["WHITE", "ASIAN"]), code=code))
    diagnoses = pd.DataFrame(rows).sample(frac=1.0, random_state=1).reset_index(drop=True)
    events, cohort, _ = make_data()
    vocab, _ = fit(events, cohort, diagnoses.assign(split="train"))
    table, stats = patient_sequences(diagnoses, vocab)

    expected = []
    for subject, g in diagnoses.assign(token=vocab.ids(diagnoses["code"])).groupby("subject_id", sort=True):
        adm = g.groupby("hadm_id", sort=False).agg(
            admittime=("admittime", "first"), age=("age", "first"), tokens=("token", lambda t: list(dict.fromkeys(t)))
        ).sort_values("admittime", kind="stable")
        days = adm["admittime"].diff().dt.total_seconds().fillna(0).to_numpy() / 86400.0
        expected.append((subject, vocab.ids(gender_token(g["gender"].iloc[:1]))[0],
                         [list(t) for t in adm["tokens"]], adm["age"].tolist(), days.astype(np.float32).tolist()))
    assert stats == {"patients": 40, "admissions": int(diagnoses["hadm_id"].nunique())}
    assert table["subject_id"].tolist() == [e[0] for e in expected]
    for row, (subject, gender, visits, ages, days) in zip(table.itertuples(), expected):
        assert row.gender == gender, subject
        assert [v.tolist() for v in row.visits] == visits, subject
        assert row.ages.tolist() == ages and row.days_since_prev.tolist() == days, subject


def test_sequences_stream_in_row_groups(tmp_path):
    events, cohort, diagnoses = make_data()
    vocab, _ = fit(events, cohort, diagnoses)
    table, _ = stay_sequences(events, pd.concat([cohort] * 500, ignore_index=True), vocab, 512, False)
    write_sequences(tmp_path / "s.parquet", table)
    batches = list(pq.ParquetFile(tmp_path / "s.parquet").iter_batches(batch_size=256))
    assert sum(b.num_rows for b in batches) == 1500
    assert pq.ParquetFile(tmp_path / "s.parquet").num_row_groups == 2


def test_vocab_round_trips_through_csv(tmp_path):
    events, cohort, diagnoses = make_data()
    vocab, _ = fit(events, cohort, diagnoses)
    vocab.to_frame().to_csv(tmp_path / "v.csv", index=False)
    vocab.edges_frame().to_csv(tmp_path / "e.csv", index=False)
    again = Vocab.from_frames(pd.read_csv(tmp_path / "v.csv", keep_default_na=False), pd.read_csv(tmp_path / "e.csv"),
                              ["lab"], False)
    pd.testing.assert_series_equal(again.event_tokens(events), vocab.event_tokens(events))
    assert again.tokens == vocab.tokens
