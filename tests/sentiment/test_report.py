"""The report: each PNG is the plot it claims, report.html holds the metrics' numbers, and it opens
in headless Chromium with no console errors and every section shown (screenshot kept)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from sentiment.attribution import WordScore
from sentiment.evaluation import evaluate_multi_label, evaluate_predictions
from sentiment.metrics import sigmoid, softmax
from sentiment.report import SCENARIOS, TITLES, Example, write_report

NAMES = ["negative", "positive"]
SINGLE_LABEL_PLOTS = [name for name in TITLES if name != "per_label"]  # per_label: a multi-label model's
SECTIONS = ("summary", "curves", "confusion", "confidence", "reliability", "length", "words", "examples", "mistakes")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 800)
    logits = rng.normal(0, 1.2, (800, 2)) + 2.0 * np.eye(2)[labels]
    tokens = rng.integers(30, 1400, 800)
    metrics = evaluate_predictions(logits, labels, NAMES, tokens, tokens > 256, temperature=1.4)
    proba = softmax(logits)
    history = [{"epoch": e, "train_loss": 0.6 / e, "train_accuracy": 0.7 + 0.05 * e, "val_loss": 0.5 / e + 0.1,
                "val_accuracy": 0.75 + 0.04 * e} for e in (1, 2, 3)]
    words = {"positive": [WordScore("great", 0.4, 9), WordScore("fun", 0.2, 5)],
             "negative": [WordScore("worst", -0.6, 7), WordScore("<b>dull</b>", -0.3, 4)]}
    examples = [Example(t, e, "positive", 0.9) for t, e in SCENARIOS]
    mistakes = [Example("A <script>alert(1)</script> trap", "negative", "positive", 0.97)]
    meta = {"checkpoint": "/runs/r/epoch_003/model", "run": "r", "split": "test", "model": "tiny", "max_seq_length": 256,
            "truncation": "head_tail", "workers": 2, "device": "CPU", "reviews_per_s": 123.4, "skipped": 0,
            "attribution_target": "positive", "attribution_reviews": 200, "attribution_min_count": 3}
    out = tmp_path_factory.mktemp("report")
    files = write_report(out, metrics, NAMES, history, {"confidence": proba.max(1), "correct": proba.argmax(1) == labels},
                         examples, mistakes, words, meta)
    return files, metrics


def assert_is_the_plot(files: dict, name: str) -> None:
    path = files[name]
    assert path.name == f"{name}.png" and path.stat().st_size > 10_000
    image = Image.open(path)
    assert image.info["Title"] == TITLES[name]  # the title drawn on the figure, stored in the PNG
    assert image.width >= 500 and image.height >= 350
    pixels = np.asarray(image.convert("L"), dtype=float)
    assert pixels.std() > 10  # not a blank canvas
    assert (pixels < 128).mean() > 0.005  # some ink: lines, bars, text


@pytest.mark.parametrize("name", SINGLE_LABEL_PLOTS)
def test_each_png_is_the_plot_it_claims_and_not_blank(report, name):
    files, _ = report
    assert_is_the_plot(files, name)
    assert "per_label" not in files


def test_report_numbers_equal_the_metrics(report):
    files, metrics = report
    html = files["report"].read_text()
    for key in ("accuracy", "precision", "recall", "f1", "roc_auc", "log_loss", "ece"):
        assert f'id="m-{key}">{metrics[key]:.4f}<' in html
    assert f'id="m-temperature">{metrics["calibrated"]["temperature"]:.4f}<' in html
    assert f'id="m-cal-ece">{metrics["calibrated"]["ece"]:.4f}<' in html
    for name, cls in metrics["per_class"].items():
        assert f"<td>{name}</td><td class=\"num\">{cls['precision']:.4f}</td>" in html
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html  # escaped
    assert "src=\"http" not in html and "href=\"http" not in html  # self-contained: nothing fetched


@pytest.mark.browser
def test_report_opens_in_chromium_with_every_section(browser, report, artifacts):
    files, metrics = report
    errors: list[str] = []
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("request", lambda r: errors.append(f"fetched {r.url}") if not r.url.startswith(("file:", "data:")) else None)
    page.goto(files["report"].as_uri())
    for section in SECTIONS:
        assert page.locator(f"section#{section}").is_visible(), section
    widths = page.eval_on_selector_all("img", "imgs => imgs.map(i => i.complete ? i.naturalWidth : 0)")
    assert len(widths) == len(SINGLE_LABEL_PLOTS) and all(w > 0 for w in widths)
    assert page.locator("#m-accuracy").inner_text() == f"{metrics['accuracy']:.4f}"
    assert page.locator("section#examples tr").count() == 1 + len(SCENARIOS)
    page.screenshot(path=str(artifacts / "evaluation_report.png"), full_page=True)
    assert errors == []


def test_the_report_flags_a_weak_class_and_only_then(report, tmp_path):
    files, _ = report
    assert 'id="weak-classes"' not in files["report"].read_text()  # both classes fine
    names = ["low", "mid", "high"]
    labels = np.repeat([0, 1, 2], 40)
    logits = np.eye(3)[np.where(labels == 1, 0, labels)] * 3.0  # "mid" always predicted "low"
    metrics = evaluate_predictions(logits, labels, names, np.full(120, 50), np.zeros(120, bool))
    proba = softmax(logits)
    meta = {"checkpoint": "c", "run": "r", "split": "test", "model": "tiny", "max_seq_length": 64, "truncation": "head",
            "workers": 1, "device": "CPU", "reviews_per_s": 1.0, "skipped": 0}
    written = write_report(tmp_path, metrics, names, [], {"confidence": proba.max(1), "correct": proba.argmax(1) == labels},
                           [], [], {}, meta)
    html = written["report"].read_text()
    assert 'id="weak-classes"' in html and "<b>mid</b>: never predicted (40 of its reviews went to other classes)" in html


def test_a_multi_label_report_plots_each_label_and_shows_its_metrics(tmp_path):
    names = ["plot", "acting", "music"]
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 2, (300, 3))
    logits = rng.normal(0, 1.0, (300, 3)) + np.where(labels == 1, 1.5, -1.5)
    logits[:, 2] = -4.0  # music never predicted: flagged
    tokens = rng.integers(30, 600, 300)
    metrics = evaluate_multi_label(logits, labels, names, [0.5, 0.4, 0.5], tokens, tokens > 256)
    assert metrics["per_class"]["acting"]["threshold"] == 0.4 and metrics["count"] == 300
    meta = {"checkpoint": "c", "run": "r", "split": "test", "model": "tiny", "max_seq_length": 256, "truncation": "head",
            "workers": 1, "device": "CPU", "reviews_per_s": 1.0, "skipped": 0}
    sure = np.maximum(sigmoid(logits), 1 - sigmoid(logits))
    files = write_report(tmp_path, metrics, names, [], {"confidence": sure.reshape(-1), "correct": np.ones(900, bool)},
                         [], [], {}, meta)
    for name in ("confusion_matrix", "per_label", "reliability", "confidence", "accuracy_by_length"):
        assert_is_the_plot(files, name)
    html = files["report"].read_text()
    for key in ("accuracy", "f1", "micro_f1", "hamming_loss", "roc_auc", "log_loss", "ece"):
        assert f'id="m-{key}">{metrics[key]:.4f}<' in html
    assert "<th>subset accuracy</th>" in html and "Weak labels" in html and "<b>music</b>: never predicted" in html
