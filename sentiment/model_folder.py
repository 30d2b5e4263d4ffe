"""Writing a model folder: weights, tokenizer, training config, metrics and the model card, in one
atomic step; and a run's test metrics, recorded in the run and in the folder they scored."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from sentiment.config import Config, config_from_dict
from sentiment.layout import CONFIG_FILE, METRICS_FILE, MODEL_DIR, TEST_METRICS_FILE, TOKENIZER_CONFIG_FILE
from sentiment.model_card import write_model_card
from sentiment.storage import atomic_dir, join, read_json, write_json, write_local_json


def save_model_dir(model: Any, tokenizer: Any, cfg: Config, metrics: dict[str, Any], dest: str | os.PathLike[str]) -> Path:
    """Write a local model folder (weights, tokenizer, training config, metrics, model card) atomically.

    The tokenizer is saved with ``model_max_length`` set to ``data.max_seq_length``, so that a tool
    truncating by the tokenizer's own limit (``transformers.pipeline(..., truncation=True)``) feeds
    the model the length it was trained at.
    """
    with atomic_dir(dest) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        tokenizer_config = json.loads((tmp / TOKENIZER_CONFIG_FILE).read_text())
        write_local_json(tmp / TOKENIZER_CONFIG_FILE, tokenizer_config | {"model_max_length": cfg.data.max_seq_length})
        write_local_json(tmp / CONFIG_FILE, cfg.model_dump(mode="json"))
        write_local_json(tmp / METRICS_FILE, metrics)
        write_model_card(pafs.LocalFileSystem(), str(tmp.resolve()))
    return Path(dest)


def read_config(folder: str | os.PathLike[str]) -> Config:
    """The config a local model folder was saved with (``train_config.json``).

    Raises:
        FileNotFoundError: no such file. ConfigError: it holds no valid config.
    """
    return config_from_dict(read_json(pafs.LocalFileSystem(), str(Path(folder).resolve() / CONFIG_FILE)), f"{folder}/{CONFIG_FILE}")


def write_test_metrics(fs: pafs.FileSystem, run_dir: str, metrics: dict[str, Any]) -> None:
    """Record a run's test metrics: ``<run>/test_metrics.json``, a copy in the model folder they
    scored (``metrics["test_checkpoint"]``'s), and that folder's model card rewritten with them."""
    write_json(fs, join(run_dir, TEST_METRICS_FILE), metrics)
    model_dir = join(metrics["test_checkpoint"], MODEL_DIR)
    write_json(fs, join(model_dir, TEST_METRICS_FILE), metrics)
    write_model_card(fs, model_dir)
