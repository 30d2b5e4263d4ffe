"""The Serve application: a FastAPI ingress bound to the model deployment, built from typed args.

    serve run serve.app:build_app checkpoint=~/sentiment-runs/<run> [key=value ...]
    serve run configs/serve.yaml          (or serve deploy configs/serve.yaml on a running cluster)

``build_app`` validates its args as :class:`ServeArgs` and the checkpoint itself before anything is
deployed, so a typo or a missing, incomplete or corrupt checkpoint fails at once with a message.
"""

# No ``from __future__ import annotations`` here: Serve reads build_app's annotation as a class to
# validate the args dict into ServeArgs.
import asyncio
import hmac
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol

from fastapi import APIRouter, Depends, FastAPI, Form, HTTPException, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBasic, HTTPBasicCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, SecretStr, model_validator
from ray import serve
from ray.exceptions import RayActorError
from ray.serve import Application
from ray.serve.config import AutoscalingConfig
from ray.serve.handle import DeploymentHandle
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ray_jobs.checkpoints import local_model_dir, resolve_checkpoint, sha256_file
from serve.deployment import SentimentModel
from sentiment.data import clean_text
from sentiment.predict import Prediction

STATIC = Path(__file__).parent / "static"
API_KEY_ENV = "SENTIMENT_API_KEY"


class ServeArgs(BaseModel):
    """Arguments of :func:`build_app` (``serve run ... key=value`` or ``args:`` in a config file)."""

    model_config = ConfigDict(extra="forbid")

    checkpoint: str = Field(
        description="Model folder, epoch checkpoint, run folder, folder with best.json, 'best' "
        "(the sweep's recorded best under storage_path) or a URI (s3://, gs://, file://)."
    )
    which: Literal["best", "last"] = Field("best", description="Epoch of a run folder to serve.")
    storage_path: str | None = Field(None, description="Where 'best' is looked up (default ~/sentiment-runs).")
    num_cpus: float = Field(1.0, ge=0, description="CPUs reserved per model replica.")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per model replica (fractions share a GPU); > 0 runs bf16 on it.")
    max_batch_size: int = Field(32, ge=1, description="Texts per forward pass (@serve.batch).")
    batch_wait_timeout_s: float = Field(0.01, ge=0, description="Longest wait for a batch to fill.")
    max_ongoing_requests: int = Field(64, ge=1, description="Texts a model replica holds at once; caps its batches.")
    min_replicas: int = Field(1, ge=0, description="0 allows scale-to-zero (cold starts).")
    initial_replicas: int | None = Field(None, ge=0, description="Replicas at deploy time (default min_replicas).")
    max_replicas: int = Field(2, ge=1)
    target_ongoing_requests: float = Field(16, gt=0, description="Texts in flight per replica the autoscaler aims at.")
    upscale_delay_s: float = Field(10.0, ge=0)
    downscale_delay_s: float = Field(300.0, ge=0)
    look_back_period_s: float = Field(30.0, gt=0, description="Window the autoscaler averages load over.")
    ingress_replicas: int = Field(1, ge=1, description="HTTP ingress replicas (they only parse and await).")
    api_key: SecretStr | None = Field(None, description=f"Required API key; default ${API_KEY_ENV}, none: open.")
    max_text_chars: int = Field(20_000, ge=1, description="Longest text accepted (characters).")
    max_texts: int = Field(64, ge=1, description="Most texts in one request.")
    max_body_bytes: int = Field(
        6 * 2**20, ge=1, description="Largest request body (bytes); larger gets 413 before it is read. The default "
        "fits max_texts texts of max_text_chars 4-byte characters at the defaults.",
    )
    uncertain_below: float = Field(0.8, gt=0, le=1, description="Top probability under this marks 'uncertain'.")
    wandb_mode: Literal["auto", "online", "offline", "disabled"] = Field(
        "auto", description="Lineage run at deploy time; 'auto': online with WANDB_API_KEY, else none."
    )
    wandb_project: str = Field("bert-imdb", description="W&B project of the lineage run.")
    wandb_dir: str | None = Field(None, description="Where W&B writes locally (default ./wandb).")

    @model_validator(mode="after")
    def _consistent(self) -> "ServeArgs":
        self.autoscaling_config()  # min <= initial <= max
        if self.max_ongoing_requests < self.max_batch_size:
            raise ValueError(
                f"max_ongoing_requests ({self.max_ongoing_requests}) is below max_batch_size "
                f"({self.max_batch_size}): a replica could never fill a batch"
            )
        return self

    def autoscaling_config(self) -> AutoscalingConfig:
        """The model deployment's autoscaling config."""
        return AutoscalingConfig(
            min_replicas=self.min_replicas,
            initial_replicas=self.initial_replicas,
            max_replicas=self.max_replicas,
            target_ongoing_requests=self.target_ongoing_requests,
            upscale_delay_s=self.upscale_delay_s,
            downscale_delay_s=self.downscale_delay_s,
            look_back_period_s=self.look_back_period_s,
        )


def _not_blank(text: str) -> str:
    if not clean_text(text):
        raise ValueError("text is empty (nothing but whitespace and <br /> tags)")
    return text


def request_model(max_text_chars: int, max_texts: int) -> type[BaseModel]:
    """The ``POST /v1/predict`` body, with this deployment's limits in its schema."""
    Text = Annotated[str, Field(strict=True, max_length=max_text_chars), AfterValidator(_not_blank)]

    class PredictRequest(BaseModel):
        """One text (``text``) or several (``texts``)."""

        model_config = ConfigDict(
            extra="forbid",
            json_schema_extra={"examples": [{"text": "A fun brain candy movie...good dialog."}]},
        )
        text: Text | None = None
        texts: list[Text] | None = Field(None, min_length=1, max_length=max_texts)

        @model_validator(mode="after")
        def _one_of(self) -> "PredictRequest":
            if (self.text is None) == (self.texts is None):
                raise ValueError("send exactly one of 'text' (a string) or 'texts' (a list of strings)")
            return self

        def all_texts(self) -> list[str]:
            """The texts to predict, in order."""
            return [self.text] if self.text is not None else list(self.texts or [])

    return PredictRequest


class TextPrediction(BaseModel):
    """The prediction for one text."""

    label: str
    score: float = Field(description="Probability of the predicted label.")
    probabilities: dict[str, float] = Field(description="Every label's probability.")
    num_tokens: int = Field(description="Tokens the model saw (special tokens included).")
    truncated: bool = Field(description="The text was longer than the checkpoint's max_seq_length.")
    uncertain: bool = Field(description="score is under the deployment's uncertain_below.")


class PredictResponse(BaseModel):
    """Predictions in the order of the texts sent."""

    predictions: list[TextPrediction]


class ModelInfo(BaseModel):
    """The checkpoint being served (lineage)."""

    checkpoint: str = Field(description="As given to build_app.")
    path: str = Field(description="The model folder it resolved to.")
    sha256: str = Field(description="sha256 of model.safetensors.")
    label_names: list[str]
    metrics: dict[str, Any] = Field(description="Validation metrics saved with the checkpoint.")
    config: dict[str, Any] = Field(description="Tokenization settings from the training config.")
    device: str
    dtype: str


class Health(BaseModel):
    """Liveness of the HTTP ingress."""

    status: Literal["ok"] = "ok"
    auth_required: bool


class ErrorMessage(BaseModel):
    """An error other than a validation error (those are 422 with a list of named problems)."""

    detail: str


def _errors(**descriptions: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries, ``_errors(e413="...")``: each status with its description."""
    return {int(code[1:]): {"model": ErrorMessage, "description": text} for code, text in descriptions.items()}


BODY_ERRORS = _errors(
    e400="The body cannot be parsed (invalid UTF-8, JSON nested too deeply).",
    e413="The body is over the deployment's max_body_bytes.",
    e503="A model replica failed twice; retry after Retry-After seconds.",
)


class Backend(Protocol):
    """What the HTTP routes need from the model."""

    async def predict(self, texts: list[str]) -> list[Prediction]: ...

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
    """The HTTP API: ``/v1`` predictions and model info, ``/healthz``, the page at ``/``.

    Bodies over ``args.max_body_bytes`` get a JSON 413 (by their Content-Length before they are
    read, or as soon as a streamed body passes the cap). Swagger UI and ReDoc are off: they load
    their JavaScript from a CDN, which fails offline and puts third-party code in front of the
    key; ``/openapi.json`` stays.
    """
    app = FastAPI(
        title="Sentiment",
        version="1",
        description="Text classification from a fine-tuned checkpoint.",
        exception_handlers={RequestValidationError: validation_error},
        docs_url=None,
        redoc_url=None,
    )
    app.add_middleware(BodySizeLimit, max_bytes=args.max_body_bytes)
    auth = [Depends(api_key_check(args.api_key))] if args.api_key else []
    v1 = APIRouter(prefix="/v1", dependencies=auth, responses=_errors(e401="Missing or wrong API key.") if auth else {})
    PredictRequest = request_model(args.max_text_chars, args.max_texts)

    async def respond(texts: list[str]) -> PredictResponse:
        predictions = await backend.predict(texts)
        return PredictResponse(
            predictions=[TextPrediction(**vars(p), uncertain=p.score < args.uncertain_below) for p in predictions]
        )

    @v1.post("/predict", dependencies=[Depends(require_json)],
             responses={**BODY_ERRORS, **_errors(e415="The body is not application/json.")})
    async def predict(body: PredictRequest) -> PredictResponse:  # type: ignore[valid-type]
        """Predict ``{"text": ...}`` or ``{"texts": [...]}``."""
        return await respond(body.all_texts())

    @v1.post("/predict/form", responses=BODY_ERRORS)
    async def predict_form(
        review: Annotated[str, Form(max_length=args.max_text_chars), AfterValidator(_not_blank)],
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
        return Health(auth_required=args.api_key is not None)

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        """The try-it page (serve/static/)."""
        return FileResponse(STATIC / "index.html")

    app.include_router(v1)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


@serve.deployment
@serve.ingress()
class SentimentAPI:
    """HTTP ingress: validates requests and fans their texts out to the model deployment."""

    def __init__(self, model: DeploymentHandle, args: ServeArgs) -> None:
        self.model = model
        self.args = args

    async def predict(self, texts: list[str]) -> list[Prediction]:
        """One model call per text; the model replicas batch them across requests."""
        return list(await asyncio.gather(*(self._predict_one(t) for t in texts)))

    async def _predict_one(self, text: str) -> Prediction:
        """Predict one text, once more on another replica if the first one died mid-request.

        A prediction has no side effects, so repeating it is safe. Serve's router drops the dead
        replica when the first call fails, so the retry goes to a live one; if that fails too, the
        client gets 503 with ``Retry-After`` rather than a 500.
        """
        try:
            return await self.model.predict.remote(text)
        except RayActorError:
            try:
                return await self.model.predict.remote(text)
            except RayActorError:
                raise HTTPException(503, "model replica unavailable; retry shortly", headers={"Retry-After": "1"}) from None

    async def info(self) -> dict[str, Any]:
        """The model deployment's lineage record."""
        return await self.model.info.remote()

    def __serve_build_asgi_app__(self) -> FastAPI:
        return make_api(self, self.args)


def record_lineage(args: ServeArgs, model_path: str) -> None:
    """Log a small W&B run (job type ``serve``) recording the served model as an artifact.

    The artifact references the model folder (no upload), is named by the weights' sha256 and
    carries the alias ``production``, so W&B's registry shows which weights are served. (W&B
    refuses ``use_artifact`` offline, so the run logs the reference, which works in both modes.)
    Nothing happens when W&B is off: ``wandb_mode=auto`` without ``WANDB_API_KEY`` means off.
    """
    mode = args.wandb_mode if args.wandb_mode != "auto" else ("online" if os.environ.get("WANDB_API_KEY") else "disabled")
    if mode == "disabled":
        return
    import wandb

    local = local_model_dir(model_path)
    digest = sha256_file(local / "model.safetensors")
    uri = model_path if "://" in model_path else Path(model_path).resolve().as_uri()
    run = wandb.init(
        project=args.wandb_project, job_type="serve", mode=mode, dir=args.wandb_dir,
        name=f"serve-{digest[:12]}", config={"checkpoint": args.checkpoint, "path": model_path, "sha256": digest},
        settings=wandb.Settings(silent=True, console="off"),
    )
    artifact = wandb.Artifact(f"served-model-{digest[:12]}", type="model", metadata={"sha256": digest, "path": model_path})
    artifact.add_reference(uri, checksum=False)
    run.log_artifact(artifact, aliases=["production"])
    run.finish()


def build_app(args: ServeArgs) -> Application:
    """Build the Serve application: ingress bound to the model deployment.

    Args:
        args: a :class:`ServeArgs` or a dict of its fields (``serve run`` passes strings; they are
            converted). Without ``api_key``, ``$SENTIMENT_API_KEY`` is used when set.

    Returns:
        The application for ``serve.run`` / ``serve run`` / ``serve deploy``.

    Raises:
        pydantic.ValidationError: unknown or invalid args.
        CheckpointError: missing, incomplete or corrupt checkpoint.
    """
    args = ServeArgs.model_validate(args)
    if args.api_key is None and os.environ.get(API_KEY_ENV):
        args = args.model_copy(update={"api_key": SecretStr(os.environ[API_KEY_ENV])})
    model_path = resolve_checkpoint(args.checkpoint, args.which, args.storage_path)
    record_lineage(args, model_path)
    model = SentimentModel.options(
        ray_actor_options={"num_cpus": args.num_cpus, "num_gpus": args.num_gpus},
        max_ongoing_requests=args.max_ongoing_requests,
        autoscaling_config=args.autoscaling_config(),
        user_config={"max_batch_size": args.max_batch_size, "batch_wait_timeout_s": args.batch_wait_timeout_s},
    ).bind(args.checkpoint, model_path, args.num_gpus > 0)
    ingress = SentimentAPI.options(
        num_replicas=args.ingress_replicas,
        ray_actor_options={"num_cpus": 0},
        max_ongoing_requests=args.max_ongoing_requests * args.max_replicas,
    )
    return ingress.bind(model, args)
