"""Fixtures of the core's tests."""

from __future__ import annotations

import pytest

from sentiment.config import load_config
from sentiment.model import build_model, load_tokenizer
from sentiment.model_folder import save_model_dir


@pytest.fixture()
def model_dir(tmp_path, tiny_model_dir):
    """A run folder holding one epoch's model folder (tiny BERT, labels neg and pos), as training writes it."""
    cfg = load_config(None, [f"model.name_or_path={tiny_model_dir}", "model.label_names=[neg, pos]", "data.max_seq_length=64"])
    save_model_dir(build_model(cfg.model), load_tokenizer(str(tiny_model_dir)), cfg, {"val_accuracy": 0.5},
                   tmp_path / "run" / "epoch_001" / "model")
    return tmp_path / "run"
