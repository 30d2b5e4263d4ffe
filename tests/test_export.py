"""ray_jobs.export and sentiment.export: ONNX exports verified before they are kept, on a tiny model."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ray_jobs import export
import sentiment.export
from sentiment.attribution import explain
from sentiment.config import load_config
from sentiment.export import INT8_RECIPES, ExportError
from sentiment.layout import CONFIG_FILE, CheckpointError, resolve, save_model_dir
from sentiment.model import build_model, load_tokenizer
from sentiment.predict import ExplainUnavailable, Predictor
from tests.test_serve import make_checkpoint

ROOT = Path(__file__).resolve().parent.parent
TEXTS = ["A fun brain candy movie...good dialog.", "What a waste of time. " * 40, "bad", "superb acting"]


def plain_checkpoint(tiny_model_dir: Path, folder: Path) -> Path:
    """The tiny BERT at its default initialisation: near-constant outputs, which int8 keeps."""
    cfg = load_config(None, [f"model.name_or_path={tiny_model_dir}", "data.max_seq_length=64"])
    return save_model_dir(build_model(cfg.model), load_tokenizer(str(tiny_model_dir)), cfg, {}, folder)


@pytest.fixture(scope="module")
def exported(tiny_model_dir, small_imdb, tmp_path_factory):
    """A tiny checkpoint whose outputs vary text to text, exported under a bar no int8 can pass
    (any accuracy drop refused, even none): fp32 is kept, int8 refused with every recipe."""
    model = make_checkpoint(tiny_model_dir, tmp_path_factory.mktemp("export") / "model")
    with pytest.MonkeyPatch.context() as patch, pytest.raises(ExportError) as refused:
        patch.setattr(sentiment.export, "INT8_MAX_DROP", -1.0)
        export.main(["--checkpoint", str(model), "--int8", "--data", str(small_imdb), "--check-reviews", "40"])
    return model, str(refused.value)


@pytest.fixture(scope="module")
def exported_int8(tiny_model_dir, small_imdb, tmp_path_factory):
    model = plain_checkpoint(tiny_model_dir, tmp_path_factory.mktemp("export-int8") / "model")
    return model, export.main(["--checkpoint", str(model), "--int8", "--data", str(small_imdb), "--check-reviews", "40"])


def test_fp32_is_kept_and_an_int8_that_loses_accuracy_is_not(exported):
    model, message = exported
    assert {p.name for p in (model / "onnx").iterdir()} == {"model.onnx", "export.json"}
    record = json.loads((model / "onnx" / "export.json").read_text())
    assert record["exports"]["onnx"]["check"]["max_probability_diff_vs_torch"] <= 1e-4
    assert [r["recipe"] for r in record["rejected"]["onnx-int8"]] == [name for name, _ in INT8_RECIPES]
    assert all(0 <= r["accuracy"] <= 1 and r["fp32_accuracy"] == record["exports"]["onnx"]["check"]["accuracy"]
               for r in record["rejected"]["onnx-int8"])
    assert message.startswith("onnx-int8 not written: accuracy fell more than 0.5 point below fp32 with every recipe")
    assert resolve(model).exports.keys() == {"onnx"}


def test_both_variants_are_written_with_their_checks(exported_int8):
    model, record = exported_int8
    assert {p.name for p in (model / "onnx").iterdir()} == {"model.onnx", "model-int8.onnx", "export.json"}
    assert json.loads((model / "onnx" / "export.json").read_text()) == record
    fp32, int8 = record["exports"]["onnx"], record["exports"]["onnx-int8"]
    assert fp32["check"]["max_probability_diff_vs_torch"] <= 1e-4 and record["check_reviews"] == 40
    assert int8["check"]["drop"] <= 0.005 and int8["bytes"] < fp32["bytes"]
    assert int8["sha256"] == hashlib.sha256((model / "onnx" / "model-int8.onnx").read_bytes()).hexdigest()
    assert Predictor.load(model, backend="auto").backend.name == "onnx-int8"  # the CPU's fastest verified one


@pytest.mark.parametrize("which, backend, tolerance", [("exported", "onnx", 1e-4), ("exported_int8", "onnx-int8", 0.02)])
def test_every_backend_gives_the_same_outputs(which, backend, tolerance, request):
    model = request.getfixturevalue(which)[0]
    reference = Predictor.load(model).predict_details(TEXTS)
    other = Predictor.load(model, backend=backend)
    got = other.predict_details(TEXTS)
    np.testing.assert_allclose([g.probabilities["positive"] for g in got],
                               [r.probabilities["positive"] for r in reference], atol=tolerance)
    assert [(g.num_tokens, g.truncated) for g in got] == [(r.num_tokens, r.truncated) for r in reference]
    assert other.served_file[1] == resolve(model).exports[backend]["sha256"]


def test_a_backend_without_an_export_or_a_corrupt_one_fails_clearly(exported, exported_int8, tiny_model_dir, tmp_path):
    bare = make_checkpoint(tiny_model_dir, tmp_path / "bare")
    with pytest.raises(CheckpointError, match="no verified onnx-int8 export; make it with python -m ray_jobs.export"):
        Predictor.load(bare, backend="onnx-int8")
    assert Predictor.load(bare, backend="auto").backend.name == "torch"
    model, _ = exported_int8
    broken = tmp_path / "broken"
    shutil.copytree(model, broken)
    (broken / "onnx" / "model-int8.onnx").write_bytes(b"not a graph")
    with pytest.raises(CheckpointError, match="model-int8.onnx cannot be loaded by ONNX Runtime"):
        Predictor.load(broken, backend="onnx-int8")
    with pytest.raises(CheckpointError, match="backend 'tensorrt' is not one of"):
        Predictor.load(model, backend="tensorrt")


def test_explaining_on_an_onnx_backend_names_the_backend(exported_int8):
    predictor = Predictor.load(exported_int8[0], backend="onnx-int8")
    with pytest.raises(ExplainUnavailable, match="need gradients, which backend 'onnx-int8' cannot give: use backend 'torch'"):
        explain(predictor, ["a fine film"])


def test_too_few_check_reviews_writes_nothing(tiny_model_dir, small_imdb, tmp_path):
    model = make_checkpoint(tiny_model_dir, tmp_path / "model")
    with pytest.raises(ExportError, match="needs >= 1000 reviews of the validation split, got"):
        export.main(["--checkpoint", str(model), "--data", str(small_imdb)])
    assert not (model / "onnx").exists() and not list(tmp_path.glob("**/.tmp-*"))


def test_exporting_what_is_not_a_classifier_says_so_and_exits_2(tiny_model_dir, small_imdb, tmp_path):
    model = make_checkpoint(tiny_model_dir, tmp_path / "model")
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps(config | {"architectures": ["BertForMaskedLM"]}))
    out = subprocess.run([sys.executable, "-m", "ray_jobs.export", "--checkpoint", str(model), "--data", str(small_imdb)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    [line] = out.stderr.strip().splitlines()
    assert out.returncode == 2 and line.startswith("error: ") and "is not a sequence classifier" in line
    assert not (model / "onnx").exists()


@pytest.mark.ray
def test_a_replica_serves_the_verified_int8_export_and_says_so(exported_int8, tiny_model_dir, tmp_path, monkeypatch):
    import requests

    from tests.test_serve import start_serve, stop_serve

    model, record = exported_int8
    monkeypatch.delenv("SENTIMENT_API_KEY", raising=False)
    try:
        url = start_serve({"checkpoint": str(model), "num_cpus": 1, "max_replicas": 1})  # backend auto on a CPU
        info = requests.get(f"{url}/v1/model", timeout=30).json()
        assert (info["backend"], info["file"]) == ("onnx-int8", "model-int8.onnx")
        assert info["sha256"] == record["exports"]["onnx-int8"]["sha256"] and info["weights_sha256"] == resolve(model).sha256
        served = requests.post(f"{url}/v1/predict", json={"texts": TEXTS}, timeout=60).json()["predictions"]
        local = Predictor.load(model, backend="onnx-int8").predict_details(TEXTS)
        # Dynamic int8 quantizes activations with one scale per batch, so a text's probability moves a
        # little with the texts batched beside it (2e-5 seen here): labels agree, probabilities nearly.
        assert [s["label"] for s in served] == [p.label for p in local]
        assert [s["probabilities"]["positive"] for s in served] == pytest.approx([p.probabilities["positive"] for p in local], abs=1e-3)
        # Explained by the fp32 explainer, toward the int8 replica's own label: the answer is the plain one.
        (plain,) = requests.post(f"{url}/v1/predict", json={"text": TEXTS[0]}, timeout=60).json()["predictions"]
        (explained,) = requests.post(f"{url}/v1/predict", json={"text": TEXTS[0], "explain": True}, timeout=60).json()["predictions"]
        assert isinstance(explained.pop("key_tokens"), list)
        assert explained["label"] == plain["label"] and explained["probabilities"] == pytest.approx(plain["probabilities"], abs=1e-3)
        assert requests.get(f"{url}/healthz", timeout=30).json()["explain"] is True
    finally:
        stop_serve()
    from serve.app import build_app

    with pytest.raises(CheckpointError, match="no verified onnx-int8 export"):  # before anything is deployed
        build_app({"checkpoint": str(make_checkpoint(tiny_model_dir, tmp_path / "bare")), "backend": "onnx-int8"})


@pytest.mark.bench
def test_backends_benchmark_smoke_run_prints_the_ratios_last(small_imdb):
    import os

    out = subprocess.run([sys.executable, "-m", "bench.inference_backends", "--smoke"], cwd=ROOT, capture_output=True,
                         text=True, timeout=600, env={**os.environ, "IMDB_DATA_DIR": os.environ.get("IMDB_DATA_DIR", str(small_imdb))})
    assert out.returncode == 0, out.stderr[-3000:]
    last = out.stdout.strip().splitlines()[-2:]
    assert [line.split(" / ")[0] for line in last] == ["onnx", "onnx-int8"]
    assert all(float(line.split(": ")[1].split("x")[0]) > 0 for line in last)


@pytest.mark.parametrize("native_bf16", [False, True])
def test_auto_serves_a_bf16_trained_checkpoint_in_torch_bf16_where_the_cpu_runs_it(exported_int8, tmp_path, monkeypatch, native_bf16):
    model = tmp_path / "bf16-trained"
    shutil.copytree(exported_int8[0], model)
    cfg = json.loads((model / CONFIG_FILE).read_text())
    cfg["train"]["precision"] = "bf16"
    (model / CONFIG_FILE).write_text(json.dumps(cfg))
    monkeypatch.setattr("sentiment.precision.cpu_has_fast_bf16", lambda: native_bf16)
    backend = Predictor.load(model, backend="auto").backend
    assert (backend.name, backend.dtype) == (("torch", "bfloat16") if native_bf16 else ("onnx-int8", "int8"))
    assert Predictor.load(exported_int8[0], backend="auto").backend.name == "onnx-int8"  # trained in fp32
