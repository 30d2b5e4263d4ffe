"""Tasks from IMDB's own ratings. A 3-class task for multi-class recipes: ``low`` (rated 1-4),
``good`` (7-8) and ``great`` (9-10), about 50% / 22% / 28% of the reviews. With ``--multi-label``, a
two-label task for multi-label recipes: each review is ``positive`` (rated 7-10) or not, and
``strong`` (rated 1-2 or 9-10: the score at either end) or not; any subset, none included (a review
rated 3-4 has neither).

    IMDB_DATA_DIR=<imdb parquet folder> python -m bench.rating_classes --out <folder> [--multi-label]

writes ``train.parquet`` and ``test.parquet`` (``text``, ``label`` by name or, multi-label, a list of
names, ``rating``) into ``<folder>`` and prints how many reviews have each class or label, then the
command to run on it: the A/B that compares class weights at the quickstart's budget (``bench/ab.py``;
bench/RESULTS.md "Three classes from IMDB ratings"), or the quickstart's recipe trained as a
multi-label model.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pandas as pd

from sentiment.config import DATA_DIR_ENV

CLASSES = {"low": range(1, 5), "good": range(7, 9), "great": range(9, 11)}  # IMDB has no 5 or 6 in train/test
LABELS = {"positive": range(7, 11), "strong": (1, 2, 9, 10)}


def rating_class(rating: int) -> str:
    """The class of a review rated ``rating`` out of 10.

    Raises:
        ValueError: a rating of no class (5 or 6: IMDB's labelled reviews have none).
    """
    for name, ratings in CLASSES.items():
        if rating in ratings:
            return name
    raise ValueError(f"rating {rating} is in no class ({', '.join(f'{n} {r.start}-{r.stop - 1}' for n, r in CLASSES.items())})")


def rating_labels(rating: int) -> list[str]:
    """The labels of a review rated ``rating`` out of 10 (maybe none)."""
    return [name for name, ratings in LABELS.items() if rating in ratings]


def write_split(source: Path, out: Path, multi_label: bool = False) -> dict[str, int]:
    """``out`` with ``source``'s reviews labelled from their ratings; returns how many have each class
    (multi-label: each label, and ``none``)."""
    frame = pd.read_parquet(source, columns=["text", "rating"])
    frame["label"] = frame["rating"].map(rating_labels if multi_label else rating_class)
    frame.to_parquet(out, index=False)
    if not multi_label:
        counts = frame["label"].value_counts()
        return {name: int(counts.get(name, 0)) for name in CLASSES}
    return {name: int(frame["label"].map(lambda labels, n=name: n in labels).sum()) for name in LABELS} | {
        "none": int((frame["label"].map(len) == 0).sum())}


def next_command(out: Path, multi_label: bool) -> str:
    """What to run on the written task."""
    if multi_label:
        return (f"python -m ray_jobs.train --config configs/quickstart.yaml data.path={out} model.problem_type=multi_label "
                f"model.num_labels={len(LABELS)} 'model.label_names=[{','.join(LABELS)}]' run.metric=val_micro_f1 "
                "run.name=rating-labels")
    return (f"python -m bench.ab --name rating-classes --common data.path={out} model.num_labels={len(CLASSES)} "
            f"'model.label_names=[{','.join(CLASSES)}]' --a train.class_weights=none --b train.class_weights=auto")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="the folder to write train.parquet and test.parquet into")
    p.add_argument("--multi-label", action="store_true", help="the two-label task (positive, strong) instead of 3 classes")
    args = p.parse_args(argv)
    imdb = os.environ.get(DATA_DIR_ENV)
    if not imdb:
        raise SystemExit(f"error: set ${DATA_DIR_ENV} to the IMDB parquet folder (its train.parquet has a rating column)")
    args.out.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        counts = write_split(Path(imdb) / f"{split}.parquet", args.out / f"{split}.parquet", args.multi_label)
        print(f"{split}: " + ", ".join(f"{name} {n}" for name, n in counts.items()))
    print(f"\n{next_command(args.out, args.multi_label)}")


if __name__ == "__main__":
    main()
