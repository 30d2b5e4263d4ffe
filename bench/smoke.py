"""Small stand-ins for the benchmarks' ``--smoke`` forms: a tiny BERT and synthetic IMDB-shaped data."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from sentiment.config import PACKAGED_MODEL
from sentiment.model import load_tokenizer


def tiny_bert(folder: Path) -> Path:
    """A 2-layer, 32-wide BERT with the packaged MiniLM's tokenizer, saved to ``folder``."""
    from transformers import BertConfig, BertForSequenceClassification

    tokenizer = load_tokenizer(PACKAGED_MODEL)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64)
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def synthetic_imdb(folder: Path, n: int = 400) -> Path:
    """``train.parquet`` and ``test.parquet`` of ``n`` short reviews whose words give the label away."""
    words = {0: "dull awful boring", 1: "great brilliant fun"}
    rows = pd.DataFrame({"text": [f"{words[i % 2]} film {i}" for i in range(n)], "label": [i % 2 for i in range(n)]})
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        rows.to_parquet(folder / f"{split}.parquet", index=False)
    return folder
