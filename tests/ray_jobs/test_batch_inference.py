"""Batch prediction and evaluation on a real local Ray (Ray Data actors), a real trained run,
checked against the in-process Predictor and scikit-learn."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.metrics import accuracy_score, roc_auc_score

from ray_jobs import evaluate, predict
from sentiment.layout import CALIBRATION_FILE, CheckpointError
from sentiment.predict import Predictor
from sentiment.report import TITLES
from tests.conftest import imdb_dir
from tests.support import make_checkpoint
from tests.wandb_log import logged_keys, records

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def run_dir(local_ray, smoke_run) -> Path:
    """The session's smoke training run (result.json, epoch checkpoints, history)."""
    return Path(smoke_run[1]["run_dir"])


@pytest.fixture(scope="module")
def reviews(small_imdb, tmp_path_factory) -> Path:
    """400 real (or synthetic) reviews in a CSV, with ids, four empty texts among them and one
    review longer than any model's window (synthetic reviews are short)."""
    df = pd.read_parquet(small_imdb / "train.parquet").reset_index(drop=True)
    df.loc[7, "text"] = " ".join(df["text"].head(12))
    df.insert(0, "review_no", np.arange(len(df)) * 7 % 1000)  # ids not in sorted order
    df.loc[[3, 50, 51, 399], "text"] = ["", "   ", None, "\n"]
    path = tmp_path_factory.mktemp("in") / "reviews.csv"
    df.to_csv(path, index=False)
    return path


def test_ray_data_predictions_equal_the_predictor_in_input_order(local_ray, tiny_model_dir, reviews, tmp_path):
    model = make_checkpoint(tiny_model_dir, tmp_path / "model")
    (model / CALIBRATION_FILE).write_text(json.dumps({"temperature": 1.7}))  # applied on both sides
    out = tmp_path / "predictions.parquet"
    returned = predict.main(["--checkpoint", str(model), "--input", str(reviews), "--output", str(out),
                             "--workers", "2", "--batch-size", "16"])
    got = pd.read_parquet(out)
    pd.testing.assert_frame_equal(returned.reset_index(drop=True), got, check_dtype=False)
    source = pd.read_csv(reviews)
    assert got["review_no"].tolist() == source["review_no"].tolist()  # every row, in input order
    empty = source["text"].fillna("").str.strip().eq("")
    assert empty.sum() == 4 and got.loc[empty, "predicted_label"].isna().all() and got.loc[empty, "score"].isna().all()
    scored = got[~empty]
    expected = Predictor.load(model).predict(source.loc[~empty, "text"].tolist(), return_proba=True)
    np.testing.assert_allclose(scored[["prob_negative", "prob_positive"]].to_numpy(dtype=float), expected, atol=1e-5)
    assert scored["predicted_label"].tolist() == [["negative", "positive"][i] for i in expected.argmax(1)]
    assert expected[:, 1].std() > 0.01  # outputs differ review to review: a wrong order would show
    assert scored["truncated"].any() and (scored["num_tokens"] > 0).all()


def test_explained_batch_predictions_of_whole_reviews_carry_each_reviews_key_tokens(local_ray, tiny_model_dir, reviews, tmp_path):
    from sentiment.attribution import explain

    model = make_checkpoint(tiny_model_dir, tmp_path / "model")
    source = pd.read_csv(reviews).dropna(subset=["text"])
    source = source[source["text"].str.strip() != ""].head(12)
    source.iloc[0, source.columns.get_loc("text")] = " ".join(source["text"])  # long even in synthetic data
    source.to_csv(tmp_path / "few.csv", index=False)
    out = tmp_path / "explained.jsonl"
    got = predict.main(["--checkpoint", str(model), "--input", str(tmp_path / "few.csv"), "--output", str(out),
                        "--explain", "--explain-steps", "4", "--explain-top-k", "3", "--long-reviews", "chunks"])
    expected = explain(Predictor.load(model, long_reviews="chunks"), source["text"].tolist(), top_k=3, n_steps=4)
    assert got["windows"].tolist() == [e.windows for e in expected] and got["windows"].max() > 1
    assert not got["truncated"].any()
    written = pd.read_json(out, lines=True)
    for row, want in zip(written["key_tokens"], expected):
        tokens = json.loads(row)
        assert [t["word"] for t in tokens] == [k.word for k in want.key_tokens]
        assert [t["score"] for t in tokens] == pytest.approx([k.score for k in want.key_tokens], abs=1e-3)
    assert (got["key_tokens"].str.len() > 2).any()  # some review has key tokens (not all "[]")


def test_explain_on_a_backend_without_gradients_is_refused_before_anything_runs(tiny_model_dir, reviews, tmp_path):
    out = tmp_path / "out.parquet"
    with pytest.raises(predict.InputError, match="--explain needs gradients, which backend 'onnx' cannot give"):
        predict.main(["--checkpoint", str(tmp_path / "any"), "--input", str(reviews), "--output", str(out),
                      "--explain", "--backend", "onnx"])
    assert not out.exists()


def _no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if p.name.startswith(".tmp-")]


@pytest.mark.parametrize("case, message", [
    ("no_column", "has no column 'review'"),
    ("missing_input", "does not exist"),
    ("bad_extension", "unknown format '.txt'"),
    ("output_exists", "exists; pass --overwrite"),
    ("no_checkpoint", "does not exist"),
    ("not_a_classifier", "is not a sequence classifier"),
    ("column_clash", "would overwrite"),
])
def test_bad_input_fails_clearly_and_writes_nothing(case, message, tiny_model_dir, reviews, tmp_path):
    model = make_checkpoint(tiny_model_dir, tmp_path / "model")
    out = tmp_path / "out.parquet"
    args = {"--checkpoint": str(model), "--input": str(reviews), "--output": str(out)}
    if case == "no_column":
        args["--text-column"] = "review"
    elif case == "missing_input":
        args["--input"] = str(tmp_path / "nope.csv")
    elif case == "bad_extension":
        args["--input"] = str(tmp_path / "reviews.txt")
    elif case == "output_exists":
        out.write_text("keep me")
    elif case == "no_checkpoint":
        args["--checkpoint"] = str(tmp_path / "missing-run")
    elif case == "not_a_classifier":
        config = json.loads((model / "config.json").read_text())
        (model / "config.json").write_text(json.dumps(config | {"architectures": ["BertForMaskedLM"]}))
    elif case == "column_clash":
        pd.read_csv(reviews).assign(score=1.0).to_csv(tmp_path / "clash.csv", index=False)
        args["--input"] = str(tmp_path / "clash.csv")
    with pytest.raises((predict.InputError, CheckpointError), match=re.escape(message)):
        predict.main([x for kv in args.items() for x in kv])
    if case == "output_exists":
        assert out.read_text() == "keep me"
    else:
        assert not out.exists()
    assert _no_temp_files(tmp_path)


def test_evaluate_writes_metrics_report_and_wandb_for_a_trained_run(run_dir, small_imdb, artifacts):
    returned = evaluate.main(["--checkpoint", str(run_dir), "--data", str(small_imdb), "--calibrate", "--long-reviews", "chunks",
                              "--attribution-samples", "24", "--ig-steps", "4", "--wandb", "offline"])
    best = json.loads((run_dir / "result.json").read_text())["best_checkpoint"]
    out = Path(best) / "eval_test"
    metrics = json.loads((out / "metrics.json").read_text())
    assert returned["accuracy"] == metrics["accuracy"]
    table = pd.read_parquet(out / "predictions.parquet")
    truth, predicted = table["label"], table["predicted"]
    assert metrics["count"] == len(table) == 64
    assert metrics["accuracy"] == pytest.approx(accuracy_score(truth, predicted))
    assert metrics["roc_auc"] == pytest.approx(roc_auc_score(truth == "positive", table["prob_positive"]))
    # long reviews scored whole (chunks), and truncated in the same pass for the comparison
    long = table["num_tokens"] > metrics["meta"]["max_seq_length"]
    # synthetic reviews are short and (table.loc[~long, "windows"] == 1).all()
    assert (long.any() or imdb_dir() is None) and (table.loc[long, "windows"] > 1).all()
    assert not table["truncated"].any() and metrics["by_fit"]["longer"]["count"] == long.sum()
    chunked = Predictor.load(Path(best) / "model", long_reviews="chunks").predict(table["text"].tolist())
    plain = Predictor.load(Path(best) / "model").predict(table["text"].tolist())
    assert table["predicted"].tolist() == chunked
    assert metrics["truncated_scoring"]["accuracy"] == pytest.approx(np.mean(np.asarray(plain) == truth))
    assert metrics["truncated_scoring"]["by_fit"]["within"] == metrics["by_fit"]["within"]
    assert metrics["meta"]["long_reviews"] == "chunks"
    # calibration: fitted on validation, saved with the checkpoint, used by later predictions
    temperature = json.loads((Path(best) / "model" / CALIBRATION_FILE).read_text())["temperature"]
    assert metrics["calibrated"]["temperature"] == pytest.approx(temperature) and temperature != 1.0
    assert Predictor.load(Path(best) / "model").temperature == pytest.approx(temperature)
    html = (out / "report.html").read_text()
    for key in ("accuracy", "f1", "roc_auc", "log_loss", "ece"):
        assert f'id="m-{key}">{metrics[key]:.4f}<' in html
    plotted = {name: title for name, title in TITLES.items() if name != "per_label"}  # per label: multi-label models
    for name, title in plotted.items():
        assert Image.open(out / f"{name}.png").info["Title"] == title
    assert not (out / "per_label.png").exists()
    assert html.count("<tr><td>") >= 2  # the training history table: both epochs
    shutil.copy(out / "report.html", artifacts / "evaluation_report_trained.html")
    # W&B: summary metrics, every plot, W&B's confusion matrix, the predictions table, the checkpoint link
    [run_file] = (out / "wandb").glob("wandb/offline-run-*/run-*.wandb")
    history, summary = logged_keys(run_file)
    assert {"accuracy", "roc_auc", "ece", "calibrated_temperature", "checkpoint_artifact"} <= summary
    logged = {f"eval/{name}" for name in plotted} | {"eval/predictions", "eval/confusion_matrix_plot_table"}
    assert {f"{key}/_type" for key in logged} <= history  # images and tables (W&B logs them as nested keys)
    artifacts_logged = [r.artifact for r in records(run_file) if r.WhichOneof("record_type") == "artifact"]
    assert any(a.type == "evaluation" and "evaluated-model-smoke-epoch" in a.name for a in artifacts_logged)
    # running again without --overwrite is refused and leaves the report alone
    before = (out / "metrics.json").read_text()
    refused = subprocess.run([sys.executable, "-m", "ray_jobs.evaluate", "--checkpoint", str(run_dir), "--data", str(small_imdb)],
                             cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and refused.stderr.strip().splitlines()[-1].startswith("error: output folder")
    assert (out / "metrics.json").read_text() == before


def test_the_command_line_says_error_and_exits_2(tiny_model_dir, reviews, tmp_path):
    model = make_checkpoint(tiny_model_dir, tmp_path / "model")
    out = subprocess.run([sys.executable, "-m", "ray_jobs.predict", "--checkpoint", str(model), "--input", str(reviews),
                          "--output", str(tmp_path / "p.parquet"), "--text-column", "review"],
                         cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, timeout=120)
    [line] = out.stderr.strip().splitlines()
    assert out.returncode == 2 and line.startswith(f"error: input {str(reviews)!r} has no column 'review' (columns: review_no,")
