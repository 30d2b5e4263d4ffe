"""sentiment.node_cache: a remote model folder is copied once per node and removed when unused."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sentiment.config import load_config
from sentiment.layout import CheckpointError, resolve
from sentiment.model import build_model, load_tokenizer
from sentiment.model_folder import save_model_dir
from sentiment.node_cache import lock_timeout, open_local, prune_cache, verify_files


@pytest.fixture()
def model_dir(tmp_path, tiny_model_dir):
    cfg = load_config(None, [f"model.name_or_path={tiny_model_dir}"])
    save_model_dir(build_model(cfg.model), load_tokenizer(str(tiny_model_dir)), cfg, {}, tmp_path / "run" / "epoch_001" / "model")
    return tmp_path / "run"


def test_a_remote_model_is_copied_once_per_node_and_removed_when_unused(model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("SENTIMENT_CACHE_DIR", str(tmp_path / "cache"))
    model = resolve(f"file://{model_dir}/epoch_001")
    assert model.is_remote
    first, second = open_local(model), open_local(model)
    assert first.path == second.path == tmp_path / "cache" / model.sha256 / "model"
    assert (first.path / "model.safetensors").read_bytes() == (model_dir / "epoch_001/model/model.safetensors").read_bytes()
    first.close()
    assert second.path.is_dir()  # still held
    second.close()
    assert not (tmp_path / "cache" / model.sha256).exists()


def test_a_copy_held_by_a_dead_process_is_pruned(model_dir, tmp_path):
    cache = tmp_path / "cache"
    hold = ("from sentiment.layout import resolve; from sentiment.node_cache import open_local; import sys; "
            "m = open_local(resolve(sys.argv[1])); "
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
        open_local(model)
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [".lock"]


def _dead_pid() -> int:
    """The pid of a process that has exited."""
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    return int(child.stdout)


def test_a_download_left_by_a_killed_process_is_pruned(model_dir, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("SENTIMENT_CACHE_DIR", str(cache))
    model = resolve(f"file://{model_dir}/epoch_001")
    left = cache / f".tmp-{model.sha256}-{_dead_pid()}-0badc0de" / "model"
    running = cache / f".tmp-{model.sha256}-{os.getpid()}-0badc0de" / "model"
    for folder in (left, running):
        folder.mkdir(parents=True)
        (folder / "model.safetensors").write_bytes(b"half")
    with open_local(model) as local:
        assert (local.path / "model.safetensors").read_bytes() == (model_dir / "epoch_001/model/model.safetensors").read_bytes()
    assert not left.parent.exists() and running.is_dir()


def test_stray_files_in_the_cache_do_not_stop_a_load(model_dir, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("SENTIMENT_CACHE_DIR", str(cache))
    model = resolve(f"file://{model_dir}/epoch_001")
    held = open_local(model)
    for junk in ("notes.txt", "abc", "-1", "99999999999999999999999-x"):
        (held.path.parent / "leases" / junk).write_text("junk")
    (cache / "README").write_text("junk")
    (cache / ("f" * 64)).write_text("a file named like a copy")
    second = open_local(model)  # prunes first: the junk is no live lease, the held copy stays
    assert second.path == held.path and (held.path / "config.json").is_file()
    held.close()
    second.close()
    assert not held.path.exists() and (cache / "README").is_file()


def test_a_file_where_the_copy_belongs_is_replaced(model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("SENTIMENT_CACHE_DIR", str(tmp_path / "cache"))
    model = resolve(f"file://{model_dir}/epoch_001")
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / model.sha256).write_text("not a folder")
    with open_local(model) as local:
        assert (local.path / "model.safetensors").is_file()


def test_a_stuck_download_times_out_naming_the_lock(model_dir, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("SENTIMENT_CACHE_DIR", str(cache))
    monkeypatch.setenv("SENTIMENT_CACHE_LOCK_TIMEOUT_S", "0.5")
    model = resolve(f"file://{model_dir}/epoch_001")
    stuck = "from sentiment.node_cache import _cache_lock; import time\nwith _cache_lock():\n    print('held', flush=True); time.sleep(60)"
    holder = subprocess.Popen([sys.executable, "-c", stuck], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(CheckpointError, match=rf"lock {cache / '.lock'} was held for more than 0.5 s \(by pid {holder.pid}"):
            open_local(model)
    finally:
        holder.kill()
        holder.wait()
    with open_local(model) as local:  # free again
        assert local.path.is_dir()


@pytest.mark.parametrize("value", ["soon", "0", "-5"])
def test_a_lock_timeout_that_is_not_a_positive_number_is_refused(value, monkeypatch):
    monkeypatch.setenv("SENTIMENT_CACHE_LOCK_TIMEOUT_S", value)
    with pytest.raises(ValueError, match=rf"SENTIMENT_CACHE_LOCK_TIMEOUT_S='{value}'"):
        lock_timeout()


def test_verify_files_names_a_changed_or_missing_file(model_dir):
    folder = model_dir / "epoch_001" / "model"
    (folder / "calibration.json").write_text('{"temperature": 2.0}')
    model = resolve(folder)
    expected = model.expected_files("torch")
    verify_files(folder, expected)
    (folder / "calibration.json").write_text('{"temperature": 0.01}')
    with pytest.raises(CheckpointError, match=r"calibration.json changed since the checkpoint was resolved"):
        verify_files(folder, expected)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x01")
    with pytest.raises(CheckpointError, match=r"model.safetensors changed since the checkpoint was resolved"):
        verify_files(folder, {"model.safetensors": model.sha256})
    weights.unlink()
    with pytest.raises(CheckpointError, match=rf"{weights} is missing"):
        verify_files(folder, {"model.safetensors": model.sha256})
