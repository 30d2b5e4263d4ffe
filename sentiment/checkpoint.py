"""The one checkpoint format, written atomically.

A *model folder* is a plain Hugging Face folder that loads without Ray or DeepSpeed::

    config.json            architecture and id2label/label2id
    model.safetensors      weights (safetensors only)
    tokenizer.json ...     the tokenizer
    train_config.json      the resolved project config (max length, truncation, labels ...)
    metrics.json           the metrics of the epoch it was saved at
    calibration.json       optional: {"temperature": T, ...} fitted by ``ray_jobs.evaluate --calibrate``

A training *epoch checkpoint* holds ``model/`` (that folder), ``deepspeed/`` (engine, optimizer
and scheduler state per rank, for resuming) and ``train_state.json``. A *run folder* holds the
epoch checkpoints (``epoch_001`` ...) and ``result.json``, which names the best and last ones.
A sweep writes ``best.json`` (``{"checkpoint": <epoch checkpoint>, ...}``) beside its results and
at the storage root, so the word ``best`` finds the best model of the latest sweep.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sentiment.config import Config, RunConfig, config_from_dict

MODEL_DIR = "model"
CONFIG_FILE = "train_config.json"
METRICS_FILE = "metrics.json"
STATE_FILE = "train_state.json"
RESULT_FILE = "result.json"
BEST_FILE = "best.json"
CALIBRATION_FILE = "calibration.json"
REQUIRED_MODEL_FILES = ("config.json", "model.safetensors", CONFIG_FILE)


class CheckpointError(ValueError):
    """A checkpoint that is missing, incomplete or of the wrong kind."""


@contextmanager
def atomic_dir(dest: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it is renamed to ``dest`` in one step.

    A crash inside the block leaves only a ``.tmp-`` folder, never a half-written ``dest``.
    An existing ``dest`` is replaced only after the new one is complete.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".tmp-{dest.name}-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        yield tmp
        if dest.exists():
            old = dest.with_name(f".old-{dest.name}-{uuid.uuid4().hex[:8]}")
            dest.rename(old)
            tmp.rename(dest)
            shutil.rmtree(old)
        else:
            tmp.rename(dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def write_json(path: str | os.PathLike[str], data: Any) -> None:
    """Write JSON to ``path`` atomically (temp file + rename)."""
    path = Path(path)
    tmp = path.with_name(f".tmp-{path.name}-{uuid.uuid4().hex[:8]}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)


def save_model_dir(model: Any, tokenizer: Any, cfg: Config, metrics: dict[str, Any], dest: str | os.PathLike[str]) -> Path:
    """Write a model folder (see module doc) atomically and return its path."""
    with atomic_dir(dest) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        write_json(tmp / CONFIG_FILE, cfg.model_dump(mode="json"))
        write_json(tmp / METRICS_FILE, metrics)
    return Path(dest)


def resolve_model_dir(path: str | os.PathLike[str], which: str = "best", storage_path: str | None = None) -> Path:
    """Find the model folder behind a model folder, an epoch checkpoint, a run folder, a folder
    with ``best.json``, or the word ``best``.

    Args:
        path: any of the layouts in the module doc, or ``best`` (``<storage_path>/best.json``).
        which: for a run folder, ``best`` or ``last`` epoch.
        storage_path: where ``best`` is looked up (default: ``run.storage_path``'s default).

    Raises:
        CheckpointError: nothing there, or a folder of none of the layouts.
    """
    if str(path) == "best" and not Path("best").exists():
        path = Path(storage_path or RunConfig().storage_path) / BEST_FILE
    path = Path(path).expanduser()
    if path.name == BEST_FILE and path.is_file():
        path = path.parent
    if not path.exists():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    if (path / BEST_FILE).is_file():
        return resolve_model_dir(json.loads((path / BEST_FILE).read_text())["checkpoint"])
    if (path / RESULT_FILE).is_file():
        result = json.loads((path / RESULT_FILE).read_text())
        key = f"{which}_checkpoint"
        if key not in result:
            raise CheckpointError(f"{path / RESULT_FILE} names no {key} (choose best or last)")
        return resolve_model_dir(result[key])
    if (path / MODEL_DIR).is_dir():
        path = path / MODEL_DIR
    missing = [f for f in REQUIRED_MODEL_FILES if not (path / f).is_file()]
    if missing:
        raise CheckpointError(
            f"{str(path)!r} is not a complete model checkpoint: missing {', '.join(missing)}"
        )
    return path


def read_temperature(path: str | os.PathLike[str]) -> float:
    """The softmax temperature saved with a model folder (1.0 when it has none).

    Raises:
        CheckpointError: a calibration file that is unreadable or holds no positive temperature.
    """
    file = Path(path) / CALIBRATION_FILE
    if not file.is_file():
        return 1.0
    try:
        temperature = float(json.loads(file.read_text())["temperature"])
    except (ValueError, KeyError, TypeError, OSError) as err:
        raise CheckpointError(f"{file} is corrupt: {err!r}") from None
    if not temperature > 0:
        raise CheckpointError(f"{file}: temperature must be > 0, got {temperature}")
    return temperature


def read_model_dir(path: str | os.PathLike[str]) -> tuple[Config, dict[str, Any]]:
    """The resolved training config and the metrics stored in a model folder.

    Raises:
        CheckpointError: unreadable or invalid JSON, or a model that is not a sequence classifier.
    """
    path = resolve_model_dir(path)
    try:
        cfg = config_from_dict(json.loads((path / CONFIG_FILE).read_text()), str(path / CONFIG_FILE))
        metrics_file = path / METRICS_FILE
        metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
        architectures = json.loads((path / "config.json").read_text()).get("architectures") or []
    except (ValueError, OSError) as err:
        raise CheckpointError(f"checkpoint {str(path)!r} is corrupt: {err}") from None
    if not any(str(a).endswith("ForSequenceClassification") for a in architectures):
        raise CheckpointError(f"{path} is not a sequence classifier (architectures: {architectures or 'none'})")
    return cfg, metrics
