"""The HTTP side of the endpoint: routes, API key, body limits, error bodies, the try-it page.

:func:`make_api` builds the FastAPI app over any :class:`Backend` (the ingress deployment in
``serve.app``), so these concerns are tested apart from Ray.
"""

# No ``from __future__ import annotations``: FastAPI reads the route annotations at run time.
import asyncio
import base64
import binascii
import hashlib
import hmac
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Protocol

from fastapi import APIRouter, Depends, FastAPI, Form, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from pydantic import AfterValidator, SecretStr
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sentiment.predict import ExplainUnavailable, Prediction
from serve.admission import Overloaded, RequestTooCostly
from serve.protocols import V2Error, tei_router, v2_error, v2_router
from serve.schemas import (
    BODY_ERRORS,
    Health,
    ModelInfo,
    PredictResponse,
    ServeArgs,
    TextPrediction,
    errors,
    not_blank,
    request_model,
)

STATIC = Path(__file__).parent / "static"
PROTECTED = ("/v1", "/predict", "/info", "/v2/models/")  # paths that need the key, when the deployment has one


def predicting(scope: Scope) -> bool:
    """Whether a request asks for predictions (POST to ``/v1/predict[/form]``, ``/predict`` or v2's ``infer``)."""
    path = scope["path"]
    return scope["method"] == "POST" and (path in ("/v1/predict", "/v1/predict/form", "/predict")
                                          or (path.startswith("/v2/models/") and path.endswith("/infer")))


# On predictions' answers, for the HAProxy in front (ray_jobs/haproxy-shed.awk), which removes them:
BUDGET_HEADER = "x-sentiment-budget"  # the ingress's load budget
KEY_HEADER = "x-sentiment-key"  # the sha256 of the API key, so that HAProxy counts only requests that carry it
UNAUTHORIZED = "missing or wrong API key: send 'Authorization: Bearer <key>' or basic auth with the key as user"


class Backend(Protocol):
    """What the HTTP routes need from the model.

    ``explains`` says whether ``predict(..., explain=True)`` can attribute (the deployment has an
    explainer); when it cannot, that call raises :class:`~sentiment.predict.ExplainUnavailable`.
    ``predict`` raises :class:`~serve.admission.Overloaded` (503) or
    :class:`~serve.admission.RequestTooCostly` (422) to refuse a request; ``overloaded`` says,
    before a request's body is read, why any prediction would be refused now (or None).
    """

    explains: bool

    async def predict(self, texts: list[str], explain: bool = False) -> list[Prediction]: ...

    def overloaded(self) -> Overloaded | None: ...

    async def info(self) -> dict[str, Any]: ...


def key_matches(headers: Headers, key: SecretStr) -> bool:
    """Whether ``headers`` carry ``key`` as a bearer token or as the basic-auth user, compared in
    constant time; the key is never logged or echoed."""
    scheme, _, value = headers.get("authorization", "").partition(" ")
    given = ""
    if scheme.lower() == "bearer":
        given = value.strip()
    elif scheme.lower() == "basic":
        try:
            given = base64.b64decode(value.strip(), validate=True).decode().partition(":")[0]
        except (binascii.Error, UnicodeDecodeError):
            given = ""
    return hmac.compare_digest(given.encode(), key.get_secret_value().encode())


async def require_json(request: Request) -> None:
    """Reject bodies that are not JSON with 415, pointing form posts to their own path."""
    content_type = request.headers.get("content-type", "")
    if content_type.split(";")[0].strip().lower() != "application/json":
        raise HTTPException(
            415, f"Content-Type must be application/json, not {content_type!r}; form posts go to /v1/predict/form"
        )


async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's 422 body without the ``input`` echo (a rejected 20,000-character text stays home)."""
    errors = [{key: error[key] for key in ("type", "loc", "msg")} for error in exc.errors()]
    return JSONResponse({"detail": errors}, status_code=422)


class RequestGate:
    """ASGI middleware: what a request must pass before its body is read, and a deadline on the body.

    From the headers alone: a request to a protected path without the key gets its 401, a
    declared ``Content-Length`` over ``max_bytes`` its 413, and a prediction while ``overloaded()``
    names a refusal its 503 with ``Retry-After``, before any byte of the body is read (an
    unauthenticated client cannot hold the endpoint with slow uploads, and a refusal under
    overload costs no parsing or tokenizing). Then the body must arrive
    within ``body_timeout_s`` plus its declared length at ``min_rate`` bytes per second, or the
    request ends with 408; a body without a length (chunked) is counted as it streams in and cut at
    ``max_bytes`` with 413. (FastAPI's own ``max_body_size`` answers in plain text, hence the JSON here.)
    With ``budget``, a prediction's answer carries ``budget()`` in :data:`BUDGET_HEADER` and the
    key's sha256 in :data:`KEY_HEADER`, so that the front in C (HAProxy,
    ``ray_jobs/haproxy-shed.awk``) can refuse a surge of keyed requests past it without reaching Python.
    """

    def __init__(self, app: ASGIApp, key: SecretStr | None, protected: tuple[str, ...], max_bytes: int,
                 body_timeout_s: float, min_rate: int, overloaded: Callable[[], Overloaded | None],
                 budget: Callable[[], int] | None) -> None:
        self.app, self.key, self.protected = app, key, protected
        self.max_bytes, self.body_timeout_s, self.min_rate = max_bytes, body_timeout_s, min_rate
        self.overloaded, self.budget = overloaded, budget
        self.key_sha256 = hashlib.sha256(key.get_secret_value().encode()).hexdigest() if key else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        if self.key is not None and scope["path"].startswith(self.protected) and not key_matches(headers, self.key):
            return await JSONResponse({"detail": UNAUTHORIZED}, 401, {"WWW-Authenticate": "Bearer"})(scope, receive, send)
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            return await JSONResponse({"detail": self.too_large}, 413)(scope, receive, send)
        if predicting(scope):
            send = stating_budget(send, self.budget, self.key_sha256) if self.budget is not None else send
            if refused := self.overloaded():
                return await JSONResponse({"detail": str(refused)}, 503,
                                          {"Retry-After": str(refused.retry_after_s)})(scope, receive, send)
        await self.app(scope, self.deadlined(receive, int(declared) if declared.isdigit() else self.max_bytes), send)

    @property
    def too_large(self) -> str:
        """The 413's message."""
        return f"request body over {self.max_bytes} bytes"

    def deadlined(self, receive: Receive, length: int) -> Receive:
        """``receive`` with the body's deadline and size cap."""
        allowed_s = self.body_timeout_s + length / self.min_rate
        deadline = asyncio.get_running_loop().time() + allowed_s
        received = 0
        body_done = False

        async def receive_body() -> Message:
            nonlocal received, body_done
            if body_done:  # after the body, receive only waits for a disconnect: no deadline
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - asyncio.get_running_loop().time()))
            except TimeoutError:
                raise HTTPException(408, f"request body not received within {allowed_s:.1f} s "
                                         f"(body_timeout_s plus its length at min_body_rate)") from None
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise HTTPException(413, self.too_large)  # FastAPI turns it into the JSON 413
            body_done = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        return receive_body


def stating_budget(send: Send, budget: Callable[[], int], key_sha256: str | None) -> Send:
    """``send`` with ``budget()``, as it is when the answer starts, in :data:`BUDGET_HEADER`, and
    ``key_sha256`` (if any) in :data:`KEY_HEADER`."""
    keyed = [(KEY_HEADER.encode(), key_sha256.encode())] if key_sha256 else []

    async def send_budget(message: Message) -> None:
        if message["type"] == "http.response.start":
            stated = [(BUDGET_HEADER.encode(), str(budget()).encode()), *keyed]
            message = {**message, "headers": [*message.get("headers", ()), *stated]}
        await send(message)

    return send_budget


class StatusRecorder:
    """ASGI middleware: hands each HTTP answer's status and path to ``record`` (the ingress's
    error counter); a request that raised before answering counts as the 500 the server sends."""

    def __init__(self, app: ASGIApp, record: Callable[[int, str], None]) -> None:
        self.app, self.record = app, record

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        answered = False

        async def send_recorded(message: Message) -> None:
            nonlocal answered
            if message["type"] == "http.response.start":
                answered = True
                self.record(message["status"], scope["path"])
            await send(message)

        try:
            await self.app(scope, receive, send_recorded)
        except Exception:
            if not answered:
                self.record(500, scope["path"])
            raise


def make_api(backend: Backend, args: ServeArgs, key: SecretStr | None,
             record_status: Callable[[int, str], None] | None = None,
             budget: Callable[[], int] | None = None) -> FastAPI:
    """The HTTP API: ``/v1`` predictions and model info, ``/healthz``, the page at ``/``, and the
    API docs (Swagger UI at ``/docs``, ReDoc at ``/redoc``, ``/openapi.json``).

    With a ``key``, ``/v1`` answers 401 from the headers alone when it is missing or wrong
    (:class:`RequestGate`). Bodies over ``args.max_body_bytes`` get a JSON 413 (by their
    Content-Length before they are read, or as soon as a streamed body passes the cap), bodies
    slower than ``args.body_timeout_s`` plus their length at ``args.min_body_rate`` a 408. A
    request the backend refuses as :class:`~serve.admission.Overloaded` gets 503 with
    ``Retry-After``, one over a cost cap (:class:`~serve.admission.RequestTooCostly`) 422. The docs' JavaScript and CSS come from
    the ``fastapi-offline`` package under ``/static-offline-docs``, never from a CDN: they work
    offline and put no third-party code in front of the key. Like the page, the docs are open;
    their "Try it out" needs the key as any client does. ``record_status``, when given, sees every
    answer's status and path (:class:`StatusRecorder`, outside every other check); ``budget``, when
    given, is stated on every prediction's answer for the HAProxy in front (:class:`RequestGate`).
    """
    app = FastAPIOffline(
        title="Sentiment",
        version="1",
        description="Text classification from a fine-tuned checkpoint. `/v1` needs the API key when the "
        "deployment has one (`Authorization: Bearer <key>`, or basic auth with the key as user).",
        exception_handlers={RequestValidationError: validation_error, V2Error: v2_error},
    )
    app.add_middleware(RequestGate, key=key, protected=PROTECTED, max_bytes=args.max_body_bytes,
                       body_timeout_s=args.body_timeout_s, min_rate=args.min_body_rate, overloaded=backend.overloaded,
                       budget=budget)
    if record_status is not None:
        app.add_middleware(StatusRecorder, record=record_status)  # added last: the outermost
    v1 = APIRouter(prefix="/v1", responses=errors(e401="Missing or wrong API key.") if key else {})
    PredictRequest = request_model(args.max_text_chars, args.max_texts, args.explain_max_texts)

    async def predict_texts(texts: list[str], explain: bool = False) -> list[Prediction]:
        """The backend's predictions, its refusals as HTTP errors (one mapping for every route)."""
        try:
            return await backend.predict(texts, explain)
        except (ExplainUnavailable, RequestTooCostly) as err:  # a 422 in the shape the OpenAPI schema documents
            raise RequestValidationError([{"type": "value_error", "loc": ("body",), "msg": str(err)}]) from None
        except Overloaded as err:
            raise HTTPException(503, str(err), headers={"Retry-After": str(err.retry_after_s)}) from None

    async def respond(texts: list[str], explain: bool = False) -> PredictResponse:
        predictions = await predict_texts(texts, explain)
        return PredictResponse(predictions=[
            TextPrediction(**{**vars(p), "key_tokens": p.key_tokens and [vars(k) for k in p.key_tokens]},
                           uncertain=p.score < args.uncertain_below)
            for p in predictions
        ])

    body_limit = f"in a body of at most {args.max_body_bytes} bytes"

    @v1.post("/predict", dependencies=[Depends(require_json)], description=f'`{{"text": ...}}` or '
             f'`{{"texts": [...]}}`, labels in the same order. At most {args.max_texts} texts of at most '
             f'{args.max_text_chars} characters each, {body_limit}. With `"explain": true` (at most '
             f'{args.explain_max_texts} texts), each prediction also has its `key_tokens`.',
             responses={**BODY_ERRORS, **errors(e415="The body is not application/json.")},
             response_model_exclude_none=True)
    async def predict(body: PredictRequest) -> PredictResponse:  # type: ignore[valid-type]
        """Predict ``{"text": ...}`` or ``{"texts": [...]}``."""
        return await respond(body.all_texts(), body.explain)

    @v1.post("/predict/form", responses=BODY_ERRORS,
             description=f"One form field `review` (`curl -F review=...`) of at most {args.max_text_chars} "
             f"characters, {body_limit}.", response_model_exclude_none=True)
    async def predict_form(
        review: Annotated[str, Form(max_length=args.max_text_chars), AfterValidator(not_blank)],
    ) -> PredictResponse:
        """Predict one form field ``review`` (``curl -F "review=..."``)."""
        return await respond([review])

    @v1.get("/model")
    async def model() -> ModelInfo:
        """The checkpoint served: path, sha256 of its weights, labels, metrics and config."""
        return ModelInfo(**await backend.info())

    @app.get("/healthz")
    async def healthz() -> Health:
        """Liveness; open without a key. Says whether ``/v1`` needs one."""
        return Health(auth_required=key is not None, explain=args.explain_max_texts > 0 and backend.explains)

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        """The try-it page (serve/static/)."""
        return FileResponse(STATIC / "index.html")

    app.include_router(v1)
    app.include_router(tei_router(predict_texts, backend.info, args, keyed=key is not None))
    app.include_router(v2_router(predict_texts, backend.info, args, keyed=key is not None))
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
