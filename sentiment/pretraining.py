"""In-domain masked-language-model pretraining data: texts, windows and the masking collator.

Reviews are read from the configured splits (never the test split), cleaned like training
texts, cut into windows of ``data.max_seq_length`` tokens by the tokenizer (a long review
becomes several windows, nothing is thrown away), and masked per batch by transformers'
``DataCollatorForLanguageModeling`` (whole words by default).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from datasets import load_dataset
from transformers import DataCollatorForLanguageModeling, PreTrainedModel
from transformers.modeling_outputs import MaskedLMOutput

from sentiment.config import Config, DataConfig
from sentiment.data import DataError, clean_text, resolve_source

EXTENSIONS = {"parquet": ("parquet",), "csv": ("csv",), "json": ("jsonl", "json")}


def load_split_texts(cfg: DataConfig, split: str) -> list[str]:
    """The texts of one split (``unsupervised`` or ``train``) from the configured source.

    Raises:
        DataError: the split's file (or aclImdb folder, or hub split) is missing, or lacks the text column.
    """
    source, path = resolve_source(cfg)
    if source == "hub":
        try:
            ds = load_dataset(cfg.hub_id, split=split)
        except Exception as err:  # network errors come in many types
            raise DataError(f"could not load split {split!r} of {cfg.hub_id!r} from the hub ({type(err).__name__}: {err})") from err
        texts = ds[cfg.text_column]
    elif source == "aclimdb":
        folders = [Path(path) / "train" / "unsup"] if split == "unsupervised" else [Path(path) / "train" / n for n in ("neg", "pos")]
        if not all(f.is_dir() for f in folders):
            raise DataError(f"aclImdb folder {path!r} lacks {', '.join(str(f) for f in folders)}")
        texts = [file.read_text(encoding="utf-8") for f in folders for file in sorted(f.glob("*.txt"))]
    else:
        found = [Path(path) / f"{split}.{e}" for e in EXTENSIONS[source] if (Path(path) / f"{split}.{e}").is_file()]
        if not found:
            raise DataError(f"{path!r} has no {split}.{EXTENSIONS[source][0]} file (pretrain.splits names it)")
        ds = load_dataset("json" if source == "json" else source, data_files=str(found[0]), split="train")
        if cfg.text_column not in ds.column_names:
            raise DataError(f"{found[0]} has no column {cfg.text_column!r} (columns: {ds.column_names})")
        texts = ds[cfg.text_column]
    return [clean_text(t) for t in texts if t and t.strip()]


def pretraining_texts(cfg: Config) -> tuple[list[str], list[str]]:
    """``(train, validation)`` texts: the configured splits, deduplicated, seeded sample and hold-out.

    Raises:
        DataError: a split is missing, or too few texts remain for the hold-out.
    """
    texts = list(dict.fromkeys(t for split in cfg.pretrain.splits for t in load_split_texts(cfg.data, split)))
    random.Random(cfg.data.seed).shuffle(texts)
    if cfg.pretrain.max_texts is not None:
        texts = texts[:cfg.pretrain.max_texts]
    held = cfg.pretrain.validation_texts
    if len(texts) <= held:
        raise DataError(f"{len(texts)} texts leave none to train on after pretrain.validation_texts={held}")
    return texts[held:], texts[:held]


@dataclass
class Windows:
    """Token windows of ``max_seq_length`` with what whole-word masking needs (character offsets,
    special-token flags); ``owners[i]`` is the text window i came from."""

    input_ids: list[list[int]]
    offsets: list[list[tuple[int, int]]]
    special: list[list[int]]
    owners: list[int]

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def lengths(self) -> list[int]:
        return [len(x) for x in self.input_ids]


def to_windows(tokenizer: Any, texts: list[str], max_seq_length: int) -> Windows:
    """Cut every text into consecutive windows (special tokens in each) with the fast tokenizer."""
    enc = tokenizer(texts, truncation=True, max_length=max_seq_length, return_overflowing_tokens=True,
                    return_offsets_mapping=True, return_special_tokens_mask=True, verbose=False)
    return Windows(enc["input_ids"], [list(map(tuple, o)) for o in enc["offset_mapping"]],
                   enc["special_tokens_mask"], list(enc["overflow_to_sample_mapping"]))


class MaskingCollator:
    """Pad a batch of windows and mask it for MLM with a seeded generator (same seed, same masks)."""

    def __init__(self, tokenizer: Any, cfg: Config, seed: int) -> None:
        self.multiple = cfg.data.pad_to_multiple_of
        self.collator = DataCollatorForLanguageModeling(
            tokenizer, mlm_probability=cfg.pretrain.mlm_probability, whole_word_mask=cfg.pretrain.whole_word_mask,
            pad_to_multiple_of=self.multiple, seed=seed,
        )

    def __call__(self, windows: Windows, rows: list[int]) -> dict[str, torch.Tensor]:
        """``input_ids``, ``attention_mask`` and ``labels`` (-100 where not masked) for these rows."""
        longest = max(len(windows.input_ids[i]) for i in rows)
        width = -(-longest // self.multiple) * self.multiple
        return self.collator([
            {"input_ids": windows.input_ids[i], "special_tokens_mask": windows.special[i],
             "offset_mapping": windows.offsets[i] + [(0, 0)] * (width - len(windows.offsets[i]))}  # the collator pads no offsets
            for i in rows
        ])


MLM_HEADS = ("cls", "lm_head")  # BERT-style and RoBERTa-style masked-LM heads (hidden states -> vocabulary)


class MaskedPositionsMLM(torch.nn.Module):
    """A masked-LM model whose output layer runs only at the masked positions.

    The encoder sees every token as before; the head (a dense layer, layer norm and the
    ``hidden x vocabulary`` decoder) runs on the ~15% of positions that carry a label instead of
    all of them (at MiniLM's size the head over every position is about half of a forward pass's
    arithmetic, so training steps run faster). The loss is the model's
    own (cross-entropy averaged over the masked tokens). Models whose head is not one module
    (``MLM_HEADS``) run whole. ``save_pretrained`` saves the wrapped model unchanged.
    """

    def __init__(self, mlm: PreTrainedModel) -> None:
        super().__init__()
        self.mlm = mlm
        self.head_name = next((n for n in MLM_HEADS if isinstance(getattr(mlm, n, None), torch.nn.Module)), None)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
                **kwargs: Any) -> MaskedLMOutput:
        """The masked-LM loss of this batch (``labels`` -100 where nothing is masked)."""
        if self.head_name is None:
            return self.mlm(input_ids=input_ids, attention_mask=attention_mask, labels=labels, **kwargs)
        hidden = self.mlm.base_model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)[0]
        where = labels >= 0
        logits = getattr(self.mlm, self.head_name)(hidden[where])
        return MaskedLMOutput(loss=torch.nn.functional.cross_entropy(logits.float(), labels[where]))

    def save_pretrained(self, *args: Any, **kwargs: Any) -> Any:
        """Save the wrapped model as a plain Hugging Face masked-LM folder."""
        return self.mlm.save_pretrained(*args, **kwargs)
