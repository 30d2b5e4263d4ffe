"""The run layout: file names, resolving every reference form and checkpoint checks, run folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sentiment import layout
from sentiment.layout import CheckpointError, resolve


def test_resolve_each_layout(model_dir):
    folder = str(model_dir / "epoch_001" / "model")
    assert resolve(folder).location == folder and resolve(folder).epoch_dir is None
    by_epoch = resolve(model_dir / "epoch_001")
    assert by_epoch.location == folder and by_epoch.epoch_dir == str(model_dir / "epoch_001")
    epoch = str(model_dir / "epoch_001")
    (model_dir / "result.json").write_text(json.dumps({"best_checkpoint": epoch, "last_checkpoint": epoch}))
    assert resolve(model_dir, "last").location == folder
    assert resolve(f"file://{model_dir}", "last").location == f"file://{folder}"
    with pytest.raises(CheckpointError, match="choose best or last"):
        resolve(model_dir, "middle")


def test_missing_and_incomplete_checkpoints(model_dir, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        resolve(tmp_path / "nope")
    (model_dir / "epoch_001" / "model" / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="missing model.safetensors"):
        resolve(model_dir / "epoch_001")


def test_corrupt_config_and_damaged_weights_are_reported(model_dir):
    weights = model_dir / "epoch_001" / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])  # truncated
    with pytest.raises(CheckpointError, match="damaged weights .*header describes"):
        resolve(model_dir / "epoch_001")
    (model_dir / "epoch_001" / "model" / "train_config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupt"):
        resolve(model_dir / "epoch_001")


def test_a_model_that_is_not_a_classifier_is_refused(model_dir):
    hf = model_dir / "epoch_001" / "model" / "config.json"
    hf.write_text(json.dumps(json.loads(hf.read_text()) | {"architectures": ["BertForMaskedLM"]}))
    with pytest.raises(CheckpointError, match="not a sequence classifier"):
        resolve(model_dir / "epoch_001")


def test_best_pointer_and_the_word_best(model_dir, tmp_path):
    (tmp_path / "best.json").write_text(json.dumps({"checkpoint": str(model_dir / "epoch_001")}))
    folder = str(model_dir / "epoch_001" / "model")
    assert resolve(tmp_path).location == folder
    assert resolve(tmp_path / "best.json").location == folder
    assert resolve("best", storage_path=str(tmp_path)).location == folder
    assert resolve("best", storage_path=f"file://{tmp_path}").location == f"file://{folder}"
    with pytest.raises(CheckpointError, match="does not exist"):
        resolve("best", storage_path=str(tmp_path / "empty"))
    (tmp_path / "best.json").write_text(json.dumps({"checkpoint": str(tmp_path / "gone")}))
    with pytest.raises(CheckpointError, match="gone' does not exist"):
        resolve("best", storage_path=str(tmp_path))


def test_resolve_refuses_credentials_in_the_reference_and_storage_path(model_dir):
    secret = "wJalrXUtnFEMI-K7MDENG"
    for call in (lambda: resolve(f"s3://AKIAEXAMPLE:{secret}@bucket/runs/r1"),
                 lambda: resolve("best", storage_path=f"s3://bucket/runs?secret_key={secret}")):
        with pytest.raises(CheckpointError, match="holds credentials") as err:
            call()
        assert secret not in str(err.value) and "AWS_SECRET_ACCESS_KEY" in str(err.value)
    (model_dir / "result.json").write_text(json.dumps({"best_checkpoint": f"gs://me:{secret}@bucket/run/epoch_001"}))
    with pytest.raises(CheckpointError, match="pointer in .* holds credentials") as err:
        resolve(f"file://{model_dir}")
    assert secret not in str(err.value)


def test_the_files_each_backend_loads_and_their_sha256(model_dir):
    import hashlib

    folder = model_dir / "epoch_001" / "model"

    def digest(f: Path) -> str:
        return hashlib.sha256(f.read_bytes()).hexdigest()

    model = resolve(folder)
    assert model.calibration_sha256 is None and model.expected_files("torch") == {"model.safetensors": model.sha256}
    with pytest.raises(CheckpointError, match="no verified onnx-int8 export"):
        model.expected_files("onnx-int8")
    (folder / "calibration.json").write_text(json.dumps({"temperature": 1.5}))
    (folder / "onnx").mkdir()
    (folder / "onnx" / "model_quantized.onnx").write_bytes(b"onnx bytes")
    (folder / "onnx" / "export.json").write_text(json.dumps({"exports": {"onnx-int8": {
        "file": "model_quantized.onnx", "sha256": digest(folder / "onnx" / "model_quantized.onnx")}}}))
    model = resolve(folder)
    assert model.expected_files("onnx-int8") == {"onnx/model_quantized.onnx": digest(folder / "onnx" / "model_quantized.onnx"),
                                                 "calibration.json": digest(folder / "calibration.json")}
    (folder / "onnx" / "export.json").write_text(json.dumps({"exports": {"onnx-int8": {"file": "../model.safetensors", "sha256": "0"}}}))
    with pytest.raises(CheckpointError, match=r"names files outside onnx/: \['../model.safetensors'\]"):
        resolve(folder)


def test_a_temperature_saved_after_resolving_is_what_the_returned_model_expects(model_dir):
    import hashlib

    from ray_jobs.evaluate import save_temperature

    folder = model_dir / "epoch_001" / "model"
    model = save_temperature(resolve(folder), 1.7, 10)
    saved = hashlib.sha256((folder / "calibration.json").read_bytes()).hexdigest()
    assert model.expected_files("torch")["calibration.json"] == saved == resolve(folder).calibration_sha256


def test_run_and_epoch_parse_an_epoch_checkpoint_path_or_uri():
    assert layout.run_and_epoch("/runs/r1/epoch_012") == ("r1", 12)
    assert layout.run_and_epoch("s3://bucket/runs/r2/epoch_003/?endpoint_override=127.0.0.1:9000") == ("r2", 3)
    assert layout.run_and_epoch("/models/mine/model") == ("mine", 0)  # a standalone model folder: no epoch
    assert layout.run_and_epoch("/runs/r1/epoch_x") == ("r1", 0)


def test_run_history_prefers_the_runs_last_epoch(tmp_path):
    run = tmp_path / "r1"
    for epoch, history in ((1, [{"loss": 1.0}]), (2, [{"loss": 1.0}, {"loss": 0.5}])):
        (run / layout.epoch_dir_name(epoch)).mkdir(parents=True)
        (run / layout.epoch_dir_name(epoch) / layout.STATE_FILE).write_text(json.dumps({"history": history}))
    assert layout.run_history(str(run / "epoch_001")) == [{"loss": 1.0}]  # no result.json: the checkpoint's own
    (run / layout.RESULT_FILE).write_text(json.dumps({"last_checkpoint": str(run / "epoch_002")}))
    assert layout.run_history(str(run / "epoch_001")) == [{"loss": 1.0}, {"loss": 0.5}]
    assert layout.run_history(str(tmp_path / "elsewhere")) == []
