"""sentiment.node_cache: a remote model folder is copied once per node and removed when unused."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sentiment.config import load_config
from sentiment.layout import CheckpointError, resolve, save_model_dir
from sentiment.model import build_model, load_tokenizer
from sentiment.node_cache import prune_cache


@pytest.fixture()
def model_dir(tmp_path, tiny_model_dir):
    cfg = load_config(None, [f"model.name_or_path={tiny_model_dir}"])
    save_model_dir(build_model(cfg.model), load_tokenizer(str(tiny_model_dir)), cfg, {}, tmp_path / "run" / "epoch_001" / "model")
    return tmp_path / "run"


def test_a_remote_model_is_copied_once_per_node_and_removed_when_unused(model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("SENTIMENT_CACHE_DIR", str(tmp_path / "cache"))
    model = resolve(f"file://{model_dir}/epoch_001")
    assert model.is_remote
    first, second = model.open_local(), model.open_local()
    assert first.path == second.path == tmp_path / "cache" / model.sha256 / "model"
    assert (first.path / "model.safetensors").read_bytes() == (model_dir / "epoch_001/model/model.safetensors").read_bytes()
    first.close()
    assert second.path.is_dir()  # still held
    second.close()
    assert not (tmp_path / "cache" / model.sha256).exists()


def test_a_copy_held_by_a_dead_process_is_pruned(model_dir, tmp_path):
    cache = tmp_path / "cache"
    hold = ("from sentiment.layout import resolve; import sys; m = resolve(sys.argv[1]).open_local(); "
            "print(m.path, flush=True)")
    env = {**os.environ, "SENTIMENT_CACHE_DIR": str(cache)}
    out = subprocess.run([sys.executable, "-c", hold, f"file://{model_dir}/epoch_001"], env=env, capture_output=True, text=True, check=True)
    held = Path(out.stdout.strip())
    assert held.is_dir()  # the process died without closing
    os.environ["SENTIMENT_CACHE_DIR"] = str(cache)
    try:
        prune_cache()
    finally:
        del os.environ["SENTIMENT_CACHE_DIR"]
    assert not held.exists()


def test_a_remote_copy_that_changed_since_resolving_is_refused(model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("SENTIMENT_CACHE_DIR", str(tmp_path / "cache"))
    model = resolve(f"file://{model_dir}/epoch_001")
    weights = model_dir / "epoch_001" / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x01")
    with pytest.raises(CheckpointError, match="weights changed since resolved"):
        model.open_local()
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [".lock"]
