"""bench/rating_classes.py: IMDB's ratings as three classes, or two labels per review, written as the
data loader reads them."""

from __future__ import annotations

import pandas as pd
import pytest

from bench.rating_classes import CLASSES, LABELS, main, rating_class, rating_labels
from sentiment.config import DATA_DIR_ENV, DataConfig
from sentiment.data import load_splits


def imdb_with_ratings(tmp_path, monkeypatch) -> None:
    """An IMDB-shaped folder of 40 reviews with every labelled rating, as $IMDB_DATA_DIR."""
    imdb = tmp_path / "imdb"
    imdb.mkdir()
    rows = pd.DataFrame({"text": [f"review {i}" for i in range(40)], "label": 0,
                         "rating": [(1, 3, 7, 8, 9, 10, 2, 4)[i % 8] for i in range(40)]})
    for split in ("train", "test"):
        rows.to_parquet(imdb / f"{split}.parquet", index=False)
    monkeypatch.setenv(DATA_DIR_ENV, str(imdb))


def test_every_labelled_rating_has_one_class_and_5_or_6_none():
    assert [rating_class(r) for r in (1, 4, 7, 8, 9, 10)] == ["low", "low", "good", "good", "great", "great"]
    with pytest.raises(ValueError, match="rating 5 is in no class"):
        rating_class(5)


def test_the_written_splits_load_as_three_classes(tmp_path, monkeypatch, capsys):
    out = tmp_path / "three"
    imdb_with_ratings(tmp_path, monkeypatch)
    main(["--out", str(out)])
    assert "train: low 20, good 10, great 10" in capsys.readouterr().out
    splits = load_splits(DataConfig(path=str(out), validation_fraction=0.25), list(CLASSES))
    written = pd.read_parquet(out / "test.parquet")
    assert list(splits["test"]["label"]) == [list(CLASSES).index(rating_class(r)) for r in written["rating"]]


def test_each_rating_gives_its_labels():
    assert [rating_labels(r) for r in (1, 3, 4, 7, 8, 10)] == [["strong"], [], [], ["positive"], ["positive"],
                                                               ["positive", "strong"]]


def test_the_multi_label_splits_load_as_multi_hot_rows(tmp_path, monkeypatch, capsys):
    out = tmp_path / "labels"
    imdb_with_ratings(tmp_path, monkeypatch)
    main(["--out", str(out), "--multi-label"])
    printed = capsys.readouterr().out
    assert "train: positive 20, strong 20, none 10" in printed and "model.problem_type=multi_label" in printed
    splits = load_splits(DataConfig(path=str(out), validation_fraction=0.25), list(LABELS), multi_label=True)
    written = pd.read_parquet(out / "test.parquet")
    expected = [[int(name in rating_labels(r)) for name in LABELS] for r in written["rating"]]
    assert [list(row) for row in splits["test"]["label"]] == expected
