import json

import pytest

from sentiment.checkpoint import (
    CheckpointError,
    atomic_dir,
    read_model_dir,
    resolve_model_dir,
    save_model_dir,
)
from sentiment.config import load_config
from sentiment.model import build_model, load_tokenizer


def test_atomic_dir_leaves_nothing_on_a_crash(tmp_path):
    dest = tmp_path / "ckpt"
    with pytest.raises(RuntimeError):
        with atomic_dir(dest) as tmp:
            (tmp / "half.bin").write_bytes(b"x" * 10)
            raise RuntimeError("killed mid-write")
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_replaces_only_when_complete(tmp_path):
    dest = tmp_path / "ckpt"
    with atomic_dir(dest) as tmp:
        (tmp / "v").write_text("1")
    with pytest.raises(RuntimeError):
        with atomic_dir(dest) as tmp:
            (tmp / "v").write_text("2")
            raise RuntimeError
    assert (dest / "v").read_text() == "1"
    with atomic_dir(dest) as tmp:
        (tmp / "v").write_text("3")
    assert (dest / "v").read_text() == "3" and [p.name for p in tmp_path.iterdir()] == ["ckpt"]


@pytest.fixture()
def model_dir(tmp_path, tiny_model_dir):
    cfg = load_config(None, [f"model.name_or_path={tiny_model_dir}", "model.label_names=[neg, pos]"])
    save_model_dir(build_model(cfg.model), load_tokenizer(str(tiny_model_dir)), cfg, {"val_accuracy": 0.5}, tmp_path / "run" / "epoch_001" / "model")
    return tmp_path / "run"


def test_model_folder_is_plain_hf_with_config_and_metrics(model_dir):
    folder = model_dir / "epoch_001" / "model"
    assert {"config.json", "model.safetensors", "tokenizer.json", "train_config.json", "metrics.json"} <= {p.name for p in folder.iterdir()}
    assert not list(folder.glob("*.bin"))  # safetensors only
    assert json.loads((folder / "config.json").read_text())["id2label"] == {"0": "neg", "1": "pos"}
    cfg, metrics = read_model_dir(folder)
    assert cfg.model.label_names == ["neg", "pos"] and metrics == {"val_accuracy": 0.5}


def test_resolve_each_layout(model_dir):
    folder = model_dir / "epoch_001" / "model"
    assert resolve_model_dir(folder) == folder
    assert resolve_model_dir(model_dir / "epoch_001") == folder
    (model_dir / "result.json").write_text(json.dumps({"best_checkpoint": str(model_dir / "epoch_001"), "last_checkpoint": str(model_dir / "epoch_001")}))
    assert resolve_model_dir(model_dir, "last") == folder
    with pytest.raises(CheckpointError, match="names no middle_checkpoint"):
        resolve_model_dir(model_dir, "middle")


def test_missing_and_incomplete_checkpoints(model_dir, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        resolve_model_dir(tmp_path / "nope")
    (model_dir / "epoch_001" / "model" / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="missing model.safetensors"):
        resolve_model_dir(model_dir / "epoch_001")


def test_corrupt_config_is_reported(model_dir):
    (model_dir / "epoch_001" / "model" / "train_config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupt"):
        read_model_dir(model_dir / "epoch_001")


def test_best_pointer_and_the_word_best(model_dir, tmp_path):
    (tmp_path / "best.json").write_text(json.dumps({"checkpoint": str(model_dir / "epoch_001")}))
    folder = model_dir / "epoch_001" / "model"
    assert resolve_model_dir(tmp_path) == folder
    assert resolve_model_dir(tmp_path / "best.json") == folder
    assert resolve_model_dir("best", storage_path=str(tmp_path)) == folder
    with pytest.raises(CheckpointError, match="does not exist"):
        resolve_model_dir("best", storage_path=str(tmp_path / "empty"))
