"""sentiment.model: the packaged MiniLM resolves offline; built classifiers carry the label names."""

from __future__ import annotations

from pathlib import Path

import pytest

from sentiment.config import PACKAGED_MODEL, ConfigError, load_config
from sentiment.model import (
    build_model,
    check_against_model,
    eval_frozen_bottom,
    freeze_bottom,
    layer_lr_scales,
    load_model_config,
    load_tokenizer,
    resolve_model_path,
)


def test_the_packaged_model_is_a_folder_in_site_packages():
    path = Path(resolve_model_path(PACKAGED_MODEL))
    assert (path / "config.json").is_file() and "site-packages" in str(path)
    assert resolve_model_path("some/hub-id") == "some/hub-id"  # anything else passes through
    assert load_model_config(PACKAGED_MODEL).hidden_size == 384


def test_a_built_classifier_carries_labels_dropout_and_a_fresh_head(tiny_model_dir):
    cfg = load_config(None, [f"model.name_or_path={tiny_model_dir}", "model.label_names=[bad, meh, good]",
                             "model.num_labels=3", "model.dropout=0.3"])
    model = build_model(cfg.model)
    assert model.config.id2label == {0: "bad", 1: "meh", 2: "good"} and model.config.label2id["good"] == 2
    assert model.classifier.out_features == 3 and model.config.classifier_dropout == 0.3
    assert load_tokenizer(str(tiny_model_dir)).is_fast


def test_a_model_that_cannot_be_loaded_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"model.name_or_path='.*empty' cannot be loaded"):
        load_model_config(str(tmp_path / "empty"))


def test_freezing_keeps_the_bottom_at_its_weights_and_trains_the_rest(tiny_model_dir):
    import torch

    model = build_model(load_config(None, [f"model.name_or_path={tiny_model_dir}"]).model)
    frozen = freeze_bottom(model, embeddings=True, layers=1)
    ids = torch.randint(1000, 2000, (4, 16))
    model(input_ids=ids, labels=torch.tensor([0, 1, 0, 1])).loss.backward()
    params = dict(model.named_parameters())
    bottom = {n for n in params if ".embeddings." in n or ".layer.0." in n}
    assert bottom and frozen == sum(params[n].numel() for n in bottom)
    assert all(params[n].grad is None and not params[n].requires_grad for n in bottom)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in params.items() if n not in bottom)


def test_the_frozen_bottom_trains_without_dropout_and_the_rest_with_it(tiny_model_dir):
    import torch

    model = build_model(load_config(None, [f"model.name_or_path={tiny_model_dir}"]).model)
    freeze_bottom(model, embeddings=True, layers=1)
    model.train()
    eval_frozen_bottom(model, embeddings=True, layers=1)
    ids = torch.randint(1000, 2000, (4, 16))
    first, again = (model(input_ids=ids, output_hidden_states=True) for _ in range(2))
    torch.testing.assert_close(first.hidden_states[1], again.hidden_states[1], rtol=0, atol=0)  # frozen layer 0: no dropout
    assert not torch.equal(first.hidden_states[2], again.hidden_states[2])  # layer 1 trains: its dropout is on
    assert not model.bert.embeddings.training and model.bert.encoder.layer[1].training and model.classifier.training


def test_freezing_is_checked_against_the_model_and_the_embeddings(tiny_model_dir):
    with pytest.raises(ConfigError, match="freeze_layers needs train.freeze_embeddings"):
        load_config(None, ["train.freeze_layers=1"])
    with pytest.raises(ConfigError, match=r"train.freeze_layers=2 must be below the model's 2 layers"):
        check_against_model(load_config(None, [f"model.name_or_path={tiny_model_dir}", "train.freeze_embeddings=true",
                                               "data.max_seq_length=64",
                                                "train.freeze_layers=2"]))


def test_a_shallower_student_keeps_the_bottom_layers_of_the_pretrained_model(tiny_model_dir):
    import torch
    from safetensors.torch import load_file

    base = [f"model.name_or_path={tiny_model_dir}", "data.max_seq_length=64"]
    student = build_model(load_config(None, [*base, "model.num_hidden_layers=1"]).model)
    params = dict(student.named_parameters())
    assert student.config.num_hidden_layers == 1 and not any(".layer.1." in n for n in params)
    pretrained = load_file(str(tiny_model_dir / "model.safetensors"))
    assert torch.equal(params["bert.encoder.layer.0.output.dense.weight"], pretrained["bert.encoder.layer.0.output.dense.weight"])
    with pytest.raises(ConfigError, match=r"model.num_hidden_layers=3: .* has 2 encoder layers"):
        check_against_model(load_config(None, [*base, "model.num_hidden_layers=3"]))
    with pytest.raises(ConfigError, match=r"train.freeze_layers=1 must be below the model's 1 layers"):
        check_against_model(load_config(None, [*base, "model.num_hidden_layers=1", "train.freeze_embeddings=true",
                                                "train.freeze_layers=1"]))


def test_layer_wise_lr_decay_scales_each_layer_below_the_top(tiny_model_dir):
    model = build_model(load_config(None, [f"model.name_or_path={tiny_model_dir}"]).model)  # 2 layers
    scales = layer_lr_scales(model, 0.5)
    assert scales["classifier.weight"] == scales["bert.pooler.dense.weight"] == 1.0
    assert scales["bert.encoder.layer.1.attention.self.query.weight"] == 1.0  # the top layer
    assert scales["bert.encoder.layer.0.output.dense.bias"] == 0.5
    assert scales["bert.embeddings.word_embeddings.weight"] == scales["bert.embeddings.LayerNorm.bias"] == 0.25
    assert set(scales) == {name for name, _ in model.named_parameters()}
    assert set(layer_lr_scales(model, 1.0).values()) == {1.0}
