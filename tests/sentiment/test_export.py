"""ray_jobs.export and sentiment.export: ONNX exports verified before they are kept, on a tiny model; and
sentiment.backends, the ONNX Runtime sessions that load them (every backend gives the same outputs)."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import sentiment.export
from ray_jobs import export
from sentiment.attribution import explain
from sentiment.config import load_config
from sentiment.export import INT8_RECIPES, ExportError
from sentiment.layout import CONFIG_FILE, CheckpointError, resolve
from sentiment.model import build_model, load_tokenizer
from sentiment.model_folder import save_model_dir
from sentiment.predict import ExplainUnavailable, Predictor
from tests.support import make_checkpoint

ROOT = Path(__file__).resolve().parents[2]
TEXTS = ["A fun brain candy movie...good dialog.", "What a waste of time. " * 40, "bad", "superb acting"]


def plain_checkpoint(tiny_model_dir: Path, folder: Path) -> Path:
    """The tiny BERT at its default initialisation (seeded), its head biased to one class by a margin
    far above int8's error: near-constant outputs, which int8 keeps on any CPU (an unbiased head sits
    at the decision boundary, where int8 rounding flips a few of the 40 check reviews)."""
    cfg = load_config(None, [f"model.name_or_path={tiny_model_dir}", "data.max_seq_length=64"])
    torch.manual_seed(0)
    model = build_model(cfg.model)
    with torch.no_grad():
        model.classifier.bias.copy_(torch.tensor([2.0, -2.0]))
    return save_model_dir(model, load_tokenizer(str(tiny_model_dir)), cfg, {}, folder)


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


@pytest.fixture(scope="module")
def exported_varied(tiny_model_dir, small_imdb, tmp_path_factory):
    """The checkpoint whose outputs vary text to text with both variants, int8 kept whatever it loses."""
    model = make_checkpoint(tiny_model_dir, tmp_path_factory.mktemp("export-varied") / "model")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sentiment.export, "INT8_MAX_DROP", 1.0)
        return model, export.main(["--checkpoint", str(model), "--int8", "--data", str(small_imdb), "--check-reviews", "40"])


def test_fp32_is_kept_and_an_int8_that_loses_accuracy_is_not(exported):
    model, message = exported
    assert {p.name for p in (model / "onnx").iterdir()} == {"model.onnx", "export.json"}
    record = json.loads((model / "onnx" / "export.json").read_text())
    assert record["exports"]["onnx"]["check"]["max_probability_diff_vs_torch"] <= 1e-4
    assert [r["recipe"] for r in record["rejected"]["onnx-int8"]] == [name for name, _ in INT8_RECIPES]
    for r in record["rejected"]["onnx-int8"]:  # each recipe's figures, on the 40 check reviews
        assert r["fp32_accuracy"] == record["exports"]["onnx"]["check"]["accuracy"]
        assert r["drop"] == pytest.approx(r["fp32_accuracy"] - r["accuracy"])
        assert r["accuracy"] * 40 == pytest.approx(round(r["accuracy"] * 40))
    assert message.startswith("onnx-int8 not written: accuracy fell more than 0.5 point below fp32 with every recipe")
    assert resolve(model).exports.keys() == {"onnx"}


def test_both_variants_are_written_with_their_checks(exported_int8):
    model, record = exported_int8
    assert {p.name for p in (model / "onnx").iterdir()} == {"model.onnx", "model_quantized.onnx", "export.json"}
    assert json.loads((model / "onnx" / "export.json").read_text()) == record
    fp32, int8 = record["exports"]["onnx"], record["exports"]["onnx-int8"]
    assert record["inputs"] == ["input_ids", "attention_mask", "token_type_ids"]  # optimum's, for a BERT with token types
    assert fp32["check"]["max_probability_diff_vs_torch"] <= 1e-4 and record["check_reviews"] == 40
    assert int8["check"]["drop"] <= 0.005 and int8["bytes"] < fp32["bytes"]
    assert int8["sha256"] == hashlib.sha256((model / "onnx" / "model_quantized.onnx").read_bytes()).hexdigest()
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
    (broken / "onnx" / "model_quantized.onnx").write_bytes(b"not a graph")
    with pytest.raises(CheckpointError, match="model_quantized.onnx cannot be loaded by ONNX Runtime"):
        Predictor.load(broken, backend="onnx-int8")
    with pytest.raises(CheckpointError, match="backend 'tensorrt' is not one of"):
        Predictor.load(model, backend="tensorrt")


def test_an_export_under_the_old_int8_name_is_refused_with_the_command_that_remakes_it(exported_int8, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(exported_int8[0], old)
    (old / "onnx" / "model_quantized.onnx").rename(old / "onnx" / "model-int8.onnx")
    record = json.loads((old / "onnx" / "export.json").read_text())
    record["exports"]["onnx-int8"]["file"] = "model-int8.onnx"
    (old / "onnx" / "export.json").write_text(json.dumps(record))
    for backend in ("onnx-int8", "auto"):
        with pytest.raises(CheckpointError, match=r"onnx/model-int8.onnx is an export under an older name \(now "
                           r"onnx/model_quantized.onnx, optimum's\); re-make it with python -m ray_jobs.export --checkpoint .*old --int8"):
            Predictor.load(old, backend=backend)
    assert Predictor.load(old, backend="onnx").backend.name == "onnx" and Predictor.load(old).backend.name == "torch"


def test_the_card_names_the_onnx_files_and_how_to_run_them(exported, exported_int8):
    from huggingface_hub import ModelCard

    fp32_only, both = (ModelCard.load(model / "README.md") for model in (exported[0], exported_int8[0]))
    for card in (fp32_only, both):
        assert (card.data.library_name, card.data.pipeline_tag) == ("transformers", "text-classification")
        assert "onnx" in card.data.tags and "`onnx/model.onnx`: fp32" in card.text and "import onnxruntime as ort" in card.text
    assert "model_quantized" not in fp32_only.text and 'file_name="model.onnx"' in fp32_only.text
    assert "`onnx/model_quantized.onnx`: int8" in both.text and 'file_name="model_quantized.onnx"' in both.text
    assert "Inputs `input_ids`, `attention_mask`, `token_type_ids`" in both.text and "verified on 40 validation reviews" in both.text


def real_reviews(small_imdb: Path, n: int = 32) -> list[str]:
    """The first ``n`` reviews of the fixture's test split (IMDB's test split when $IMDB_DATA_DIR is set),
    and one text made of them all, longer than any training length."""
    texts = list(pd.read_parquet(small_imdb / "test.parquet")["text"][:n])
    return [*texts, " ".join(texts)]


def head_truncating(folder: Path, dest: Path) -> Path:
    """A copy of a model folder whose config keeps the head of a long text, as ``truncation=True`` does."""
    shutil.copytree(folder, dest)
    cfg = json.loads((dest / CONFIG_FILE).read_text())
    cfg["data"]["truncation"] = "head"
    (dest / CONFIG_FILE).write_text(json.dumps(cfg))
    return dest


@pytest.mark.parametrize("backend, file, tolerance", [("onnx", "model.onnx", 1e-5), ("onnx-int8", "model_quantized.onnx", 1e-4)])
def test_plain_onnxruntime_on_the_standard_names_agrees_with_the_onnx_backend(backend, file, tolerance, exported_varied,
                                                                              small_imdb, tmp_path):
    import onnxruntime as ort
    from transformers import AutoTokenizer

    folder = head_truncating(exported_varied[0], tmp_path / "model")
    texts = real_reviews(small_imdb)
    tokenizer = AutoTokenizer.from_pretrained(folder)  # the folder's tokenizer and the card's recipe, nothing of this project
    session = ort.InferenceSession(str(folder / "onnx" / file), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask", "token_type_ids"]
    assert [o.name for o in session.get_outputs()] == ["logits"]
    clean = [re.sub(r"<br\s*/?>", " ", t, flags=re.IGNORECASE).strip() for t in texts]
    batch = tokenizer(clean, truncation=True, padding=True, return_tensors="np")
    assert batch["input_ids"].shape[1] == 64  # long texts are cut to the training length
    (logits,) = session.run(["logits"], {i.name: batch[i.name] for i in session.get_inputs()})
    plain = np.exp(logits - logits.max(axis=1, keepdims=True))
    plain /= plain.sum(axis=1, keepdims=True)
    ours = Predictor.load(folder, backend=backend).predict(texts, return_proba=True)
    assert plain.argmax(axis=1).tolist() == ours.argmax(axis=1).tolist()
    np.testing.assert_allclose(plain, ours, atol=tolerance, rtol=0)
    assert np.ptp(ours[:, 1]) > 0.05  # outputs that vary: a wrong input would show
    print(f"{backend}: max |p_plain - p_ours| {np.abs(plain - ours).max():.2e}, spread of p {np.ptp(ours[:, 1]):.3f}")


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

    from tests.support import start_serve, stop_serve

    model, record = exported_int8
    monkeypatch.delenv("SENTIMENT_API_KEY", raising=False)
    try:
        url = start_serve({"checkpoint": str(model), "num_cpus": 1, "max_replicas": 1})  # backend auto on a CPU
        info = requests.get(f"{url}/v1/model", timeout=30).json()
        assert (info["backend"], info["file"]) == ("onnx-int8", "model_quantized.onnx")
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
