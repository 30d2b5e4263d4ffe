"""bench/rating_classes.py: IMDB's ratings as three classes, written as the data loader reads them."""

from __future__ import annotations

import pandas as pd
import pytest

from bench.rating_classes import CLASSES, main, rating_class
from sentiment.config import DATA_DIR_ENV, DataConfig
from sentiment.data import load_splits


def test_every_labelled_rating_has_one_class_and_5_or_6_none():
    assert [rating_class(r) for r in (1, 4, 7, 8, 9, 10)] == ["low", "low", "good", "good", "great", "great"]
    with pytest.raises(ValueError, match="rating 5 is in no class"):
        rating_class(5)


def test_the_written_splits_load_as_three_classes(tmp_path, monkeypatch, capsys):
    imdb, out = tmp_path / "imdb", tmp_path / "three"
    imdb.mkdir()
    rows = pd.DataFrame({"text": [f"review {i}" for i in range(40)], "label": 0,
                         "rating": [(1, 3, 7, 8, 9, 10, 2, 4)[i % 8] for i in range(40)]})
    for split in ("train", "test"):
        rows.to_parquet(imdb / f"{split}.parquet", index=False)
    monkeypatch.setenv(DATA_DIR_ENV, str(imdb))
    main(["--out", str(out)])
    assert "train: low 20, good 10, great 10" in capsys.readouterr().out
    splits = load_splits(DataConfig(path=str(out), validation_fraction=0.25), list(CLASSES))
    written = pd.read_parquet(out / "test.parquet")
    assert list(splits["test"]["label"]) == [list(CLASSES).index(rating_class(r)) for r in written["rating"]]
