"""Routes in the shapes clients already speak, as thin adapters over the same backend as ``/v1``.

- Hugging Face text-embeddings-inference (TEI) and Hugging Face's ``InferenceClient``:
  ``POST /predict``, ``GET /info``, ``GET /health``; every label as ``{label, score}``, highest first.
- The Open Inference Protocol v2 of KServe, Triton and Seldon: ``GET /v2``, ``/v2/health/live``,
  ``/v2/health/ready``, ``/v2/models/{name}`` (and ``/ready``), ``POST /v2/models/{name}/infer``
  with one ``BYTES`` input ``text``, answering ``label`` (BYTES) and ``probabilities`` (FP32).

A request is checked here, its texts go through the same call as ``/v1/predict`` (same key,
limits, batching, budgets and errors), and the answer is reshaped.

One shape question has two answers in the field: TEI answers a single string with a flat list
and a batch with one list per text, while Hugging Face's Inference API (which ``InferenceClient``
expects, taking ``response[0]``) answers a single string with a list holding one list. A request
that carries ``parameters`` (how ``InferenceClient`` sends ``top_k`` and ``function_to_apply``)
gets the Inference API's shape; one without gets TEI's. Both clients then work unchanged.
"""

# No ``from __future__ import annotations``: FastAPI reads the route annotations at run time.
import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import numpy as np
from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sentiment.metrics import softmax
from sentiment.predict import Prediction
from serve.schemas import BODY_ERRORS, ServeArgs, errors, not_blank

Function = Literal["sigmoid", "softmax", "none"]
READY_TIMEOUT_S = 2.0  # a model replica that does not answer its info call by then is not ready


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

    def scoring(self, multi_label: bool = False) -> tuple[Function, int | None]:
        """The function applied to the logits and ``top_k``, wherever the client put them; by default
        the model's own (``sigmoid`` for a multi-label model, as TEI reads it from its config)."""
        params = self.parameters or TEIParameters()
        default: Function = "sigmoid" if multi_label else "softmax"
        function = "none" if self.raw_scores else params.function_to_apply or self.function_to_apply or default
        return function, params.top_k or self.top_k


def scores(prediction: Prediction, labels: list[str], function: Function, top_k: int | None) -> list[dict[str, Any]]:
    """Every label (or the ``top_k`` best) as ``{label, score}``, highest first. The model's own
    function (``softmax``, or ``sigmoid`` for a multi-label model) gives the prediction's own
    probabilities (with the checkpoint's calibration temperature); the other one and ``none``
    start from its raw logits."""
    multi_label = prediction.labels is not None
    if function == ("sigmoid" if multi_label else "softmax"):
        values = [prediction.probabilities[name] for name in labels]
    elif function == "softmax":
        values = softmax(np.asarray([prediction.logits], dtype=np.float64))[0].tolist()
    else:
        logits = np.asarray(prediction.logits, dtype=np.float64)
        values = (1 / (1 + np.exp(-logits)) if function == "sigmoid" else logits).tolist()
    ranked = sorted(zip(labels, values), key=lambda pair: -pair[1])[:top_k]
    return [{"label": name, "score": float(value)} for name, value in ranked]


def check_texts(texts: list[str], args: ServeArgs) -> None:
    """``/v1``'s limits on the texts of a request in another protocol's shape.

    Raises:
        RequestValidationError: naming the limit (count, length) or an empty text (a 422 like any
            invalid body's).
    """
    if len(texts) > args.max_texts:
        raise invalid_inputs(f"inputs: at most {args.max_texts} texts per request, got {len(texts)}")
    for i, text in enumerate(texts):
        if len(text) > args.max_text_chars:
            raise invalid_inputs(f"inputs[{i}]: a text over max_text_chars={args.max_text_chars} characters")
        try:
            not_blank(text)
        except ValueError as err:
            raise invalid_inputs(f"inputs[{i}]: {err}") from None


def invalid_inputs(message: str) -> RequestValidationError:
    """A 422 in FastAPI's validation-error shape (what the OpenAPI schema documents) about ``inputs``."""
    return RequestValidationError([{"type": "value_error", "loc": ("body", "inputs"), "msg": message}])


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

    @router.post("/predict", responses={**denied, **BODY_ERRORS},
                 description="Text classification in text-embeddings-inference's shape (Hugging Face's "
                 "`InferenceClient.text_classification` works unchanged).")
    async def predict(body: TEIPredictRequest) -> list[Any]:
        """Every label's score per text, highest first."""
        try:
            texts = body.texts()
        except ValueError as err:
            raise invalid_inputs(str(err)) from None
        check_texts(texts, args)
        predictions = await predict_texts(texts)
        if body.truncate is False and any(p.truncated for p in predictions):
            raise invalid_inputs("inputs: a text is longer than the checkpoint's max_seq_length and truncate=false")
        labels = list(predictions[0].probabilities)
        function, top_k = body.scoring(multi_label=predictions[0].labels is not None)
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


class V2Tensor(BaseModel):
    """An input tensor of the Open Inference Protocol (JSON data; nested lists follow ``shape``)."""

    model_config = ConfigDict(extra="allow")

    name: str
    shape: list[int]
    datatype: str
    data: list[Any] | None = None  # absent when the tensor travels in the binary extension
    parameters: dict[str, Any] = Field(default_factory=dict)


class V2Output(BaseModel):
    """An output the client asks for (by name)."""

    model_config = ConfigDict(extra="allow")

    name: str


class V2InferRequest(BaseModel):
    """``POST /v2/models/{name}/infer``: one ``BYTES`` input named ``text``."""

    model_config = ConfigDict(extra="allow")

    id: str | None = None
    inputs: list[V2Tensor] = Field(min_length=1, max_length=1)
    outputs: list[V2Output] | None = None

    def texts(self, binary: bytes = b"") -> list[str]:
        """The texts, flattened from the input's shape, from its JSON ``data`` or from ``binary`` (the
        binary extension: each string as a 4-byte little-endian length and its UTF-8 bytes).

        Raises:
            ValueError: naming the input that is not one ``BYTES`` tensor ``text`` of strings.
        """
        (tensor,) = self.inputs
        if tensor.name != "text" or tensor.datatype != "BYTES":
            raise ValueError(f"inputs: one BYTES tensor named 'text' is expected, got {tensor.name!r} ({tensor.datatype})")
        if tensor.data is None:
            flat = binary_strings(binary[:tensor.parameters.get("binary_data_size", len(binary))])
        else:
            flat = np.asarray(tensor.data, dtype=object).reshape(-1).tolist()
        if int(np.prod(tensor.shape)) != len(flat) or not all(isinstance(t, str) for t in flat):
            raise ValueError(f"inputs[0]: shape {tensor.shape} does not hold its {len(flat)} strings")
        return flat


V2_OUTPUTS = ("label", "probabilities")
V2_DECISIONS = "decisions"  # a multi-label model's only: BOOL [n, k], each label above its threshold


class V2ErrorBody(BaseModel):
    """The Open Inference Protocol's error body."""

    error: str


class V2Ready(BaseModel):
    """A readiness answer."""

    ready: bool


def v2_errors(**descriptions: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries in the protocol's error shape, ``v2_errors(e404="...")``."""
    return {int(code[1:]): {"model": V2ErrorBody, "description": text} for code, text in descriptions.items()}


class V2Error(Exception):
    """An error answered in the protocol's shape, ``{"error": "..."}`` (see :func:`v2_error`)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


async def v2_error(_: Request, err: V2Error) -> JSONResponse:
    """The Open Inference Protocol's error body: ``{"error": message}`` with its status."""
    return JSONResponse({"error": err.message}, status_code=err.status)


def binary_strings(data: bytes) -> list[Any]:
    """The strings of a ``BYTES`` tensor in the binary extension.

    Raises:
        ValueError: a length that runs past the data, or bytes that are not UTF-8.
    """
    out, at = [], 0
    while at < len(data):
        size = int.from_bytes(data[at:at + 4], "little")
        if at + 4 + size > len(data):
            raise ValueError("inputs[0]: binary data ends inside a string")
        try:
            out.append(data[at + 4:at + 4 + size].decode())
        except UnicodeDecodeError:
            raise ValueError("inputs[0]: a string that is not UTF-8") from None
        at += 4 + size
    return out


def v2_router(predict_texts: Callable[[list[str]], Awaitable[list[Prediction]]],
              model_info: Callable[[], Awaitable[dict[str, Any]]], args: ServeArgs, keyed: bool) -> APIRouter:
    """The Open Inference Protocol v2 routes for the model ``args.model_name``. ``/v2`` and
    ``/v2/health/*`` are open (probes carry no key); everything under ``/v2/models/`` is behind the
    key when ``keyed``, like ``/v1/model``. Ready means a model replica answers (it loads and warms
    up its model before it takes requests)."""
    router = APIRouter(prefix="/v2", tags=["Open Inference Protocol v2 (KServe, Triton)"])
    name = args.model_name

    async def model_ready() -> bool:
        try:
            await asyncio.wait_for(model_info(), READY_TIMEOUT_S)
        except Exception:  # noqa: BLE001 (any failure to answer is "not ready")
            return False
        return True

    def known(model: str) -> None:
        if model != name:
            raise V2Error(404, f"no model {model!r} here; this endpoint serves {name!r}")

    @router.get("")
    async def server() -> dict[str, Any]:
        """Server metadata."""
        return {"name": "bert-sentiment", "version": "1", "extensions": []}

    @router.get("/health/live")
    async def live() -> dict[str, bool]:
        """Liveness: the ingress answers."""
        return {"live": True}

    @router.get("/health/ready", responses={503: {"model": V2Ready, "description": "No model replica answers yet."}})
    async def ready() -> JSONResponse:
        """Readiness: a model replica has loaded and warmed up its model and answers."""
        ok = await model_ready()
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    @router.get("/models/{model}/ready", responses={**v2_errors(e404="Another model name."),
                                                    503: {"model": V2Ready, "description": "Not ready."}})
    async def model_is_ready(model: str) -> JSONResponse:
        """Readiness of the model."""
        known(model)
        return await ready()

    @router.get("/models/{model}", responses=v2_errors(e404="Another model name."))
    async def metadata(model: str) -> dict[str, Any]:
        """The model's inputs and outputs."""
        known(model)
        info = await model_info()
        labels = info["label_names"]
        multi_label = info["config"].get("problem_type") == "multi_label"
        return {"name": name, "versions": ["1"], "platform": "pytorch",
                "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
                "outputs": [{"name": "label", "datatype": "BYTES", "shape": [-1]},
                            {"name": "probabilities", "datatype": "FP32", "shape": [-1, len(labels)]},
                            *([{"name": V2_DECISIONS, "datatype": "BOOL", "shape": [-1, len(labels)]}] if multi_label else [])],
                "parameters": {"labels": labels}}

    @router.post("/models/{model}/infer", responses={
        **(errors(e401="Missing or wrong API key.") if keyed else {}),
        **{code: entry for code, entry in BODY_ERRORS.items() if code != 400},
        **v2_errors(e400="Not one BYTES tensor 'text' of strings, a shape that does not hold them, an unknown "
                    "output, or a body that is no inference request.", e404="Another model name.")})
    async def infer(model: str, request: Request) -> dict[str, Any]:
        """Labels and every label's probability (in the order of ``/v2/models/{name}``'s ``labels``); a
        multi-label model's probabilities are sigmoids, and it also answers ``decisions`` (each label
        above its threshold).

        The body is JSON whatever its Content-Type (Triton's client sends none), optionally followed
        by binary tensor data after the first ``Inference-Header-Content-Length`` bytes."""
        known(model)
        raw = await request.body()  # RequestGate bounds its size and its time
        header_size = request.headers.get("inference-header-content-length", "")
        split = int(header_size) if header_size.isdigit() else len(raw)
        try:
            body = V2InferRequest.model_validate_json(raw[:split])
            texts = body.texts(raw[split:])
        except ValidationError as err:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors(include_input=False))
            raise V2Error(400, f"the request is not an inference request: {problems}") from None
        except ValueError as err:
            raise V2Error(400, str(err)) from None
        wanted = [o.name for o in body.outputs] if body.outputs else None
        if unknown := sorted(set(wanted or []) - {*V2_OUTPUTS, V2_DECISIONS}):
            raise V2Error(400, f"outputs: unknown {unknown}; this model gives {list(V2_OUTPUTS)}")
        try:
            check_texts(texts, args)
        except RequestValidationError as err:
            raise V2Error(400, err.errors()[0]["msg"]) from None
        predictions = await predict_texts(texts)
        labels = list(predictions[0].probabilities)
        tensors = {
            "label": {"name": "label", "datatype": "BYTES", "shape": [len(texts)], "data": [p.label for p in predictions]},
            "probabilities": {"name": "probabilities", "datatype": "FP32", "shape": [len(texts), len(labels)],
                              "data": [p.probabilities[n] for p in predictions for n in labels]},
        }
        if predictions[0].labels is not None:  # a multi-label model
            tensors[V2_DECISIONS] = {"name": V2_DECISIONS, "datatype": "BOOL", "shape": [len(texts), len(labels)],
                                     "data": [n in (p.labels or []) for p in predictions for n in labels]}
        if V2_DECISIONS in (wanted or []) and V2_DECISIONS not in tensors:
            raise V2Error(400, f"outputs: {V2_DECISIONS!r} is a multi-label model's; this model gives {list(V2_OUTPUTS)}")
        wanted = wanted or list(tensors)
        return {"model_name": name, "model_version": "1", **({"id": body.id} if body.id else {}),
                "outputs": [tensors[n] for n in wanted]}

    return router
