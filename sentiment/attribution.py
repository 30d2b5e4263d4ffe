"""Which words drive the predictions: integrated gradients (Captum) over the token embeddings,
summed into words, averaged over many reviews (:func:`top_words`) or per text toward its own
predicted label (:func:`explain`).
"""

from __future__ import annotations

import string
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch

from sentiment.predict import Encoded, ExplainUnavailable, KeyToken, Prediction, Predictor

# Markers a subword tokenizer uses: WordPiece continues a word with "##"; SentencePiece ("▁") and
# byte-level BPE ("Ġ") start one with a marker.
CONTINUATION = "##"
WORD_START = ("▁", "Ġ")


@dataclass
class WordScore:
    """A word's mean attribution toward the target class over the reviews it occurs in."""

    word: str
    score: float
    count: int


def words_of(tokens: list[str], scores: np.ndarray, special: np.ndarray) -> list[tuple[str, float]]:
    """Merge subword tokens into lowercase words (and ``don ' t`` into ``don't``), summing their
    scores; punctuation at word ends is stripped, specials and words without a letter or digit
    are dropped."""
    marks_starts = any(t.startswith(WORD_START) for t in tokens)  # SentencePiece / byte-level BPE

    def continues(token: str) -> bool:
        return not token.startswith(WORD_START) if marks_starts else token.startswith(CONTINUATION)

    words: list[tuple[str, float]] = []
    for token, score, is_special in zip(tokens, scores, special):
        if is_special:
            continue
        piece = token.removeprefix(CONTINUATION).lstrip("".join(WORD_START))
        if words and (continues(token) or piece == "'" or words[-1][0].endswith("'")):  # don ' t -> don't
            words[-1] = (words[-1][0] + piece, words[-1][1] + float(score))
        else:
            words.append((piece, float(score)))
    return [(w.strip(string.punctuation).lower(), s) for w, s in words if any(c.isalnum() for c in w)]


def token_attributions(
    predictor: Predictor, ids: list[list[int]], target: int | list[int], n_steps: int = 16, batch_size: int = 8
) -> list[np.ndarray]:
    """Integrated-gradients attribution of every token toward class ``target``, per review
    (``target`` is one class for all, or one per review).

    The baseline keeps the special tokens and replaces every other token by padding, so a token's
    attribution is its share of moving the logit from "no content" to the review.

    Raises:
        ExplainUnavailable: the predictor's backend is not torch.
    """
    from captum.attr import LayerIntegratedGradients  # only where attributions are computed

    model, tok = predictor.model, predictor.tokenizer
    if model is None:
        raise ExplainUnavailable(
            f"word attributions need gradients, which backend {predictor.backend.name!r} cannot give: use backend 'torch'"
        )
    targets = [target] * len(ids) if isinstance(target, int) else list(target)
    device = next(model.parameters()).device

    def forward(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return model(input_ids=input_ids, attention_mask=attention_mask).logits.float()

    ig = LayerIntegratedGradients(forward, model.get_input_embeddings())
    special_ids = torch.tensor(sorted(set(tok.all_special_ids)), device=device)
    out: list[np.ndarray] = [np.zeros(0)] * len(ids)
    order = np.argsort([len(x) for x in ids], kind="stable")  # similar lengths together: little padding
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        batch = predictor.collate([{"input_ids": ids[i]} for i in chunk])
        input_ids = batch["input_ids"].to(device)
        mask = batch["attention_mask"].to(device)
        baseline = torch.where(torch.isin(input_ids, special_ids), input_ids, tok.pad_token_id)
        attr = ig.attribute(input_ids, baselines=baseline, additional_forward_args=(mask,),
                            target=[targets[i] for i in chunk], n_steps=n_steps, internal_batch_size=len(chunk) * n_steps)
        scores = attr.sum(dim=-1).detach().float().cpu().numpy()
        for row, i in enumerate(chunk):
            out[i] = scores[row, : len(ids[i])]
    return out


def window_words(predictor: Predictor, encoded: Encoded, targets: list[int], n_steps: int) -> list[list[tuple[str, float]]]:
    """Each text's (word, attribution) pairs over all its windows toward its target.

    A text scored in k windows has the mean of their logits as its logit, and integrated gradients
    is linear in the function, so each window's attributions count 1/k (the pairs of a word seen
    in two overlapping windows both count).
    """
    special = set(predictor.tokenizer.all_special_ids)
    window_targets = [targets[i] for i in encoded.owners]
    share = 1.0 / encoded.counts
    out: list[list[tuple[str, float]]] = [[] for _ in encoded.full_lengths]
    for owner, ids, scores in zip(encoded.owners, encoded.windows,
                                  token_attributions(predictor, encoded.windows, window_targets, n_steps)):
        tokens = list(predictor.tokenizer.convert_ids_to_tokens(ids))  # a list for a list of ids
        pairs = words_of(tokens, scores * share[owner], np.array([t in special for t in ids]))
        out[owner].extend(pairs)
    return out


def top_words(
    predictor: Predictor, texts: list[str], target: int, top_k: int = 15, min_count: int = 3, n_steps: int = 16
) -> dict[str, list[WordScore]]:
    """The words with the highest and lowest mean attribution toward ``target`` across ``texts``.

    Returns:
        ``{"positive": [...], "negative": [...]}``: ``top_k`` words each, among words that occur
        in at least ``min_count`` of the attributed positions; positive pushes toward ``target``.
    """
    encoded = predictor.encode(texts)
    per_word: dict[str, list[float]] = defaultdict(list)
    for text_words in window_words(predictor, encoded, [target] * len(texts), n_steps):
        for word, score in text_words:
            per_word[word].append(score)
    ranked = sorted(
        (WordScore(w, float(np.mean(s)), len(s)) for w, s in per_word.items() if len(s) >= min_count),
        key=lambda ws: ws.score,
    )
    return {"positive": ranked[::-1][:top_k], "negative": ranked[:top_k]}


def key_tokens(predictor: Predictor, encoded: Encoded, targets: list[int], top_k: int = 5, n_steps: int = 16) -> list[list[KeyToken]]:
    """Each encoded text's ``top_k`` words pushing it most toward its label ``targets[i]`` (positive
    attribution only, strongest first).

    A word's score is the sum over its subword tokens and its occurrences in the text; words are
    lowercased, with punctuation at their ends stripped (as :func:`words_of` merges them). The
    cost is ``n_steps`` forward and backward passes per window.

    Raises:
        ExplainUnavailable: the predictor's backend is not torch.
    """
    out = []
    for text_words in window_words(predictor, encoded, targets, n_steps):
        per_word: dict[str, float] = defaultdict(float)
        for word, score in text_words:
            per_word[word] += score
        ranked = sorted(((w, s) for w, s in per_word.items() if s > 0), key=lambda ws: -ws[1])[:top_k]
        out.append([KeyToken(w, round(s, 4)) for w, s in ranked])
    return out


def explain(predictor: Predictor, texts: list[str], top_k: int = 5, n_steps: int = 16) -> list[Prediction]:
    """Predictions for ``texts``, each with its ``key_tokens`` toward its own predicted label
    (:func:`key_tokens`).

    Raises:
        ExplainUnavailable: the predictor's backend is not torch.
    """
    encoded = predictor.encode(texts)  # once, for the predictions and the attributions
    predictions = predictor.details(encoded)
    targets = [predictor.label_names.index(p.label) for p in predictions]
    for prediction, tokens in zip(predictions, key_tokens(predictor, encoded, targets, top_k, n_steps)):
        prediction.key_tokens = tokens
    return predictions
