"""Routes in the shapes clients already speak, as thin adapters over the same backend as ``/v1``.

Hugging Face text-embeddings-inference (TEI) and Hugging Face's ``InferenceClient``:
``POST /predict``, ``GET /info``, ``GET /health``. A request is checked here, its texts go through
the same :class:`~serve.http.Backend` call as ``/v1/predict`` (same key, limits, batching,
budgets and errors), and the answer is reshaped: every label as ``{label, score}``, highest first.

One shape question has two answers in the field: TEI answers a single string with a flat list
and a batch with one list per text, while Hugging Face's Inference API (which ``InferenceClient``
expects, taking ``response[0]``) answers a single string with a list holding one list. A request
that carries ``parameters`` (how ``InferenceClient`` sends ``top_k`` and ``function_to_apply``)
gets the Inference API's shape; one without gets TEI's. Both clients then work unchanged.
"""

# No ``from __future__ import annotations``: FastAPI reads the route annotations at run time.
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import numpy as np
from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, ConfigDict, Field

from serve.schemas import ServeArgs, errors
from sentiment.predict import Prediction

Function = Literal["sigmoid", "softmax", "none"]


class TEIParameters(BaseModel):
    """``parameters`` as ``InferenceClient`` sends them."""

    model_config = ConfigDict(extra="forbid")

    top_k: int | None = Field(None, ge=1)
    function_to_apply: Function | None = None


class TEIPredictRequest(BaseModel):
    """TEI's ``POST /predict`` body (``inputs`` a string or a batch), with ``top_k`` and
    ``function_to_apply`` also accepted at the top level."""

    model_config = ConfigDict(extra="forbid")

    inputs: str | list[str | list[str]] = Field(description="A text, or a batch of texts (each a string or a list "
                                                "holding one string; two strings are a text pair, refused).")
    truncate: bool | None = Field(None, description="false: a text longer than the checkpoint's max_seq_length is "
                                  "an error (when the deployment truncates); true or absent: the deployment's way.")
    truncation_direction: Literal["right", "Right"] = "right"
    raw_scores: bool = Field(False, description="Logits instead of probabilities.")
    top_k: int | None = Field(None, ge=1, description="Only the top_k labels (all by default).")
    function_to_apply: Function | None = None
    parameters: TEIParameters | None = None

    def texts(self) -> list[str]:
        """The texts in order.

        Raises:
            ValueError: a text pair (this deployment classifies single texts) or an empty batch.
        """
        if isinstance(self.inputs, str):
            return [self.inputs]
        if not self.inputs:
            raise ValueError("inputs: an empty batch")
        texts = []
        for i, item in enumerate(self.inputs):
            if isinstance(item, list) and len(item) != 1:
                raise ValueError(f"inputs[{i}]: a text pair ({len(item)} texts); this model classifies single texts")
            texts.append(item if isinstance(item, str) else item[0])
        return texts

    def scoring(self) -> tuple[Function, int | None]:
        """The function applied to the logits and ``top_k``, wherever the client put them."""
        params = self.parameters or TEIParameters()
        function = "none" if self.raw_scores else params.function_to_apply or self.function_to_apply or "softmax"
        return function, params.top_k or self.top_k


def scores(prediction: Prediction, labels: list[str], function: Function, top_k: int | None) -> list[dict[str, Any]]:
    """Every label (or the ``top_k`` best) as ``{label, score}``, highest first. ``softmax`` is the
    prediction's own probabilities (with the checkpoint's calibration temperature); ``sigmoid`` and
    ``none`` start from its raw logits."""
    if function == "softmax":
        values = [prediction.probabilities[name] for name in labels]
    else:
        logits = np.asarray(prediction.logits, dtype=np.float64)
        values = (1 / (1 + np.exp(-logits)) if function == "sigmoid" else logits).tolist()
    ranked = sorted(zip(labels, values), key=lambda pair: -pair[1])[:top_k]
    return [{"label": name, "score": float(value)} for name, value in ranked]


def tei_router(predict_texts: Callable[[list[str]], Awaitable[list[Prediction]]],
               model_info: Callable[[], Awaitable[dict[str, Any]]], args: ServeArgs, keyed: bool) -> APIRouter:
    """``POST /predict``, ``GET /info`` (behind the key when ``keyed``: :class:`~serve.http.RequestGate`
    checks it) and the open ``GET /health``.

    Args:
        predict_texts: ``/v1``'s call of the backend, refusals already HTTP errors.
        model_info: the served model's record (``/v1/model``'s).
        args: the deployment's arguments (limits, shown by ``/info``).
        keyed: whether the deployment has a key (documents the 401).
    """
    router = APIRouter(tags=["Hugging Face / TEI"])
    denied = errors(e401="Missing or wrong API key.") if keyed else {}

    @router.post("/predict", responses={**denied, **errors(e503="Overloaded; retry after Retry-After seconds.")},
                 description="Text classification in text-embeddings-inference's shape (Hugging Face's "
                 "`InferenceClient.text_classification` works unchanged).")
    async def predict(body: TEIPredictRequest) -> list[Any]:
        """Every label's score per text, highest first."""
        try:
            texts = body.texts()
        except ValueError as err:
            raise HTTPException(422, str(err)) from None
        if len(texts) > args.max_texts:
            raise HTTPException(422, f"inputs: at most {args.max_texts} texts per request, got {len(texts)}")
        if any(len(t) > args.max_text_chars for t in texts):
            raise HTTPException(422, f"inputs: a text over max_text_chars={args.max_text_chars} characters")
        predictions = await predict_texts(texts)
        if body.truncate is False and any(p.truncated for p in predictions):
            raise HTTPException(422, "inputs: a text is longer than the checkpoint's max_seq_length and truncate=false")
        labels = list(predictions[0].probabilities)
        function, top_k = body.scoring()
        rows = [scores(p, labels, function, top_k) for p in predictions]
        single = isinstance(body.inputs, str)
        return [rows[0]] if single and body.parameters is not None else rows[0] if single else rows

    @router.get("/info", responses=denied)
    async def info() -> dict[str, Any]:
        """The served model in TEI's ``/info`` shape."""
        model = await model_info()
        labels = model["label_names"]
        return {
            "model_id": model["checkpoint"], "model_sha": model["weights_sha256"], "model_dtype": model["dtype"],
            "model_type": {"classifier": {"id2label": dict(enumerate(labels)),
                                          "label2id": {name: i for i, name in enumerate(labels)}}},
            "max_input_length": model["config"]["max_seq_length"], "max_batch_tokens": args.max_batch_tokens,
            "max_client_batch_size": args.max_texts, "max_batch_requests": args.max_batch_size,
            "max_concurrent_requests": args.max_ongoing_requests * args.max_replicas,
            "tokenization_workers": args.ingress_replicas, "version": "bert-sentiment",
        }

    @router.get("/health")
    async def health() -> dict[str, str]:
        """Liveness in TEI's place; open without a key."""
        return {"status": "ok"}

    return router

