"""The HTTP side of the endpoint: routes, API key, body limits, error bodies, the try-it page.

:func:`make_api` builds the FastAPI app over any :class:`Backend` (the ingress deployment in
``serve.app``), so these concerns are tested apart from Ray.
"""

# No ``from __future__ import annotations``: FastAPI reads the route annotations at run time.
import hmac
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, Protocol

from fastapi import APIRouter, Depends, FastAPI, Form, HTTPException, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBasic, HTTPBasicCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from pydantic import AfterValidator, SecretStr
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve.schemas import (
    BODY_ERRORS, Health, ModelInfo, PredictResponse, ServeArgs, TextPrediction, errors, not_blank, request_model,
)
from sentiment.predict import ExplainUnavailable, Prediction

STATIC = Path(__file__).parent / "static"


class Backend(Protocol):
    """What the HTTP routes need from the model.

    ``explains`` says whether ``predict(..., explain=True)`` can attribute (a torch model); when it
    cannot, that call raises :class:`~sentiment.predict.ExplainUnavailable`.
    """

    explains: bool

    async def predict(self, texts: list[str], explain: bool = False) -> list[Prediction]: ...

    async def info(self) -> dict[str, Any]: ...


def api_key_check(key: SecretStr) -> Callable[..., Awaitable[None]]:
    """A FastAPI dependency accepting ``key`` as a bearer token or as the basic-auth user.

    The comparison runs in constant time; the key is never logged or echoed.
    """

    async def check(
        bearer: Annotated[HTTPAuthorizationCredentials | None, Security(HTTPBearer(auto_error=False))],
        basic: Annotated[HTTPBasicCredentials | None, Security(HTTPBasic(auto_error=False))],
    ) -> None:
        given = bearer.credentials if bearer else basic.username if basic else ""
        if not hmac.compare_digest(given.encode(), key.get_secret_value().encode()):
            raise HTTPException(
                401,
                "missing or wrong API key: send 'Authorization: Bearer <key>' or basic auth with the key as user",
                headers={"WWW-Authenticate": "Bearer"},
            )

    return check


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


class BodySizeLimit:
    """ASGI middleware: a JSON 413 for a request body over ``max_bytes``, without reading it whole.

    A declared ``Content-Length`` over the cap is answered before any byte is read; a body without
    one (chunked) is counted as it streams in and reading stops at the cap. (FastAPI's own
    ``max_body_size`` answers a declared oversize in plain text, hence this.)
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    def too_large(self) -> HTTPException:
        """The 413 this middleware answers with."""
        return HTTPException(413, f"request body over {self.max_bytes} bytes")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            error = self.too_large()
            return await JSONResponse({"detail": error.detail}, 413)(scope, receive, send)
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise self.too_large()  # FastAPI turns it into the JSON 413
            return message

        await self.app(scope, limited_receive, send)


def make_api(backend: Backend, args: ServeArgs) -> FastAPI:
    """The HTTP API: ``/v1`` predictions and model info, ``/healthz``, the page at ``/``, and the
    API docs (Swagger UI at ``/docs``, ReDoc at ``/redoc``, ``/openapi.json``).

    Bodies over ``args.max_body_bytes`` get a JSON 413 (by their Content-Length before they are
    read, or as soon as a streamed body passes the cap). The docs' JavaScript and CSS come from
    the ``fastapi-offline`` package under ``/static-offline-docs``, never from a CDN: they work
    offline and put no third-party code in front of the key. Like the page, the docs are open;
    their "Try it out" needs the key as any client does.
    """
    app = FastAPIOffline(
        title="Sentiment",
        version="1",
        description="Text classification from a fine-tuned checkpoint. `/v1` needs the API key when the "
        "deployment has one (`Authorization: Bearer <key>`, or basic auth with the key as user).",
        exception_handlers={RequestValidationError: validation_error},
    )
    app.add_middleware(BodySizeLimit, max_bytes=args.max_body_bytes)
    auth = [Depends(api_key_check(args.api_key))] if args.api_key else []
    v1 = APIRouter(prefix="/v1", dependencies=auth, responses=errors(e401="Missing or wrong API key.") if auth else {})
    PredictRequest = request_model(args.max_text_chars, args.max_texts, args.explain_max_texts)

    async def respond(texts: list[str], explain: bool = False) -> PredictResponse:
        try:
            predictions = await backend.predict(texts, explain)
        except ExplainUnavailable as err:
            raise HTTPException(422, str(err)) from None
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
        return Health(auth_required=args.api_key is not None, explain=args.explain_max_texts > 0 and backend.explains)

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        """The try-it page (serve/static/)."""
        return FileResponse(STATIC / "index.html")

    app.include_router(v1)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
