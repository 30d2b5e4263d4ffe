"""The Serve application's schemas: its arguments, request and response bodies, error bodies.

Every limit a deployment enforces is in these models, so ``/openapi.json`` documents it.
"""

# No ``from __future__ import annotations``: Serve and FastAPI read these annotations at run time.
import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, SecretStr, model_validator
from ray.serve.config import AutoscalingConfig

from sentiment.config import Location
from sentiment.data import clean_text

API_KEY_ENV = "SENTIMENT_API_KEY"


class ServeArgs(BaseModel):
    """Arguments of :func:`build_app` (``serve run ... key=value`` or ``args:`` in a config file)."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)  # an error never repeats a secret given

    checkpoint: Location = Field(
        description="Model folder, epoch checkpoint, run folder, folder with best.json, 'best' "
        "(the sweep's recorded best under storage_path) or a URI (s3://, gs://, file://)."
    )
    model_name: str = Field("sentiment", pattern=r"^[A-Za-z0-9_.-]+$",
                            description="The model's name in the Open Inference Protocol routes (/v2/models/{name}).")
    which: Literal["best", "last"] = Field("best", description="Epoch of a run folder to serve.")
    storage_path: Location | None = Field(None, description="Where 'best' is looked up (default ~/sentiment-runs).")
    num_cpus: float = Field(1.0, ge=0, description="CPUs reserved per model replica.")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per model replica (fractions share a GPU); > 0 runs bf16 on it.")
    backend: Literal["auto", "torch", "onnx", "onnx-int8"] = Field(
        "auto", description="Inference backend; auto: torch bf16 on a GPU, else the verified int8 export, else fp32 ONNX, else torch."
    )
    long_reviews: Literal["truncate", "chunks"] | None = Field(
        None, description="Override the checkpoint's data.long_reviews: 'chunks' scores whole long texts in "
        "windows of max_seq_length (a text then costs one row per window; its windows count toward max_batch_tokens).",
    )
    max_batch_size: int = Field(32, ge=1, description="Most texts per forward pass.")
    max_batch_tokens: int = Field(
        4096, ge=1, description="Padded tokens per forward pass (texts x the longest): a batch closes at "
        "max_batch_size texts or this many tokens, whichever comes first. At least the checkpoint's max_seq_length.",
    )
    batch_wait_timeout_s: float = Field(
        0.0, ge=0, description="How long a batch that is not full waits for more texts once the model is free "
        "(0: none; batches fill while the previous one computes).",
    )
    max_ongoing_requests: int = Field(64, ge=1, description="Texts a model replica holds at once; caps its batches.")
    max_queued_requests: int = Field(
        128, ge=1, description="Requests waiting for an ingress replica, and texts waiting (in each ingress) for a "
        "model replica, beyond max_ongoing_requests; past it a request gets 503 with Retry-After at once.",
    )
    max_queue_wait_s: float = Field(
        1.0, gt=0, description="Load shedding: a request whose windows would wait longer than this behind the "
        "windows in flight (at the completion rate the ingress measures) gets 503 with Retry-After at once.",
    )
    request_timeout_s: float = Field(30.0, gt=0, description="A request not answered by then gets 503 with Retry-After.")
    max_request_windows: int = Field(
        512, ge=1, description="Most windows of max_seq_length one request may cost (texts in truncate mode; "
        "every window of every text with long_reviews=chunks); more gets 422 naming the cap.",
    )
    min_replicas: int = Field(1, ge=0, description="0 allows scale-to-zero (cold starts).")
    initial_replicas: int | None = Field(None, ge=0, description="Replicas at deploy time (default min_replicas).")
    max_replicas: int = Field(2, ge=1)
    target_ongoing_requests: float = Field(16, gt=0, description="Texts in flight per replica the autoscaler aims at.")
    upscale_delay_s: float = Field(10.0, ge=0)
    downscale_delay_s: float = Field(300.0, ge=0)
    look_back_period_s: float = Field(30.0, gt=0, description="Window the autoscaler averages load over.")
    ingress_replicas: int = Field(1, ge=1, description="HTTP ingress replicas (they only parse and await).")
    api_key_file: str | None = Field(
        None, description=f"A file (on every node) holding the API key; default: ${API_KEY_ENV} on every node, "
        "none: open. The key itself is never an argument (arguments are stored in Ray's state).",
    )
    body_timeout_s: float = Field(5.0, gt=0, description="Seconds a request body may take to arrive, plus "
                                  "its length at min_body_rate; past it 408.")
    min_body_rate: int = Field(50_000, ge=1, description="Slowest body upload accepted, in bytes per second.")
    max_text_chars: int = Field(20_000, ge=1, description="Longest text accepted (characters).")
    max_texts: int = Field(64, ge=1, description="Most texts in one request.")
    max_body_bytes: int = Field(
        6 * 2**20, ge=1, description="Largest request body (bytes); larger gets 413 before it is read. The default "
        "fits max_texts texts of max_text_chars 4-byte characters at the defaults.",
    )
    uncertain_below: float = Field(0.8, gt=0, le=1, description="Top probability under this marks 'uncertain'.")
    explain_max_texts: int = Field(
        4, ge=0, description="Most texts in one request with explain=true (0 turns explain off). Explaining costs "
        "explain_steps forward and backward passes per window, on an explainer replica of its own (torch fp32, "
        "one thread), never on the prediction replicas.",
    )
    explain_max_windows: int = Field(8, ge=1, description="Most windows one explained request may cost; more gets 422.")
    explain_steps: int = Field(16, ge=2, le=64, description="Integrated-gradients steps per explained window.")
    explain_top_k: int = Field(5, ge=1, le=50, description="Key tokens returned per explained text.")
    explain_replicas: int = Field(1, ge=1, description="Explainer replicas; each explains one request at a time.")
    explain_queue: int = Field(
        2, ge=1, description="Explained requests waiting (per ingress) for an explainer; past it 503 with Retry-After.",
    )
    wandb_mode: Literal["auto", "online", "offline", "disabled"] = Field(
        "auto", description="Lineage run at deploy time; 'auto': online with WANDB_API_KEY, else offline (as training)."
    )
    wandb_project: str = Field("bert-imdb", description="W&B project of the lineage run.")
    wandb_dir: str | None = Field(None, description="Where W&B writes locally (default ./wandb).")

    @model_validator(mode="before")
    @classmethod
    def _no_key_argument(cls, data: Any) -> Any:
        if isinstance(data, dict) and "api_key" in data:
            raise ValueError(
                f"api_key is not an argument (arguments are stored in Ray's state): set ${API_KEY_ENV} where Serve "
                "runs, or name a file holding the key with api_key_file=..."
            )
        return data

    @model_validator(mode="after")
    def _consistent(self) -> "ServeArgs":
        self.autoscaling_config()  # min <= initial <= max
        if self.max_ongoing_requests < self.max_batch_size:
            raise ValueError(
                f"max_ongoing_requests ({self.max_ongoing_requests}) is below max_batch_size "
                f"({self.max_batch_size}): a replica could never fill a batch"
            )
        return self

    def read_api_key(self, required: bool) -> SecretStr | None:
        """The API key from ``api_key_file``, else ``$SENTIMENT_API_KEY``; None when neither is set.

        Raises:
            ValueError: the key is empty, the file cannot be read, or ``required`` and no key is set here.
        """
        if self.api_key_file:
            try:
                key = Path(self.api_key_file).expanduser().read_text().strip()
            except OSError as err:
                raise ValueError(f"api_key_file {self.api_key_file!r} cannot be read: {err.strerror}") from None
            where = f"api_key_file {self.api_key_file!r}"
        else:
            key, where = os.environ.get(API_KEY_ENV), f"${API_KEY_ENV}"
            if key is None:
                if required:
                    raise ValueError(f"the deployment requires an API key but ${API_KEY_ENV} is not set on this node")
                return None
        if not key.strip():
            raise ValueError(f"{where} is empty: set a key, or unset it to serve without one")
        return SecretStr(key)

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


class BatchConfig(BaseModel):
    """The model replicas' ``user_config``: batch limits ``serve deploy`` may change without a reload."""

    model_config = ConfigDict(extra="forbid")

    max_batch_size: int = Field(ge=1)
    max_batch_tokens: int | None = Field(ge=1)
    batch_wait_timeout_s: float = Field(ge=0)


def not_blank(text: str) -> str:
    """A text that is more than whitespace and ``<br />`` tags (raises ValueError otherwise)."""
    if not clean_text(text):
        raise ValueError("text is empty (nothing but whitespace and <br /> tags)")
    return text


def request_model(max_text_chars: int, max_texts: int, explain_max_texts: int) -> type[BaseModel]:
    """The ``POST /v1/predict`` body, with this deployment's limits in its schema."""
    Text = Annotated[str, Field(strict=True, max_length=max_text_chars), AfterValidator(not_blank)]

    class PredictRequest(BaseModel):
        """One text (``text``) or several (``texts``)."""

        model_config = ConfigDict(
            extra="forbid",
            json_schema_extra={"examples": [{"text": "A fun brain candy movie...good dialog."}]},
        )
        text: Text | None = None
        texts: list[Text] | None = Field(None, min_length=1, max_length=max_texts)
        explain: bool = Field(
            False, strict=True, description=f"Also return each text's key tokens (at most {explain_max_texts} texts "
            "per explained request; slower: integrated gradients).",
        )

        @model_validator(mode="after")
        def _one_of(self) -> "PredictRequest":
            if (self.text is None) == (self.texts is None):
                raise ValueError("send exactly one of 'text' (a string) or 'texts' (a list of strings)")
            if self.explain and not explain_max_texts:
                raise ValueError("explain is off on this deployment (explain_max_texts=0)")
            if self.explain and len(self.all_texts()) > explain_max_texts:
                raise ValueError(f"explain: at most {explain_max_texts} texts per explained request, "
                                 f"got {len(self.all_texts())}")
            return self

        def all_texts(self) -> list[str]:
            """The texts to predict, in order."""
            return [self.text] if self.text is not None else list(self.texts or [])

    return PredictRequest


class KeyTokenScore(BaseModel):
    """A word of the text and its integrated-gradients attribution toward the predicted label."""

    word: str
    score: float


class TextPrediction(BaseModel):
    """The prediction for one text."""

    label: str = Field(description="The most probable label.")
    score: float = Field(description="Probability of the predicted label.")
    probabilities: dict[str, float] = Field(description="Every label's probability (a multi-label model's: one "
                                            "sigmoid per label, not summing to 1).")
    labels: list[str] | None = Field(None, description="Only for a multi-label model: the labels whose probability "
                                     "is above their threshold (saved with the model), maybe none.")
    num_tokens: int = Field(description="Tokens of the text the model saw (special tokens counted once).")
    truncated: bool = Field(description="Part of the text was not scored: it was longer than the checkpoint's "
                            "max_seq_length and long texts are truncated.")
    windows: int = Field(description="Windows of max_seq_length scored (more than 1 only for a long text in chunks).")
    uncertain: bool = Field(description="score is under the deployment's uncertain_below.")
    key_tokens: list[KeyTokenScore] | None = Field(
        None, description="Only with explain: the words pushing most toward the label, strongest first."
    )


class PredictResponse(BaseModel):
    """Predictions in the order of the texts sent."""

    predictions: list[TextPrediction]


class ModelInfo(BaseModel):
    """The checkpoint being served (lineage)."""

    checkpoint: str = Field(description="As given to build_app.")
    path: str = Field(description="The model folder it resolved to.")
    backend: str = Field(description="torch, onnx or onnx-int8.")
    file: str = Field(description="The file served: model.safetensors or the ONNX export.")
    sha256: str = Field(description="sha256 of the file served.")
    weights_sha256: str = Field(description="sha256 of model.safetensors (the trained weights).")
    label_names: list[str]
    metrics: dict[str, Any] = Field(description="Validation metrics saved with the checkpoint.")
    config: dict[str, Any] = Field(description="Tokenization settings from the training config.")
    device: str
    dtype: str


class Health(BaseModel):
    """Liveness of the HTTP ingress."""

    status: Literal["ok"] = "ok"
    auth_required: bool
    explain: bool = Field(description="Whether requests may ask for key tokens (explain=true).")


class ErrorMessage(BaseModel):
    """An error other than a validation error (those are 422 with a list of named problems)."""

    detail: str


def errors(**descriptions: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries, ``errors(e413="...")``: each status with its description."""
    return {int(code[1:]): {"model": ErrorMessage, "description": text} for code, text in descriptions.items()}


BODY_ERRORS = errors(
    e400="The body cannot be parsed (invalid UTF-8, JSON nested too deeply).",
    e408="The body arrived slower than body_timeout_s plus its length at min_body_rate.",
    e413="The body is over the deployment's max_body_bytes.",
    e503="Overloaded (queues full, the estimated wait over max_queue_wait_s, no answer within request_timeout_s, "
    "or a model replica failed twice); retry after Retry-After seconds.",
)
