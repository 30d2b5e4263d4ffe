import json
import re

import numpy as np
import pandas as pd
import pytest
from datasets import ClassLabel, Dataset

from sentiment.config import ConfigError, DataConfig
from sentiment.data import (
    DataError,
    EncodedSplit,
    SpecialTokens,
    check_folds,
    chunk_windows,
    clean_text,
    cross_validation_fold,
    encode_texts,
    fit_to_length,
    imbalance,
    load_splits,
    loss_class_weights,
    resolve_source,
    stratified_split,
    truncate_ids,
)
from sentiment.model import load_tokenizer
from tests.conftest import imdb_dir

LABELS = ["negative", "positive"]
IDS = np.arange(10)


@pytest.mark.parametrize(
    "strategy, budget, expected",
    [
        ("head", 4, [0, 1, 2, 3]),
        ("tail", 4, [6, 7, 8, 9]),
        ("head_tail", 4, [0, 7, 8, 9]),  # round(4 * 0.25) = 1 from the head, 3 from the tail
        ("head_tail", 8, [0, 1, 4, 5, 6, 7, 8, 9]),
        ("head", 20, list(range(10))),  # short enough: untouched
    ],
)
def test_truncation_strategies(strategy, budget, expected):
    assert truncate_ids(IDS, budget, strategy).tolist() == expected


def test_head_tail_matches_sun_et_al_at_512():
    out = truncate_ids(np.arange(1000), 510, "head_tail")
    assert out[:128].tolist() == list(range(128)) and out[128:].tolist() == list(range(618, 1000))


def test_unknown_strategy():
    with pytest.raises(ValueError, match="middle"):
        truncate_ids(IDS, 4, "middle")


def test_fit_to_length_wraps_specials(tiny_model_dir):
    tok = load_tokenizer(str(tiny_model_dir))
    specials = SpecialTokens.of(tok)
    assert specials.prefix == (tok.cls_token_id,) and specials.suffix == (tok.sep_token_id,)
    out = fit_to_length(IDS + 1000, specials, 6, "tail", 0.25)
    assert out == [tok.cls_token_id, 1006, 1007, 1008, 1009, tok.sep_token_id]


SPECIALS = SpecialTokens((101,), (102,))


@pytest.mark.parametrize(
    "length, stride, starts",
    [
        (4, None, [0]),  # within the 4-token budget: one window
        (5, None, [0, 1]),  # one token over: the last window moves back to end with the review
        (10, None, [0, 4, 6]),  # default stride: the whole budget, overlapping only at the end
        (10, 2, [0, 2, 4, 6]),
        (10, 1, [0, 1, 2, 3, 4, 5, 6]),
    ],
)
def test_chunk_windows_cover_every_token_in_full_windows(length, stride, starts):
    ids = np.arange(length) + 1000
    windows = chunk_windows(ids, SPECIALS, 6, stride)
    assert windows == [[101, *range(1000 + s, 1000 + min(s + 4, length)), 102] for s in starts]
    assert set().union(*map(set, windows)) - {101, 102} == set(ids.tolist())


def test_a_review_within_the_budget_is_the_truncated_window():
    ids = np.arange(3) + 1000
    assert chunk_windows(ids, SPECIALS, 6) == [fit_to_length(ids, SPECIALS, 6, "head_tail", 0.25)]


@pytest.mark.parametrize("stride", [0, 5])
def test_a_stride_outside_the_window_is_refused(stride):
    with pytest.raises(ValueError, match=f"data.chunk_stride={stride} must be between 1 and the window's 4 content tokens"):
        chunk_windows(np.arange(10), SPECIALS, 6, stride)


def test_clean_text_strips_html_breaks():
    assert clean_text("Great.<br /><br />Loved it<BR>too ") == "Great.  Loved it too"


def test_encoding_matches_the_tokenizer(tiny_model_dir):
    tok = load_tokenizer(str(tiny_model_dir))
    [ids] = encode_texts(tok, ["A fun<br />movie"])
    assert ids.tolist() == tok("A fun movie", add_special_tokens=False)["input_ids"]


def _cfg(path, **kw):
    return DataConfig(source="auto", path=str(path), **kw)


def test_parquet_folder_splits_are_stratified_and_disjoint(small_imdb):
    splits = load_splits(_cfg(small_imdb, validation_fraction=0.25), LABELS)
    assert len(splits["train"]) == 300 and len(splits["validation"]) == 100 and len(splits["test"]) == 200
    assert sum(splits["validation"]["label"]) == 50  # stratified: half positive
    assert not set(splits["train"]["text"]) & set(splits["validation"]["text"])
    assert all("<br" not in t for t in splits["train"]["text"])


def _labelled(labels):
    ds = Dataset.from_dict({"text": [f"review {i}" for i in range(len(labels))], "label": labels})
    return ds.cast_column("label", ClassLabel(names=LABELS))


@pytest.mark.parametrize("n_first, n_second, seed", [(30, 10, 0), (7, 33, 42), (20, 20, 3)])
def test_stratified_split_takes_the_rows_train_test_split_would(n_first, n_second, seed):
    ds = _labelled([int(i % 3 == 0) for i in range(40)]).select(range(39, -1, -1))  # uneven classes, an index map
    first, second = stratified_split(ds, n_first, n_second, seed)
    ref = ds.train_test_split(train_size=n_first, test_size=n_second, stratify_by_column="label", seed=seed)
    assert first["text"][:] == ref["train"]["text"][:] and second["text"][:] == ref["test"]["text"][:]
    assert not set(first["text"][:]) & set(second["text"][:])


def test_stratified_split_of_a_label_with_one_review_names_the_counts():
    with pytest.raises(DataError, match=r"cannot split 10 reviews into 5 and 5 stratified by label "
                                        r"\(negative 9, positive 1\): a label has fewer than 2"):
        stratified_split(_labelled([0] * 9 + [1]), 5, 5, seed=0)


def test_caps_apply_after_split(small_imdb):
    splits = load_splits(_cfg(small_imdb, max_train_samples=50, max_val_samples=10, max_test_samples=20), LABELS)
    assert [len(splits[s]) for s in ("train", "validation", "test")] == [50, 10, 20]


def test_csv_with_string_labels_like_the_seed_tutorials(tmp_path):
    rows = [{"review": f"review number {i}", "sentiment": "positive" if i % 2 else "negative"} for i in range(50)]
    pd.DataFrame(rows).to_csv(tmp_path / "reviews.csv", index=False)
    splits = load_splits(_cfg(tmp_path / "reviews.csv", text_column="review", label_column="sentiment"), LABELS)
    assert len(splits["test"]) == 10  # a single file: 20% becomes the test split
    ex = splits["train"][0]
    assert ex["label"] == int(ex["text"].split()[-1]) % 2


def test_jsonl_folder(tmp_path):
    for split in ("train", "test"):
        with open(tmp_path / f"{split}.jsonl", "w") as f:
            for i in range(20):
                f.write(json.dumps({"text": f"{split} text {i}", "label": i % 2}) + "\n")
    splits = load_splits(_cfg(tmp_path), LABELS)
    assert len(splits["test"]) == 20 and splits["test"][0]["text"].startswith("test")


def test_aclimdb_folder(tmp_path):
    for split in ("train", "test"):
        for name in ("pos", "neg"):
            (tmp_path / split / name).mkdir(parents=True)
            for i in range(6):
                (tmp_path / split / name / f"{i}_{8 if name == 'pos' else 2}.txt").write_text(f"{name} review {i}<br />")
    assert resolve_source(_cfg(tmp_path))[0] == "aclimdb"
    splits = load_splits(_cfg(tmp_path, validation_fraction=0.5), LABELS)
    test = splits["test"]
    assert len(test) == 12 and all((t.startswith("pos")) == bool(y) for t, y in zip(test["text"], test["label"]))


def test_missing_folder_names_the_setting(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        resolve_source(_cfg(tmp_path / "nope"))


def test_env_var_points_at_data(small_imdb, monkeypatch):
    monkeypatch.setenv("IMDB_DATA_DIR", str(small_imdb))
    assert resolve_source(DataConfig()) == ("parquet", str(small_imdb))


def test_unreachable_hub_says_how_to_use_local_data(monkeypatch):
    monkeypatch.delenv("IMDB_DATA_DIR", raising=False)
    with pytest.raises(DataError, match="IMDB_DATA_DIR"):
        load_splits(DataConfig(source="hub", hub_id="stanfordnlp/imdb"), LABELS)


def _write(tmp_path, train_rows):
    pd.DataFrame(train_rows).to_parquet(tmp_path / "train.parquet")
    pd.DataFrame({"text": ["fine", "bad"], "label": [1, 0]}).to_parquet(tmp_path / "test.parquet")
    return tmp_path


def test_wrong_column_lists_the_columns(tmp_path):
    _write(tmp_path, {"review": ["a", "b"], "label": [0, 1]})
    with pytest.raises(DataError, match=r"no column 'text' \(data.text_column\); columns are \['review', 'label'\]"):
        load_splits(_cfg(tmp_path), LABELS)


def test_labels_outside_the_label_set(tmp_path):
    _write(tmp_path, {"text": ["a", "b", "c"], "label": [0, 1, 2]})
    with pytest.raises(DataError, match="row 2: label 2"):
        load_splits(_cfg(tmp_path), LABELS)
    _write(tmp_path, {"text": ["a", "b"], "label": ["negative", "meh"]})
    with pytest.raises(DataError, match="'meh'"):
        load_splits(_cfg(tmp_path), LABELS)


def test_empty_texts_are_an_error(tmp_path):
    _write(tmp_path, {"text": ["ok", "  ", "<br />", "fine"], "label": [0, 1, 0, 1]})
    with pytest.raises(DataError, match=r"2 empty texts .* \(rows \[1, 2\]\)"):
        load_splits(_cfg(tmp_path), LABELS)


@pytest.mark.skipif(imdb_dir() is None, reason="set IMDB_DATA_DIR to the full IMDB parquet folder")
def test_full_imdb_loads_with_documented_sizes():
    splits = load_splits(DataConfig(path=str(imdb_dir()), validation_fraction=0.1), LABELS)
    assert len(splits["train"]) == 22_500 and len(splits["validation"]) == 2_500 and len(splits["test"]) == 25_000
    assert sum(splits["test"]["label"]) == 12_500


@pytest.mark.parametrize("body, problem", [
    ('text,label\n"fine",positive\n"one field too many",negative,extra\n', "Expected 2 fields in line 3, saw 3"),
    ('text,label\n"fine",positive\n"no closing quote,negative\n', "EOF inside string"),
    ("", "the file is empty"),
])
def test_a_malformed_csv_is_a_data_error_naming_the_file(tmp_path, body, problem):
    (tmp_path / "reviews.csv").write_text(body)
    with pytest.raises(DataError, match=f"{tmp_path / 'reviews.csv'} cannot be read as csv: .*{problem}"):
        load_splits(_cfg(tmp_path / "reviews.csv"), LABELS)


@pytest.mark.parametrize("lines, problem", [
    (['{"text": "a", "label": 0}', '{"text": "b", "label": 1}', "not json"], "line 3 column 1: Expecting value"),
    (['{"text": "a", "label": 0}', '{"text": "b", "label": 1'], "line 2 column 25: Expecting ',' delimiter"),
    (['{"text": "a", "label": 0},'], "line 1 column 26: Extra data"),
])
def test_a_malformed_jsonl_is_a_data_error_naming_the_file_and_line(tmp_path, lines, problem):
    good = "".join(json.dumps({"text": f"text {i}", "label": i % 2}) + "\n" for i in range(4))
    (tmp_path / "train.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "test.jsonl").write_text(good)
    with pytest.raises(DataError, match=f"{tmp_path / 'train.jsonl'} cannot be read as json: {problem}"):
        load_splits(_cfg(tmp_path), LABELS)


def test_an_imbalanced_training_split_is_named_with_its_counts():
    names = ["low", "mid", "high"]
    assert imbalance(np.array([0] * 50 + [1] * 20 + [2] * 30), names) == (
        "the training split is imbalanced (low 50 (50%), mid 20 (20%), high 30 (30%))")
    assert imbalance(np.array([0] * 14 + [1] * 10 + [2] * 12), names) is None  # 1.4x: within 1.5x
    assert imbalance(np.array([0] * 10 + [1] * 10), names) is not None  # a class with no example


def test_class_weights_auto_weighs_only_an_imbalanced_split():
    skewed, even = np.array([0, 0, 0, 1]), np.array([0, 1, 0, 1])
    assert loss_class_weights("balanced", skewed, 2) == pytest.approx([4 / 6, 2.0])  # n / (k * count)
    assert loss_class_weights("auto", skewed, 2) == pytest.approx([4 / 6, 2.0])
    assert loss_class_weights("auto", even, 2) is None
    assert loss_class_weights("none", skewed, 2) is None and loss_class_weights(None, skewed, 2) is None
    assert loss_class_weights([1.0, 3.0], even, 2) == [1.0, 3.0]


ATTRIBUTES = ["plot", "acting", "music"]


def _label_sets(n: int) -> list[list[str]]:
    """Every subset of ATTRIBUTES in turn, the empty one included."""
    return [[name for bit, name in enumerate(ATTRIBUTES) if i % 8 >> bit & 1] for i in range(n)]


@pytest.mark.parametrize("fmt", ["parquet", "jsonl", "csv"])
def test_multi_label_files_become_multi_hot_rows(tmp_path, fmt):
    for split, n in (("train", 40), ("test", 16)):
        frame = pd.DataFrame({"text": [f"text {i}" for i in range(n)], "label": _label_sets(n)})
        if fmt == "parquet":
            frame.to_parquet(tmp_path / f"{split}.parquet")
        elif fmt == "jsonl":
            frame.to_json(tmp_path / f"{split}.jsonl", orient="records", lines=True)
        else:  # names separated by data.label_separator, or a JSON list ("[]": none; an empty cell is a missing row)
            frame["label"] = [json.dumps(s) if i % 2 or not s else ";".join(s) for i, s in enumerate(frame["label"])]
            frame.to_csv(tmp_path / f"{split}.csv", index=False)
    cfg = _cfg(tmp_path, validation_fraction=0.25, label_separator=";")
    splits = load_splits(cfg, ATTRIBUTES, multi_label=True)
    assert (len(splits["train"]), len(splits["validation"]), len(splits["test"])) == (30, 10, 16)
    test = np.asarray(splits["test"]["label"])
    assert test.shape == (16, 3) and test.tolist()[:4] == [[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0]]
    seen = {t: tuple(lab) for part in ("train", "validation") for t, lab in zip(splits[part]["text"], splits[part]["label"])}
    assert len(seen) == 40 and seen["text 7"] == (1, 1, 1)  # every row once, its labels with it
    again = load_splits(cfg, ATTRIBUTES, multi_label=True)
    assert again["validation"]["text"] == splits["validation"]["text"]  # seeded


@pytest.mark.parametrize("cell, message", [
    (["plot", "drama"], "train split, row 3: label 'drama' in column 'label' is not one of ['plot', 'acting', 'music']"),
    (None, "train split, row 3: no labels in column 'label'"),
    (7, "train split, row 3: column 'label' holds 7, not a list of labels"),
])
def test_a_bad_multi_label_row_is_named(tmp_path, cell, message):
    labels = _label_sets(10)
    labels[3] = cell
    pd.DataFrame({"text": [f"t {i}" for i in range(10)], "label": pd.Series(labels, dtype=object)}).to_json(
        tmp_path / "train.jsonl", orient="records", lines=True)
    pd.DataFrame({"text": ["t"], "label": [["plot"]]}).to_json(tmp_path / "test.jsonl", orient="records", lines=True)
    with pytest.raises(DataError, match=re.escape(message)):
        load_splits(_cfg(tmp_path), ATTRIBUTES, multi_label=True)


def test_multi_label_imbalance_weighs_each_labels_positives():
    labels = np.array([[1, 0, 1]] * 2 + [[0, 1, 1]] * 2 + [[0, 0, 1]] * 4)  # plot 2/8, acting 2/8, music 8/8
    assert loss_class_weights("balanced", labels, 3) == [3.0, 3.0, 1.0]  # music on every text: nothing to balance
    assert loss_class_weights("auto", labels, 3) == [3.0, 3.0, 1.0]
    assert loss_class_weights("none", labels, 3) is None
    assert imbalance(labels, ATTRIBUTES) == ("the training split has imbalanced labels (texts with each: plot 2 (25%), "
                                             "acting 2 (25%), music 8 (100%))")
    even = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
    assert loss_class_weights("auto", even, 2) is None and imbalance(even, ["a", "b"]) is None


def test_multi_label_folds_partition_the_pool():
    labels = np.array([[i % 2, i % 3 == 0, 1] for i in range(30)], dtype=np.int64)
    pool = EncodedSplit([np.array([i]) for i in range(30)], labels)
    check_folds(labels, 3, ATTRIBUTES)
    with pytest.raises(ConfigError, match="--folds 31 is more than the training pool's 30 texts"):
        check_folds(labels, 31, ATTRIBUTES)
    seen = []
    for k in range(3):
        fold = cross_validation_fold(pool, DataConfig(cv_folds=3, cv_fold=k))
        assert len(fold["validation"]) == 10 and fold["validation"].labels.shape == (10, 3)
        seen += [int(ids[0]) for ids in fold["validation"].ids]
        assert not {int(i[0]) for i in fold["train"].ids} & {int(i[0]) for i in fold["validation"].ids}
    assert sorted(seen) == list(range(30))  # each text validates in exactly one fold
