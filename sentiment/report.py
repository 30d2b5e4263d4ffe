"""The evaluation report: matplotlib PNGs and one self-contained ``report.html`` (images embedded).

Each PNG carries its title in the file's metadata (``Title``), the same string drawn on the plot,
so a reader (or a test) can tell which plot a file is without looking at it.
"""

from __future__ import annotations

import base64
import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, never a window

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from jinja2 import Environment, PackageLoader  # noqa: E402

from sentiment.attribution import WordScore  # noqa: E402
from sentiment.metrics import WEAK_F1  # noqa: E402

# The seed's three scenarios: the examples every report shows, with the answer people expect.
SCENARIOS = (
    ("This movie is an absolute masterpiece! The acting was brilliant and the plot kept me engaged "
     "throughout. Highly recommend!", "positive"),
    ("What a waste of time. The plot was confusing, acting was terrible, and I couldn't wait for it to end.",
     "negative"),
    ("While the cinematography was stunning, the weak storyline and poor character development ruined "
     "the experience.", "negative"),
)
TITLES = {
    "training_curves": "Training and validation loss and accuracy per epoch",
    "confusion_matrix": "Confusion matrix",
    "per_label": "Precision, recall and F1 of each label",
    "confidence": "Confidence of correct and incorrect predictions",
    "reliability": "Reliability diagram",
    "accuracy_by_length": "Accuracy by review length",
    "top_words": "Most influential words",
}


@dataclass
class Example:
    """One row of an examples table."""

    text: str
    expected: str
    predicted: str
    confidence: float


def _save(fig: plt.Figure, path: Path, title: str) -> Path:
    fig.suptitle(title, fontsize=13, fontweight="bold")
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata={"Title": title})
    plt.close(fig)
    return path


def plot_training_curves(history: list[dict[str, float]], path: Path) -> Path:
    """Loss and accuracy per epoch, training and validation (whichever the history has)."""
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    epochs = [h["epoch"] for h in history]
    for ax, metric in ((ax_loss, "loss"), (ax_acc, "accuracy")):
        for split, style in (("train", "o-"), ("val", "s--")):
            values = [h.get(f"{split}_{metric}") for h in history]
            if all(v is not None for v in values):
                ax.plot(epochs, values, style, label={"train": "training", "val": "validation"}[split])
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.set_xticks(epochs)
        ax.grid(alpha=0.3)
        ax.legend()
    return _save(fig, path, TITLES["training_curves"])


def plot_confusion_matrix(matrix: list[list[int]], label_names: list[str], path: Path) -> Path:
    """Counts, with each class's recall (rows) and precision (columns) on the axes."""
    cm = np.asarray(matrix)
    recall = cm.diagonal() / np.maximum(cm.sum(axis=1), 1)
    precision = cm.diagonal() / np.maximum(cm.sum(axis=0), 1)
    fig, ax = plt.subplots(figsize=(5.5, 4.8))
    ax.imshow(cm, cmap="Blues")
    for (i, j), count in np.ndenumerate(cm):
        ax.text(j, i, f"{count}", ha="center", va="center", color="white" if count > cm.max() / 2 else "black", fontsize=12)
    ax.set_xticks(range(len(label_names)), [f"{n}\nprecision {p:.3f}" for n, p in zip(label_names, precision)])
    ax.set_yticks(range(len(label_names)), [f"{n}\nrecall {r:.3f}" for n, r in zip(label_names, recall)])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    return _save(fig, path, TITLES["confusion_matrix"])


def plot_label_confusion(matrices: list[list[list[int]]], label_names: list[str], path: Path) -> Path:
    """A multi-label model's 2x2 counts per label (without or with it: true rows, predicted columns),
    side by side."""
    fig, axes = plt.subplots(1, len(label_names), figsize=(2.6 * len(label_names) + 0.6, 3.2), squeeze=False)
    for ax, name, matrix in zip(axes[0], label_names, matrices):
        cm = np.asarray(matrix)
        ax.imshow(cm, cmap="Blues")
        for (i, j), count in np.ndenumerate(cm):
            ax.text(j, i, f"{count}", ha="center", va="center", color="white" if count > cm.max() / 2 else "black")
        ax.set_xticks([0, 1], ["without", "with"])
        ax.set_yticks([0, 1], ["without", "with"])
        ax.set_title(name)
        ax.set_xlabel("predicted")
    axes[0][0].set_ylabel("true")
    return _save(fig, path, TITLES["confusion_matrix"])


def plot_per_label(per_class: dict[str, dict[str, float]], path: Path) -> Path:
    """Precision, recall and F1 of each label as grouped bars, its support under its name."""
    names = list(per_class)
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.6 * len(names) + 2), 4))
    for k, (metric, color) in enumerate((("precision", "#4c72b0"), ("recall", "#dd8452"), ("f1", "#55a868"))):
        ax.bar(x + (k - 1) * 0.27, [per_class[n][metric] for n in names], 0.27, label=metric, color=color)
    ax.axhline(WEAK_F1, color="grey", linestyle=":", label=f"weak F1 ({WEAK_F1})")
    ax.set_xticks(x, [f"{n}\n{per_class[n]['support']} texts" for n in names])
    ax.set_ylim(0, 1.05)
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path, TITLES["per_label"])


def plot_confidence(confidence: np.ndarray, correct: np.ndarray, path: Path) -> Path:
    """Histogram of top-class probability, correct and incorrect predictions apart."""
    fig, ax = plt.subplots(figsize=(7, 4))
    lo = min(0.5, float(confidence.min()))
    bins = np.linspace(lo, 1.0, 26)
    ax.hist(confidence[correct], bins=bins.tolist(), alpha=0.7, label=f"correct ({int(correct.sum())})", color="tab:green")
    ax.hist(confidence[~correct], bins=bins.tolist(), alpha=0.7, label=f"incorrect ({int((~correct).sum())})", color="tab:red")
    ax.set_yscale("log")
    ax.set_xlabel("confidence (probability of the predicted class)")
    ax.set_ylabel("reviews (log scale)")
    ax.legend()
    return _save(fig, path, TITLES["confidence"])


def plot_reliability(metrics: dict[str, Any], path: Path) -> Path:
    """Accuracy against confidence per bin, before and (if fitted) after temperature scaling."""
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.plot([0, 1], [0, 1], ":", color="gray", label="perfect calibration")
    series = [("raw", metrics["reliability"], metrics["ece"], "o-")]
    if "calibrated" in metrics:
        cal = metrics["calibrated"]
        series.append((f"T = {cal['temperature']:.2f}", cal["reliability"], cal["ece"], "s--"))
    for name, bins, ece, style in series:
        ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], style, label=f"{name} (ECE {ece:.4f})")
    ax.set_xlabel("mean confidence in bin")
    ax.set_ylabel("accuracy in bin")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    return _save(fig, path, TITLES["reliability"])


def plot_accuracy_by_length(metrics: dict[str, Any], max_seq_length: int, path: Path) -> Path:
    """Accuracy per token-length bucket, with counts; the model's length marked. With chunked
    scoring (``metrics["truncated_scoring"]``), truncated and chunked bars side by side."""
    buckets = metrics["by_length"]
    plain = metrics.get("truncated_scoring")
    fig, ax = plt.subplots(figsize=(8, 4))
    xs = np.arange(len(buckets))
    series = [("chunks", buckets, "tab:blue")]
    if plain:
        series = [("truncated", plain["by_length"], "tab:gray"), *series]
    width = 0.8 / len(series)
    for k, (name, values, color) in enumerate(series):
        bars = ax.bar(xs + (k - (len(series) - 1) / 2) * width, [b["accuracy"] for b in values], width, color=color,
                      label=name if plain else None)
        for bar, b in zip(bars, values):
            ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height(), f"n={b['count']}", ha="center", va="bottom",
                    fontsize=7)
    ax.set_xticks(list(xs), [b["bucket"] for b in buckets])
    how = "longer reviews scored both ways" if plain else "longer reviews are cut"
    ax.set_xlabel(f"review length in tokens (model reads {max_seq_length}; {how})")
    ax.set_ylabel("accuracy")
    if plain:
        ax.legend(loc="upper right", ncols=2)
    lows = [b["accuracy"] for _, values, _ in series for b in values]
    ax.set_ylim(min(0.5, min(lows) - 0.05), 1.0)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path, TITLES["accuracy_by_length"])


def plot_top_words(words: dict[str, list[WordScore]], target: str, path: Path) -> Path:
    """Horizontal bars: words pushing toward ``target`` (right) and away from it (left)."""
    rows = words["negative"][::-1] + words["positive"][::-1]
    fig, ax = plt.subplots(figsize=(7, max(4.0, 0.28 * len(rows) + 1)))
    ax.barh(range(len(rows)), [w.score for w in rows], color=["tab:red" if w.score < 0 else "tab:green" for w in rows])
    ax.set_yticks(range(len(rows)), [f"{w.word} ({w.count})" for w in rows])
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlabel(f"mean attribution toward '{target}' (integrated gradients)")
    return _save(fig, path, TITLES["top_words"])


def _embed(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def write_report(
    out_dir: Path,
    metrics: dict[str, Any],
    label_names: list[str],
    history: list[dict[str, float]],
    predictions: dict[str, np.ndarray],
    examples: list[Example],
    mistakes: list[Example],
    words: dict[str, list[WordScore]] | None,
    meta: dict[str, Any],
) -> dict[str, Path]:
    """Write every plot and ``report.html`` into ``out_dir``.

    Args:
        metrics: from :func:`sentiment.evaluation.evaluate_predictions`.
        history: per-epoch training metrics (may be empty: the curves are then left out).
        predictions: ``confidence`` and ``correct`` arrays, one entry per review.
        examples, mistakes: rows of the two example tables.
        words: from :func:`sentiment.attribution.top_words`, or None when not computed.
        meta: shown at the top (checkpoint, split, target class of the attributions, ...).

    Returns:
        Plot name -> PNG path, plus ``"report"`` -> the HTML file.
    """
    plots: dict[str, Path] = {}
    if history:
        plots["training_curves"] = plot_training_curves(history, out_dir / "training_curves.png")
    if "micro_f1" in metrics:  # a multi-label model's
        plots["confusion_matrix"] = plot_label_confusion(metrics["confusion_matrix"], label_names, out_dir / "confusion_matrix.png")
        plots["per_label"] = plot_per_label(metrics["per_class"], out_dir / "per_label.png")
    else:
        plots["confusion_matrix"] = plot_confusion_matrix(metrics["confusion_matrix"], label_names, out_dir / "confusion_matrix.png")
    plots["confidence"] = plot_confidence(predictions["confidence"], predictions["correct"], out_dir / "confidence.png")
    plots["reliability"] = plot_reliability(metrics, out_dir / "reliability.png")
    plots["accuracy_by_length"] = plot_accuracy_by_length(metrics, meta["max_seq_length"], out_dir / "accuracy_by_length.png")
    if words and (words["positive"] or words["negative"]):
        plots["top_words"] = plot_top_words(words, meta["attribution_target"], out_dir / "top_words.png")
    env = Environment(loader=PackageLoader("sentiment", "templates"), autoescape=True)  # review texts are untrusted HTML
    env.filters["num"] = lambda v: "n/a" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.4f}"
    html = env.get_template("report.html.j2").render(
        metrics=metrics, label_names=label_names, history=history, examples=examples, mistakes=mistakes,
        words=words, meta=meta, titles=TITLES, images={k: _embed(p) for k, p in plots.items()}, weak_f1=WEAK_F1,
        created=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    )
    report = out_dir / "report.html"
    report.write_text(html)
    return {**plots, "report": report}
