"""The run layout: the names of run files and folders, parsing them, and resolving a checkpoint.

The only module that spells a run file's name or parses a run folder; how files are read and
written (local paths and URIs alike, atomically) is :mod:`sentiment.storage`'s. The layout::

    <storage>/best.json                   the latest sweep's best ({"checkpoint": <epoch checkpoint>, ...})
    <storage>/<sweep>/best.json           that sweep's best, beside results.csv / results.md
    <storage>/<run>/result.json           names the run's best and last epoch checkpoints
    <storage>/<run>/test_metrics.json     the best epoch's test metrics
    <storage>/<run>/pretrain.json         a pretraining run's summary (``ray_jobs.pretrain``)
    <storage>/<run>/lr_find_curve.json    an LR range test's curve (``ray_jobs.lr_find``)
    <storage>/<cv>/cv.csv, cv.md          a cross-validation's folds (``tune.cv``)
    <storage>/<run>/epoch_001/            an epoch checkpoint:
        model/                            a model folder (plain Hugging Face, loads without Ray or DeepSpeed):
            config.json                   architecture and id2label/label2id
            model.safetensors             weights (safetensors only)
            tokenizer.json ...            the tokenizer
            train_config.json             the resolved project config (max length, truncation, labels ...)
            metrics.json                  the metrics of the epoch it was saved at
            README.md                     the model card (the Hub's format: how it was trained, its scores, how to
                                          load it), rewritten when test metrics or an export arrive
            calibration.json              optional: {"temperature": T, ...} from ``ray_jobs.evaluate --calibrate``
            test_metrics.json             optional: the run's test metrics, when the test scored this folder
            onnx/                         optional, from ``ray_jobs.export``: model.onnx, model_quantized.onnx
                                          (optimum's names) and export.json (each verified variant: file,
                                          sha256, its check's figures; the graph's input names)
        eval_<split>/                     optional, from ``ray_jobs.evaluate``: metrics.json, predictions.parquet,
                                          report.html and its plots
        deepspeed/                        engine, optimizer and scheduler state per rank (resuming)
        train_state.json                  epoch, step, best so far, history

A path inside a run file (``result.json``, ``best.json``) is a path on the filesystem of the file
that holds it. :func:`resolve` turns any reference into one :class:`ResolvedModel`: computed once
(on the driver), then handed to whoever loads the weights, which never resolves again.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from sentiment.config import Config, ConfigError, RunConfig, config_from_dict, refuse_credentials
from sentiment.storage import (
    READ_CHUNK,
    child,
    exists,
    file_sha256,
    filesystem,
    is_file,
    is_uri,
    join,
    location_of,
    parent,
    read_json,
)

MODEL_DIR = "model"
DEEPSPEED_DIR = "deepspeed"
WEIGHTS_FILE = "model.safetensors"
HF_CONFIG_FILE = "config.json"
CONFIG_FILE = "train_config.json"
METRICS_FILE = "metrics.json"
CALIBRATION_FILE = "calibration.json"
STATE_FILE = "train_state.json"
RESULT_FILE = "result.json"
TEST_METRICS_FILE = "test_metrics.json"
BEST_FILE = "best.json"
ONNX_DIR = "onnx"
EXPORT_FILE = "export.json"
ONNX_FILES = {"onnx": "model.onnx", "onnx-int8": "model_quantized.onnx"}  # optimum's and transformers.js's names
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
PRETRAIN_SUMMARY_FILE = "pretrain.json"
LR_CURVE_FILE = "lr_find_curve.json"
SWEEP_RESULTS_FILES = ("results.csv", "results.md")
CV_RESULTS_FILES = ("cv.csv", "cv.md")
EVAL_METRICS_FILE = "metrics.json"
EVAL_PREDICTIONS_FILE = "predictions.parquet"
REQUIRED_MODEL_FILES = (HF_CONFIG_FILE, WEIGHTS_FILE, CONFIG_FILE)
EPOCH_CHECKPOINT_PARTS = (STATE_FILE, DEEPSPEED_DIR, MODEL_DIR)


class CheckpointError(ValueError):
    """A checkpoint that is missing, incomplete, corrupt or of the wrong kind."""


def epoch_dir_name(epoch: int) -> str:
    """The checkpoint folder name of a 1-based epoch: ``epoch_001``."""
    return f"epoch_{epoch:03d}"


def eval_dir_name(split: str) -> str:
    """The folder an evaluation of ``split`` writes beside the model folder: ``eval_test``."""
    return f"eval_{split}"


def run_and_epoch(epoch_dir: str) -> tuple[str, int]:
    """The run name and 1-based epoch of an epoch checkpoint's location (a path or URI); epoch 0
    when the folder is not an ``epoch_NNN`` one (a standalone model folder)."""
    path = epoch_dir.split("?")[0].rstrip("/")
    name = path.rsplit("/", 1)[-1]
    run = path.split("/")[-2] if "/" in path else path
    digits = name.removeprefix("epoch_")
    return run, int(digits) if name.startswith("epoch_") and digits.isdigit() else 0


def run_history(epoch_dir: str) -> list[dict[str, float]]:
    """Per-epoch metrics of the run that wrote the epoch checkpoint ``epoch_dir``: from the run's
    last epoch when its ``result.json`` names one, else from the checkpoint's own; empty if neither."""
    fs, path = filesystem(epoch_dir)
    run_dir = parent(path)
    candidates = [path]
    if is_file(fs, join(run_dir, RESULT_FILE)):
        last = read_json(fs, join(run_dir, RESULT_FILE)).get("last_checkpoint")
        if last:
            candidates.insert(0, last)
    for candidate in candidates:
        state = join(candidate, STATE_FILE)
        if is_file(fs, state):
            return read_json(fs, state).get("history", [])
    return []


def storage_root(cfg: Config) -> str:
    """The absolute local path or URI where ``cfg``'s runs are stored."""
    storage = cfg.run.storage_path
    return storage if is_uri(storage) else str(Path(storage).expanduser().resolve())


# --- resolving a checkpoint reference ---------------------------------------------------------


@dataclass(frozen=True)
class ResolvedModel:
    """A checked model folder and what is known about it, resolved once and handed on.

    Attributes:
        reference: the reference as given (``best``, a run folder, a URI ...).
        location: the model folder itself: an absolute local path, or a URI.
        epoch_dir: the epoch checkpoint holding it (same form), or None for a standalone model folder.
        sha256: hex sha256 of ``model.safetensors``.
        size: its size in bytes.
        config: the resolved training config saved with it (tokenization, labels ...).
        metrics: the validation metrics saved with it.
        exports: the verified ONNX exports in ``onnx/export.json``, by backend name
            (``{"onnx-int8": {"file": ..., "sha256": ..., "check": {...}}}``).
        calibration_sha256: hex sha256 of ``calibration.json`` as resolved, or None when it has none.
    """

    reference: str
    location: str
    epoch_dir: str | None
    sha256: str
    size: int
    config: Config
    metrics: dict[str, Any] = field(default_factory=dict)
    exports: dict[str, dict[str, Any]] = field(default_factory=dict)
    calibration_sha256: str | None = None

    @property
    def is_remote(self) -> bool:
        """Whether the model folder is behind a URI (and must be copied to load it)."""
        return is_uri(self.location)

    def expected_files(self, backend: str) -> dict[str, str]:
        """The sha256 of each file ``backend`` loads, by its path in the model folder, as resolved:
        the weights (``torch``) or the ONNX export (``onnx``, ``onnx-int8``), and the calibration.

        Raises:
            CheckpointError: a backend this checkpoint has no verified export for.
        """
        if backend == "torch":
            files = {WEIGHTS_FILE: self.sha256}
        elif backend in self.exports:
            files = {f"{ONNX_DIR}/{self.exports[backend]['file']}": self.exports[backend]["sha256"]}
        else:
            raise CheckpointError(f"{self.location} has no verified {backend} export (has: {', '.join(self.exports) or 'none'})")
        if self.calibration_sha256:
            files[CALIBRATION_FILE] = self.calibration_sha256
        return files


def resolve(reference: str | os.PathLike[str], which: str = "best", storage_path: str | None = None) -> ResolvedModel:
    """Resolve a checkpoint reference into a checked :class:`ResolvedModel`.

    Args:
        reference: a model folder, an epoch checkpoint, a run folder (its ``which`` epoch), a
            folder holding ``best.json`` or that file, the word ``best`` (``<storage_path>/best.json``),
            or a URI of any of these.
        which: for a run folder, its ``best`` or ``last`` epoch.
        storage_path: where ``best`` is looked up (default: ``run.storage_path``'s default).

    Raises:
        CheckpointError: nothing there, a folder of none of the layouts, a pointer naming nothing,
            missing files, an unreadable config, damaged weights, not a sequence classifier, or a
            reference, ``storage_path`` or pointer that is a URI holding credentials.
    """
    if which not in ("best", "last"):
        raise CheckpointError(f"which={which!r}: choose best or last")
    location = _no_credentials(str(reference), "checkpoint")
    if storage_path is not None:
        _no_credentials(storage_path, "storage_path")
    if location == "best" and not Path("best").exists():
        location = child(storage_path or RunConfig().storage_path, BEST_FILE)
    fs, path = _checkpoint_filesystem(location)
    base = location
    for _ in range(8):  # best.json -> run folder -> epoch checkpoint: a few hops at most
        if path.endswith("/" + BEST_FILE) and is_file(fs, path):
            path = parent(path)
        if not exists(fs, path):
            raise CheckpointError(f"checkpoint {location_of(base, path)!r} does not exist")
        pointer = _follow(fs, path, which)
        if pointer is None:
            break
        if is_uri(pointer):
            base, (fs, path) = pointer, _checkpoint_filesystem(_no_credentials(pointer, f"pointer in {location_of(base, path)}"))
        else:
            path = pointer
    epoch_dir = None
    if exists(fs, join(path, MODEL_DIR)):
        epoch_dir, path = path, join(path, MODEL_DIR)
    shown = location_of(base, path)
    missing = [f for f in REQUIRED_MODEL_FILES if not is_file(fs, join(path, f))]
    if missing:
        raise CheckpointError(f"{shown!r} is not a complete model checkpoint: missing {', '.join(missing)}")
    cfg, metrics = _read_configs(fs, path, shown)
    sha, size = _check_weights(fs, join(path, WEIGHTS_FILE), shown)
    calibration = join(path, CALIBRATION_FILE)
    return ResolvedModel(
        reference=str(reference), location=shown, sha256=sha, size=size, config=cfg, metrics=metrics,
        exports=_read_exports(fs, path, shown),
        epoch_dir=location_of(base, epoch_dir) if epoch_dir else None,
        calibration_sha256=file_sha256(fs, calibration) if is_file(fs, calibration) else None,
    )


def _no_credentials(location: str, what: str) -> str:
    """:func:`refuse_credentials`, failing as a checkpoint error."""
    try:
        return refuse_credentials(location, what)
    except ValueError as err:
        raise CheckpointError(str(err)) from None


def _checkpoint_filesystem(location: str) -> tuple[pafs.FileSystem, str]:
    """:func:`filesystem`, failing as a checkpoint error."""
    try:
        return filesystem(location)
    except ConfigError as err:
        raise CheckpointError(str(err)) from None


def _follow(fs: pafs.FileSystem, path: str, which: str) -> str | None:
    """The checkpoint a ``best.json`` or ``result.json`` in ``path`` points at, if there is one."""
    try:
        if is_file(fs, join(path, BEST_FILE)):
            return read_json(fs, join(path, BEST_FILE))["checkpoint"]
        if is_file(fs, join(path, RESULT_FILE)):
            result = read_json(fs, join(path, RESULT_FILE))
            if not result.get(f"{which}_checkpoint"):
                raise CheckpointError(f"{join(path, RESULT_FILE)} names no {which}_checkpoint (choose best or last)")
            return result[f"{which}_checkpoint"]
    except (ValueError, KeyError, TypeError, OSError) as err:
        if isinstance(err, CheckpointError):
            raise
        raise CheckpointError(f"run file in {path!r} is corrupt: {err!r}") from None
    return None


def _read_configs(fs: pafs.FileSystem, path: str, shown: str) -> tuple[Config, dict[str, Any]]:
    """The training config and metrics of a model folder; checks it is a sequence classifier."""
    try:
        cfg = config_from_dict(read_json(fs, join(path, CONFIG_FILE)), f"{shown}/{CONFIG_FILE}")
        metrics = read_json(fs, join(path, METRICS_FILE)) if is_file(fs, join(path, METRICS_FILE)) else {}
        architectures = read_json(fs, join(path, HF_CONFIG_FILE)).get("architectures") or []
    except (ValueError, OSError, AttributeError) as err:
        raise CheckpointError(f"checkpoint {shown!r} is corrupt: {err}") from None
    if not any(str(a).endswith("ForSequenceClassification") for a in architectures):
        raise CheckpointError(f"{shown} is not a sequence classifier (architectures: {architectures or 'none'})")
    return cfg, metrics


def _read_exports(fs: pafs.FileSystem, path: str, shown: str) -> dict[str, dict[str, Any]]:
    """The verified exports recorded in ``onnx/export.json`` whose files are there."""
    record = join(path, ONNX_DIR, EXPORT_FILE)
    if not is_file(fs, record):
        return {}
    try:
        exports = read_json(fs, record)["exports"]
        strays = [e["file"] for e in exports.values() if "/" in e["file"] or e["file"] in ("", ".", "..")]
    except (ValueError, KeyError, TypeError, OSError) as err:
        raise CheckpointError(f"{shown}/{ONNX_DIR}/{EXPORT_FILE} is corrupt: {err!r}") from None
    if strays:
        raise CheckpointError(f"{shown}/{ONNX_DIR}/{EXPORT_FILE} names files outside {ONNX_DIR}/: {strays}")
    return {name: e for name, e in exports.items() if is_file(fs, join(path, ONNX_DIR, e["file"]))}


def _check_weights(fs: pafs.FileSystem, path: str, shown: str) -> tuple[str, int]:
    """sha256 and size of a safetensors file, read once; its header must describe its size."""
    digest, size, head = hashlib.sha256(), 0, b""
    with fs.open_input_stream(path) as src:
        while chunk := src.read(READ_CHUNK):
            digest.update(chunk)
            size += len(chunk)
            if len(head) < READ_CHUNK:
                head += chunk
    problem = _safetensors_problem(head, size)
    if problem:
        raise CheckpointError(f"checkpoint {shown!r} has damaged weights ({WEIGHTS_FILE}): {problem}")
    return digest.hexdigest(), size


def _safetensors_problem(head: bytes, size: int) -> str | None:
    """Why a safetensors file of ``size`` bytes starting with ``head`` is damaged (None if intact)."""
    if size < 8:
        return f"{size} bytes, shorter than a header"
    (header_len,) = struct.unpack("<Q", head[:8])
    if 8 + header_len > min(size, len(head)):
        return f"header of {header_len} bytes does not fit the file"
    try:
        header = json.loads(head[8:8 + header_len])
        end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    except (ValueError, KeyError, TypeError, IndexError) as err:
        return f"unreadable header ({err!r})"
    if 8 + header_len + end != size:
        return f"{size} bytes, but its header describes {8 + header_len + end}"
    return None


def read_temperature(model_dir: str | os.PathLike[str]) -> float:
    """The softmax temperature saved with a local model folder (1.0 when it has none).

    Raises:
        CheckpointError: a calibration file that is unreadable or holds no positive temperature.
    """
    file = Path(model_dir) / CALIBRATION_FILE
    if not file.is_file():
        return 1.0
    try:
        temperature = float(json.loads(file.read_text())["temperature"])
    except (ValueError, KeyError, TypeError, OSError) as err:
        raise CheckpointError(f"{file} is corrupt: {err!r}") from None
    if not temperature > 0:
        raise CheckpointError(f"{file}: temperature must be > 0, got {temperature}")
    return temperature
