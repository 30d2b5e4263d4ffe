"""The run layout: file names, atomic writes, resolving every reference form, the node cache."""

from __future__ import annotations

import json
from pathlib import Path

import fsspec
import pyarrow.fs as pafs
import pytest

from sentiment import layout
from sentiment.config import load_config
from sentiment.layout import CheckpointError, atomic_dir, resolve, save_model_dir
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


def test_locations_keep_scheme_and_query():
    base = "s3://bucket/runs?endpoint_override=127.0.0.1:9000&scheme=http"
    assert layout.location_of(base, "bucket/runs/r1/epoch_001") == \
        "s3://bucket/runs/r1/epoch_001?endpoint_override=127.0.0.1:9000&scheme=http"
    assert layout.child(base, "r1", "best.json") == "s3://bucket/runs/r1/best.json?endpoint_override=127.0.0.1:9000&scheme=http"
    assert layout.location_of("file:///data/runs", "/data/runs/r1") == "file:///data/runs/r1"
    assert layout.location_of("/data/runs", "/data/runs/r1") == "/data/runs/r1"
    assert layout.is_uri("gs://b/x") and not layout.is_uri("runs/x")


def test_write_json_is_atomic_on_a_filesystem(tmp_path):
    fs, path = layout.filesystem(tmp_path)
    layout.write_json(fs, layout.join(path, "a.json"), {"x": 1})
    layout.write_json(fs, layout.join(path, "a.json"), {"x": 2})
    assert layout.read_json(fs, layout.join(path, "a.json")) == {"x": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


@pytest.fixture()
def model_dir(tmp_path, tiny_model_dir):
    cfg = load_config(None, [f"model.name_or_path={tiny_model_dir}", "model.label_names=[neg, pos]", "data.max_seq_length=64"])
    save_model_dir(build_model(cfg.model), load_tokenizer(str(tiny_model_dir)), cfg, {"val_accuracy": 0.5},
                   tmp_path / "run" / "epoch_001" / "model")
    return tmp_path / "run"


def test_model_folder_is_plain_hf_with_config_and_metrics(model_dir):
    folder = model_dir / "epoch_001" / "model"
    assert {"config.json", "model.safetensors", "tokenizer.json", "train_config.json", "metrics.json"} <= {p.name for p in folder.iterdir()}
    assert not list(folder.glob("*.bin"))  # safetensors only
    assert json.loads((folder / "config.json").read_text())["id2label"] == {"0": "neg", "1": "pos"}
    model = resolve(folder)
    assert model.config.model.label_names == ["neg", "pos"] and model.metrics == {"val_accuracy": 0.5}
    import hashlib

    weights = (folder / "model.safetensors").read_bytes()
    assert model.sha256 == hashlib.sha256(weights).hexdigest() and model.size == len(weights)


def test_the_model_card_names_the_task_and_pipeline_loads_the_folder(model_dir):
    from huggingface_hub import ModelCard
    from transformers import AutoTokenizer, pipeline

    folder = model_dir / "epoch_001" / "model"
    card = ModelCard.load(folder / "README.md")
    assert (card.data.library_name, card.data.pipeline_tag) == ("transformers", "text-classification")
    assert card.data.base_model is None  # fine-tuned from a local folder: no Hub id to name
    assert card.data.datasets == ["stanfordnlp/imdb"] and card.data.labels == ["neg", "pos"]  # the config's data: the Hub's IMDB
    assert card.data.eval_results is None and "onnx" not in card.data.tags and "No test metrics yet" in card.text
    assert "| val_accuracy | 0.5000 |" in card.text and "`neg`, `pos`" in card.text
    assert AutoTokenizer.from_pretrained(folder).model_max_length == 64  # the training length, for truncation=True
    (scores,) = pipeline("text-classification", model=str(folder), top_k=None, truncation=True)(["A fun movie."])
    assert {s["label"] for s in scores} == {"neg", "pos"}


def test_test_metrics_go_to_the_run_and_the_tested_folder_whose_card_gets_its_model_index(model_dir, small_imdb):
    import pandas as pd
    from huggingface_hub import ModelCard

    from sentiment.metrics import compute_metrics
    from sentiment.predict import Predictor

    folder = model_dir / "epoch_001" / "model"
    reviews = pd.read_parquet(small_imdb / "test.parquet").head(64)
    predictor = Predictor.load(folder)
    logits = predictor.logits(predictor.encode(list(reviews["text"])))
    metrics = compute_metrics(logits, reviews["label"].to_numpy(), ["neg", "pos"], prefix="test_")
    metrics |= {"test_epoch": 1, "test_checkpoint": str(model_dir / "epoch_001")}  # as the training run records them
    fs, run_dir = layout.filesystem(model_dir)
    layout.write_test_metrics(fs, run_dir, metrics)
    recorded = json.loads((model_dir / "test_metrics.json").read_text())
    assert json.loads((folder / "test_metrics.json").read_text()) == recorded == json.loads(json.dumps(metrics))
    card = ModelCard.load(folder / "README.md")
    results = {r.metric_type: r for r in card.data.eval_results}
    assert set(results) == {"accuracy", "f1", "precision", "recall"}
    assert results["accuracy"].metric_value == recorded["test_accuracy"] and results["f1"].metric_value == recorded["test_f1"]
    assert {(r.task_type, r.dataset_type, r.dataset_name, r.dataset_split) for r in results.values()} == \
        {("text-classification", "stanfordnlp/imdb", "imdb", "test")}
    assert card.data.model_name and card.data.datasets == ["stanfordnlp/imdb"]
    assert f"| test_accuracy | {recorded['test_accuracy']:.4f} |" in card.text and "Test: 64 reviews" in card.text
    assert resolve(model_dir / "epoch_001").location == str(folder)  # the epoch checkpoint still resolves


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


class _ListsAStrayKey(pafs.FSSpecHandler):
    """A local folder whose listing also names one more key (as a hostile object store's could)."""

    def __init__(self, stray: str) -> None:
        super().__init__(fsspec.filesystem("file"))
        self.stray = stray

    def get_file_info_selector(self, selector):
        return [*super().get_file_info_selector(selector), pafs.FileInfo(self.stray, pafs.FileType.File, size=5)]


@pytest.mark.parametrize("stray", [
    "{folder}/../../evil.txt", "{folder}/zz/../../../evil.txt", "{folder}/{tmp}/evil.txt",
    "{tmp}/evil.txt", "{folder}/./evil.txt", "{folder}-sibling/evil.txt",
])
def test_download_refuses_a_key_outside_the_folder_and_writes_nothing(model_dir, tmp_path, stray):
    (tmp_path / "evil.txt").write_text("owned")  # what the stray key reads, wherever it points
    folder = str(model_dir / "epoch_001" / "model")
    key = stray.format(folder=folder, tmp=str(tmp_path))
    dest = tmp_path / "out" / "copy" / "model"
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(CheckpointError, match="object key .*evil.txt.* outside the download folder"):
        layout.download(pafs.PyFileSystem(_ListsAStrayKey(key)), folder, dest)
    assert sorted(tmp_path.rglob("*")) == before  # not the good files either, nor evil.txt anywhere


def test_download_copies_a_well_formed_listing(model_dir, tmp_path):
    folder = model_dir / "epoch_001" / "model"
    sha = layout.download(pafs.PyFileSystem(pafs.FSSpecHandler(fsspec.filesystem("file"))), str(folder), tmp_path / "copy")
    assert sha == resolve(folder).sha256
    assert sorted(p.name for p in (tmp_path / "copy").iterdir()) == sorted(p.name for p in folder.iterdir())


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
