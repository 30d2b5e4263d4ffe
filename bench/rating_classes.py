"""A 3-class task from IMDB's own ratings, for multi-class recipes: ``low`` (rated 1-4), ``good``
(7-8) and ``great`` (9-10), about 50% / 22% / 28% of the reviews.

    IMDB_DATA_DIR=<imdb parquet folder> python -m bench.rating_classes --out <folder>

writes ``train.parquet`` and ``test.parquet`` (``text``, ``label`` by name, ``rating``) into
``<folder>``, then prints the A/B that compares class weights on it at the quickstart's budget
(``bench/ab.py``; bench/RESULTS.md "Three classes from IMDB ratings").
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pandas as pd

from sentiment.config import DATA_DIR_ENV

CLASSES = {"low": range(1, 5), "good": range(7, 9), "great": range(9, 11)}  # IMDB has no 5 or 6 in train/test


def rating_class(rating: int) -> str:
    """The class of a review rated ``rating`` out of 10.

    Raises:
        ValueError: a rating of no class (5 or 6: IMDB's labelled reviews have none).
    """
    for name, ratings in CLASSES.items():
        if rating in ratings:
            return name
    raise ValueError(f"rating {rating} is in no class ({', '.join(f'{n} {r.start}-{r.stop - 1}' for n, r in CLASSES.items())})")


def write_split(source: Path, out: Path) -> pd.Series:
    """``out`` with ``source``'s reviews labelled by rating class; returns the class counts."""
    frame = pd.read_parquet(source, columns=["text", "rating"])
    frame["label"] = frame["rating"].map(rating_class)
    frame.to_parquet(out, index=False)
    return frame["label"].value_counts()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="the folder to write train.parquet and test.parquet into")
    args = p.parse_args(argv)
    imdb = os.environ.get(DATA_DIR_ENV)
    if not imdb:
        raise SystemExit(f"error: set ${DATA_DIR_ENV} to the IMDB parquet folder (its train.parquet has a rating column)")
    args.out.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        counts = write_split(Path(imdb) / f"{split}.parquet", args.out / f"{split}.parquet")
        print(f"{split}: " + ", ".join(f"{name} {counts.get(name, 0)}" for name in CLASSES))
    names = ",".join(CLASSES)
    print(f"\npython -m bench.ab --name rating-classes --common data.path={args.out} model.num_labels={len(CLASSES)} "
          f"'model.label_names=[{names}]' --a train.class_weights=none --b train.class_weights=auto")


if __name__ == "__main__":
    main()
