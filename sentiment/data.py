"""Load IMDB-style review data, clean it, split it, and turn it into token ids.

Loading goes through Hugging Face ``datasets`` (hub id, parquet, CSV or JSON files) or reads the
original ``aclImdb/`` folder. Texts are tokenized once, without special tokens or truncation, so
one encoding serves every ``max_seq_length`` and truncation strategy (a sweep reuses it); the
budget is applied per example by :func:`fit_to_length`.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, Sequence, Value, load_dataset
from datasets.utils.stratify import stratified_shuffle_split_generate_indices
from sklearn.model_selection import KFold, StratifiedKFold

from sentiment.config import DATA_DIR_ENV, ConfigError, DataConfig

BR_TAG = re.compile(r"<br\s*/?>", re.IGNORECASE)
SPLITS = ("train", "test")
# Share of a single-file dataset held out as the test split when the source has none.
TEST_FRACTION_WHEN_MISSING = 0.2


class DataError(ValueError):
    """Data that cannot be used as configured; the message says what and where."""


def clean_text(text: str) -> str:
    """Replace HTML line breaks (``<br />``) with spaces and strip the ends."""
    return BR_TAG.sub(" ", text).strip()


def resolve_source(cfg: DataConfig) -> tuple[str, str]:
    """Decide which loader to use and from where.

    Returns:
        ``(source, path)``; ``path`` is empty for the hub.

    Raises:
        DataError: a configured path that does not exist, or a folder whose format is unknown.
    """
    path = cfg.path or os.environ.get(DATA_DIR_ENV)
    if cfg.source == "hub" or (cfg.source == "auto" and not path):
        return "hub", ""
    if not path:
        raise DataError(f"data.source={cfg.source} needs data.path or ${DATA_DIR_ENV}")
    where = Path(path).expanduser()
    if not where.exists():
        origin = "data.path" if cfg.path else f"${DATA_DIR_ENV}"
        raise DataError(f"{origin} points at {str(where)!r}, which does not exist")
    if cfg.source != "auto":
        return cfg.source, str(where)
    return _detect_format(where), str(where)


def _detect_format(where: Path) -> str:
    if where.is_dir() and (where / "train" / "pos").is_dir():
        return "aclimdb"
    suffixes = {where.suffix} if where.is_file() else {p.suffix for p in where.iterdir()}
    for fmt, exts in (("parquet", {".parquet"}), ("csv", {".csv"}), ("json", {".json", ".jsonl"})):
        if suffixes & exts:
            return fmt
    raise DataError(
        f"cannot tell the format of {str(where)!r}: expected train/test .parquet, .csv or .jsonl "
        "files, one such file, or an aclImdb folder (set data.source to choose)"
    )


def load_raw(cfg: DataConfig) -> DatasetDict:
    """Load the raw ``train`` and ``test`` splits as configured, columns untouched.

    A single file (one CSV, say) has no test split: a stratified, seeded share of it
    (``TEST_FRACTION_WHEN_MISSING``) becomes the test split.

    Raises:
        DataError: unreachable hub, missing files or splits.
    """
    source, path = resolve_source(cfg)
    if source == "hub":
        return _load_hub(cfg.hub_id)
    if source == "aclimdb":
        return _load_aclimdb(Path(path))
    return _load_files(source, Path(path))


def _load_hub(hub_id: str) -> DatasetDict:
    try:
        ds = load_dataset(hub_id)
    except Exception as err:  # network errors come in many types
        raise DataError(
            f"could not load {hub_id!r} from the Hugging Face hub ({type(err).__name__}: {err}). "
            f"Point at local data instead: export {DATA_DIR_ENV}=/path/to/imdb (a folder of "
            "train/test parquet, CSV or JSONL, or aclImdb/) or pass data.path=..."
        ) from err
    return DatasetDict({s: ds[s] for s in SPLITS})


def _load_files(fmt: str, where: Path) -> DatasetDict:
    if where.is_file():
        whole = _load_file(fmt, where)
        return whole.train_test_split(test_size=TEST_FRACTION_WHEN_MISSING, seed=0)
    exts = {"parquet": ("parquet",), "csv": ("csv",), "json": ("jsonl", "json")}[fmt]
    splits = {}
    for split in SPLITS:  # one at a time: a split with other columns gets its own clear error
        found = [where / f"{split}.{e}" for e in exts if (where / f"{split}.{e}").is_file()]
        if not found:
            raise DataError(f"{str(where)!r} has no {split}.{exts[0]} file")
        splits[split] = _load_file(fmt, found[0])
    return DatasetDict(splits)


def _load_file(fmt: str, file: Path) -> Dataset:
    """The rows of one parquet, CSV or JSON (Lines) file.

    Raises:
        DataError: a file its parser cannot read, naming it and, where the parser says, the line.
    """
    try:
        return load_dataset(fmt, data_files=str(file), split="train")
    except Exception as err:  # each builder's parser fails in its own types
        if not file.stat().st_size:
            problem = "the file is empty"
        else:
            cause = err.__cause__ or err
            problem = (_json_problem(file) if fmt == "json" else None) or str(cause) or type(cause).__name__
        raise DataError(f"{file} cannot be read as {fmt}: {problem}") from None


def _json_problem(file: Path) -> str | None:
    """Where a JSON document or JSON Lines file first fails to parse, or None where it parses."""
    text = file.read_bytes()
    try:
        json.loads(text)
        return None
    except json.JSONDecodeError as err:
        if err.msg != "Extra data":  # one document, or JSON Lines whose first line is bad
            return f"line {err.lineno} column {err.colno}: {err.msg}"
    except ValueError as err:  # not UTF-8
        return str(err)
    for number, line in enumerate(text.splitlines(), 1):
        try:
            if line.strip():
                json.loads(line)
        except json.JSONDecodeError as err:
            return f"line {number} column {err.colno}: {err.msg}"
        except ValueError as err:
            return f"line {number}: {err}"
    return None


def _load_aclimdb(where: Path) -> DatasetDict:
    splits = {}
    for split in SPLITS:
        texts, labels = [], []
        for label_name in ("neg", "pos"):
            folder = where / split / label_name
            if not folder.is_dir():
                raise DataError(f"aclImdb folder {str(where)!r} lacks {split}/{label_name}/")
            for file in sorted(folder.glob("*.txt")):
                texts.append(file.read_text(encoding="utf-8"))
                labels.append(label_name == "pos")
        splits[split] = Dataset.from_dict({"text": texts, "label": [int(x) for x in labels]})
    return DatasetDict(splits)


def standardize(ds: Dataset, cfg: DataConfig, label_names: list[str], split: str, multi_label: bool = False) -> Dataset:
    """Keep ``text`` (cleaned) and ``label`` (int class id; with ``multi_label`` a multi-hot list, one
    0/1 per label) and check both.

    String labels map to ids by ``label_names`` (case-insensitive); integer labels must lie in
    ``[0, len(label_names))``. A multi-label row holds a list of such labels (a CSV cell: a string of
    them separated by ``cfg.label_separator``); an empty list is a text with none of them.

    Raises:
        DataError: a missing column, a label outside the label set, a multi-label row without a
            list, or empty texts; naming the row.
    """
    for col in (cfg.text_column, cfg.label_column):
        if col not in ds.column_names:
            key = "data.text_column" if col == cfg.text_column else "data.label_column"
            raise DataError(f"{split} split has no column {col!r} ({key}); columns are {ds.column_names}")
    if multi_label:
        labels: list[Any] = _label_sets(ds[cfg.label_column], label_names, split, cfg.label_column, cfg.label_separator)
    else:
        labels = _label_ids(ds[cfg.label_column], label_names, split, cfg.label_column)
    texts = [clean_text(t) if isinstance(t, str) else "" for t in ds[cfg.text_column]]
    empty = [i for i, t in enumerate(texts) if not t]
    if empty:
        raise DataError(
            f"{split} split has {len(empty)} empty texts in column {cfg.text_column!r} "
            f"(rows {empty[:5]}{'...' if len(empty) > 5 else ''}); remove them from the data"
        )
    out = Dataset.from_dict({"text": texts, "label": labels})
    if multi_label:
        return out.cast_column("label", Sequence(Value("int8"), length=len(label_names)))
    return out.cast_column("label", ClassLabel(names=list(label_names)))


def _label_id(value: Any, lookup: dict[str, int]) -> int | None:
    """The id of one label given as a name (case-insensitive) or an id, or None when it is neither."""
    if isinstance(value, str):
        return lookup.get(value.strip().lower())
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value) if 0 <= value < len(lookup) else None
    return None


def _label_ids(values: list[Any], label_names: list[str], split: str, column: str) -> list[int]:
    lookup = {name.lower(): i for i, name in enumerate(label_names)}
    ids: list[int] = []
    for row, value in enumerate(values):
        idx = _label_id(value, lookup)
        if idx is None:
            raise DataError(
                f"{split} split, row {row}: label {value!r} in column {column!r} is not one of "
                f"{label_names} or ids 0..{len(label_names) - 1} (model.label_names)"
            )
        ids.append(idx)
    return ids


def _label_sets(values: list[Any], label_names: list[str], split: str, column: str, separator: str) -> list[list[int]]:
    """Multi-hot rows (one 0/1 per label) from each row's list of label names or ids."""
    lookup = {name.lower(): i for i, name in enumerate(label_names)}
    rows: list[list[int]] = []
    for row, value in enumerate(values):
        if isinstance(value, str):  # a CSV cell: names separated by `separator`, or a JSON list ("[]": none)
            value = _json_list(value) if value.strip().startswith("[") else [p for p in value.split(separator) if p.strip()]
        if value is None:
            raise DataError(f"{split} split, row {row}: no labels in column {column!r} (model.problem_type=multi_label: "
                            "give a list of label names, [] for none)")
        if not isinstance(value, (list, tuple, np.ndarray)):
            raise DataError(f"{split} split, row {row}: column {column!r} holds {value!r}, not a list of labels "
                            "(model.problem_type=multi_label)")
        hot = [0] * len(label_names)
        for label in value:
            idx = _label_id(label, lookup)
            if idx is None:
                raise DataError(
                    f"{split} split, row {row}: label {label!r} in column {column!r} is not one of "
                    f"{label_names} or ids 0..{len(label_names) - 1} (model.label_names)"
                )
            hot[idx] = 1
        rows.append(hot)
    return rows


def _json_list(cell: str) -> Any:
    """A CSV cell written as a JSON list, or the cell itself where it is not valid JSON."""
    try:
        return json.loads(cell)
    except json.JSONDecodeError:
        return cell


def stratified_split(ds: Dataset, n_first: int, n_second: int, seed: int) -> tuple[Dataset, Dataset]:
    """Two disjoint, stratified, seeded parts of ``ds`` with ``n_first`` and ``n_second`` rows
    (multi-label rows: seeded, not stratified).

    The same rows in the same order as ``ds.train_test_split(train_size=n_first,
    test_size=n_second, stratify_by_column="label", seed=seed)``: the library's own index generator,
    fed the label column read in one piece (``train_test_split`` reads it row by row: most of the
    quickstart's data preparation with datasets 5, bench/HISTORY.md, "Quickstart recipe").

    Raises:
        DataError: a label with a single example, or a part smaller than the number of labels.
    """
    labels = ds.select_columns(["label"]).with_format("numpy")[:]["label"]
    if labels.ndim == 2:  # multi-label: label sets rarely repeat enough to stratify by; a seeded shuffle
        order = np.random.default_rng(seed).permutation(len(ds))
        return ds.select(order[:n_first]), ds.select(order[n_first:n_first + n_second])
    try:
        first, second = next(stratified_shuffle_split_generate_indices(labels, n_first, n_second, rng=np.random.default_rng(seed)))
    except ValueError as err:
        names = ds.features["label"].names
        counts = ", ".join(f"{names[i]} {n}" for i, n in enumerate(np.bincount(labels, minlength=len(names))))
        reason = "a label has fewer than 2 reviews" if str(err) == "Minimum class count error" else str(err)
        raise DataError(f"cannot split {len(ds)} reviews into {n_first} and {n_second} stratified by label "
                        f"({counts}): {reason}") from None
    return ds.select(first), ds.select(second)


def stratified_subset(ds: Dataset, n: int | None, seed: int) -> Dataset:
    """A stratified, seeded subset of ``n`` rows (all rows when ``n`` is None or too large)."""
    if n is None or n >= len(ds):
        return ds
    return stratified_split(ds, n, len(ds) - n, seed)[0]


def load_splits(cfg: DataConfig, label_names: list[str], multi_label: bool = False) -> DatasetDict:
    """Load, clean and split the data into ``train``, ``validation`` and ``test``.

    The validation split is a stratified, seeded share of train; the test split is kept apart
    for the final evaluation. ``max_*_samples`` caps apply after splitting (stratified, seeded).
    With ``cv_folds`` set, only ``train`` comes back: the cross-validation pool (``max_train_samples``
    of the whole train split), which :func:`cross_validation_fold` cuts after tokenizing; the
    test split is not read. ``multi_label``: each row's labels are a set (:func:`standardize`).
    """
    raw = load_raw(cfg)
    train = standardize(raw["train"], cfg, label_names, "train", multi_label)
    if cfg.cv_folds is not None:
        return DatasetDict(train=stratified_subset(train, cfg.max_train_samples, cfg.seed))
    test = standardize(raw["test"], cfg, label_names, "test", multi_label)
    n_validation = math.ceil(cfg.validation_fraction * len(train))
    rest, validation = stratified_split(train, len(train) - n_validation, n_validation, cfg.seed)
    return DatasetDict(
        train=stratified_subset(rest, cfg.max_train_samples, cfg.seed),
        validation=stratified_subset(validation, cfg.max_val_samples, cfg.seed),
        test=stratified_subset(test, cfg.max_test_samples, cfg.seed),
    )


@dataclass
class EncodedSplit:
    """Token ids of a split: content only (no special tokens), not truncated; with a teacher
    (``train.teacher``), its logits for each review (``(n, num_labels)`` float32)."""

    ids: list[np.ndarray]
    labels: np.ndarray
    teacher_logits: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, rows: np.ndarray) -> EncodedSplit:
        """The rows at these positions, in this order."""
        teacher = None if self.teacher_logits is None else self.teacher_logits[rows]
        return EncodedSplit([self.ids[i] for i in rows], self.labels[rows], teacher)


IMBALANCE_RATIO = 1.5  # largest class over smallest in the training split past which it counts as imbalanced


def imbalanced(counts: np.ndarray) -> bool:
    """Whether class ``counts`` are imbalanced: a class is empty, or the largest is more than
    :data:`IMBALANCE_RATIO` times the smallest."""
    return bool(counts.min() == 0 or counts.max() > IMBALANCE_RATIO * counts.min())


def _positives_and_negatives(labels: np.ndarray) -> np.ndarray:
    """``(num_labels, 2)``: each label's texts with it and without it, from multi-hot labels."""
    positives = labels.sum(axis=0)
    return np.stack([positives, len(labels) - positives], axis=1)


def _imbalanced_labels(labels: np.ndarray) -> np.ndarray:
    """Which labels of multi-hot ``labels`` are imbalanced (:func:`imbalanced` on their positives
    against their negatives)."""
    return np.asarray([imbalanced(pair) for pair in _positives_and_negatives(labels)], dtype=bool)


def imbalance(labels: np.ndarray, label_names: list[str]) -> str | None:
    """How the training labels are imbalanced (:func:`imbalanced`), in words with the counts, or None.
    Multi-hot labels: the labels whose positives and negatives are imbalanced, with their positive share."""
    if labels.ndim == 2:
        flagged = np.flatnonzero(_imbalanced_labels(labels))
        if not len(flagged):
            return None
        shares = ", ".join(f"{label_names[i]} {int(labels[:, i].sum())} ({labels[:, i].mean():.0%})" for i in flagged)
        return f"the training split has imbalanced labels (texts with each: {shares})"
    counts = np.bincount(labels, minlength=len(label_names))
    if not imbalanced(counts):
        return None
    shares = ", ".join(f"{name} {n} ({n / len(labels):.0%})" for name, n in zip(label_names, counts))
    return f"the training split is imbalanced ({shares})"


def loss_class_weights(setting: str | list[float] | None, labels: np.ndarray, num_labels: int) -> list[float] | None:
    """The loss weight per class that ``train.class_weights`` asks for on these training labels:
    ``balanced`` is n / (k * count) (scikit-learn's "balanced"), ``auto`` is balanced when the
    labels are imbalanced (:func:`imbalance`) and none otherwise, ``none`` (or None) is none, and a
    list is used as it is.

    Multi-hot labels (a multi-label model): the weight of each label's positives in its binary
    cross-entropy (``pos_weight``); ``balanced`` is its negatives over its positives (1 for a label
    that every text or none has), ``auto`` is balanced when any label is imbalanced."""
    if isinstance(setting, list):
        return list(setting)
    if labels.ndim == 2:
        pairs = _positives_and_negatives(labels)
        if setting == "balanced" or (setting == "auto" and _imbalanced_labels(labels).any()):
            positives, negatives = pairs[:, 0].astype(np.float64), pairs[:, 1]
            return np.where((positives > 0) & (negatives > 0), negatives / np.maximum(positives, 1), 1.0).tolist()
        return None
    counts = np.bincount(labels, minlength=num_labels)
    if setting == "balanced" or (setting == "auto" and imbalanced(counts)):
        return (len(labels) / (num_labels * np.maximum(counts, 1).astype(np.float64))).tolist()
    return None


def check_folds(labels: np.ndarray, folds: int, label_names: list[str]) -> None:
    """Refuse a fold count that stratified k-fold cannot honour on these labels.

    Raises:
        ConfigError: fewer than 2 folds, or more folds than the smallest class has reviews.
    """
    if folds < 2:
        raise ConfigError(f"--folds {folds}: cross-validation needs at least 2 folds")
    if labels.ndim == 2:  # multi-label folds are not stratified
        if folds > len(labels):
            raise ConfigError(f"--folds {folds} is more than the training pool's {len(labels)} texts")
        return
    counts = np.bincount(labels, minlength=len(label_names))
    smallest = int(counts.argmin())
    if folds > counts[smallest]:
        raise ConfigError(
            f"--folds {folds} is more than the smallest class of the training pool has reviews "
            f"({label_names[smallest]!r}: {counts[smallest]}); every fold needs each class"
        )


def cross_validation_fold(pool: EncodedSplit, cfg: DataConfig) -> dict[str, EncodedSplit]:
    """Fold ``cfg.cv_fold`` of ``cfg.cv_folds``: ``train`` and ``validation`` cut from the pool.

    Stratified and seeded (scikit-learn's ``StratifiedKFold``, shuffled with ``cfg.seed``), so the
    folds partition the pool: each review validates in exactly one fold. The validation part is
    the whole fold (``max_val_samples`` does not apply). Multi-label folds are seeded, not stratified
    (``KFold``).
    """
    kind = KFold if pool.labels.ndim == 2 else StratifiedKFold
    folds = kind(n_splits=cfg.cv_folds, shuffle=True, random_state=cfg.seed)
    train_rows, val_rows = list(folds.split(np.zeros(len(pool)), pool.labels))[cfg.cv_fold]
    return {"train": pool.take(train_rows), "validation": pool.take(val_rows)}


def encode_texts(tokenizer: Any, texts: list[str]) -> list[np.ndarray]:
    """Tokenize texts (cleaned first) in one fast-tokenizer call, without specials or truncation."""
    if not len(texts):
        return []  # the fast tokenizer fails on an empty batch
    enc = tokenizer([clean_text(t) for t in texts], add_special_tokens=False, verbose=False)
    return [np.asarray(ids, dtype=np.int32) for ids in enc["input_ids"]]


def encode_splits(tokenizer: Any, splits: DatasetDict) -> dict[str, EncodedSplit]:
    """Encode every split of :func:`load_splits`."""
    return {
        name: EncodedSplit(encode_texts(tokenizer, ds["text"]), np.asarray(ds["label"], dtype=np.int64))
        for name, ds in splits.items()
    }


def truncate_ids(ids: np.ndarray, budget: int, strategy: str, head_fraction: float = 0.25) -> np.ndarray:
    """Cut content ids to at most ``budget`` tokens.

    Args:
        ids: content token ids.
        budget: tokens allowed (``max_seq_length`` minus the special tokens).
        strategy: ``head`` keeps the start, ``tail`` the end, ``head_tail`` the first
            ``round(budget * head_fraction)`` and the rest from the end.
        head_fraction: the share of ``budget`` taken from the start in ``head_tail``.

    Raises:
        ValueError: an unknown strategy.
    """
    if strategy not in ("head", "tail", "head_tail"):
        raise ValueError(f"unknown truncation strategy {strategy!r}; choose head, tail or head_tail")
    if len(ids) <= budget:
        return ids
    if strategy == "head":
        return ids[:budget]
    if strategy == "tail":
        return ids[len(ids) - budget :]
    head = round(budget * head_fraction)
    return np.concatenate([ids[:head], ids[len(ids) - (budget - head) :]])


@dataclass(frozen=True)
class SpecialTokens:
    """The ids a tokenizer puts before and after a single sequence (``[CLS]``/``[SEP]`` for BERT)."""

    prefix: tuple[int, ...]
    suffix: tuple[int, ...]

    @classmethod
    def of(cls, tokenizer: Any) -> SpecialTokens:
        """Read the template from the tokenizer itself, so any encoder family works."""
        bare = tokenizer("a", add_special_tokens=False)["input_ids"]
        full = tokenizer("a", add_special_tokens=True)["input_ids"]
        for start in range(len(full) - len(bare) + 1):
            if full[start : start + len(bare)] == bare:
                return cls(tuple(full[:start]), tuple(full[start + len(bare) :]))
        raise ValueError("cannot find the special-token template of this tokenizer")

    def __len__(self) -> int:
        return len(self.prefix) + len(self.suffix)


def fit_to_length(
    ids: np.ndarray, specials: SpecialTokens, max_seq_length: int, strategy: str, head_fraction: float
) -> list[int]:
    """Truncate content ids to the budget and wrap them in the special tokens."""
    cut = truncate_ids(ids, max_seq_length - len(specials), strategy, head_fraction)
    return [*specials.prefix, *cut.tolist(), *specials.suffix]


def chunk_windows(ids: np.ndarray, specials: SpecialTokens, max_seq_length: int, stride: int | None = None) -> list[list[int]]:
    """Windows of at most ``max_seq_length`` tokens (specials included) that cover every content id.

    A review within the budget is one window, identical to :func:`fit_to_length`'s. A longer one
    gets windows starting every ``stride`` content tokens (default: the whole budget, so windows
    overlap only where the last one is moved back to end with the review), so every window is
    full and no token is left out.

    Raises:
        ValueError: ``stride`` outside 1..budget (the content tokens a window holds).
    """
    budget = max_seq_length - len(specials)
    stride = budget if stride is None else stride
    if not 1 <= stride <= budget:
        raise ValueError(f"data.chunk_stride={stride} must be between 1 and the window's {budget} content tokens")
    starts = list(range(0, max(len(ids) - budget, 0), stride)) + [max(len(ids) - budget, 0)]
    return [[*specials.prefix, *ids[s : s + budget].tolist(), *specials.suffix] for s in starts]


def chunked_inputs(
    texts_ids: list[np.ndarray], specials: SpecialTokens, max_seq_length: int, stride: int | None = None
) -> tuple[list[list[int]], np.ndarray]:
    """The :func:`chunk_windows` of every text, flattened, and the text each window belongs to."""
    per_text = [chunk_windows(ids, specials, max_seq_length, stride) for ids in texts_ids]
    owners = np.repeat(np.arange(len(per_text)), [len(w) for w in per_text])
    return [w for ws in per_text for w in ws], owners


def mean_by_owner(values: np.ndarray, owners: np.ndarray, n: int) -> np.ndarray:
    """Per-text mean of per-window rows (``owners[i]`` is window i's text); a text with one
    window keeps its row exactly."""
    total = np.zeros((n, values.shape[1]), dtype=np.float64)
    np.add.at(total, owners, values)
    return (total / np.bincount(owners, minlength=n)[:, None]).astype(values.dtype)


def model_inputs(split: EncodedSplit, specials: SpecialTokens, cfg: DataConfig) -> list[list[int]]:
    """Every example of a split as model-ready ids under the configured length and truncation."""
    return [fit_to_length(ids, specials, cfg.max_seq_length, cfg.truncation, cfg.head_fraction) for ids in split.ids]
