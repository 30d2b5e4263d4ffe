"""Find, check and fetch a model folder for inference (Serve, batch prediction, evaluation).

The checkpoint is named once: a model folder, an epoch checkpoint, a run folder (its best or last
epoch), the word ``best`` (the sweep's recorded best) or a storage URI. :func:`resolve_checkpoint`
checks it before anything is deployed or scheduled; each worker then copies a remote one locally
(:func:`local_model_dir`). The sha256 of the weights names what is served or evaluated.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pyarrow.fs as pafs
from safetensors import safe_open

from ray_jobs import storage
from sentiment.checkpoint import (
    MODEL_DIR,
    REQUIRED_MODEL_FILES,
    RESULT_FILE,
    CheckpointError,
    read_model_dir,
    resolve_model_dir,
)

WEIGHTS_FILE = "model.safetensors"


def resolve_checkpoint(checkpoint: str, which: str = "best", storage_path: str | None = None) -> str:
    """The model folder behind ``checkpoint``, checked so that a bad one fails before deploying.

    Args:
        checkpoint: a model folder, an epoch checkpoint, a run folder, a folder with ``best.json``,
            the word ``best``, or a URI (``s3://``, ``gs://``, ``file://``) of a model folder, an
            epoch checkpoint or a run folder.
        which: for a run folder, its ``best`` or ``last`` epoch.
        storage_path: where the word ``best`` is looked up (default: ``run.storage_path``'s).

    Returns:
        An absolute local path, or a URI, of the model folder itself.

    Raises:
        CheckpointError: missing, incomplete or corrupt (unreadable config, damaged weights).
    """
    if "://" in checkpoint:
        return _resolve_remote(checkpoint, which)
    path = resolve_model_dir(checkpoint, which, storage_path).resolve()
    read_model_dir(path)
    try:
        with safe_open(str(path / WEIGHTS_FILE), "pt"):
            pass
    except Exception as err:
        raise CheckpointError(f"checkpoint {str(path)!r} has damaged weights ({WEIGHTS_FILE}): {err}") from None
    return str(path)


def _resolve_remote(uri: str, which: str) -> str:
    """Follow a run folder's ``result.json`` and an epoch's ``model/`` on a remote filesystem."""
    try:
        fs, path = storage.resolve(uri)
    except ValueError as err:
        raise CheckpointError(str(err)) from None
    scheme = uri.split("://", 1)[0]
    if _exists(fs, storage.join(path, RESULT_FILE)):
        result = storage.read_json(fs, storage.join(path, RESULT_FILE))
        if f"{which}_checkpoint" not in result:
            raise CheckpointError(f"{uri}/{RESULT_FILE} names no {which}_checkpoint (choose best or last)")
        path = result[f"{which}_checkpoint"]
    if _exists(fs, storage.join(path, MODEL_DIR)):
        path = storage.join(path, MODEL_DIR)
    missing = [f for f in REQUIRED_MODEL_FILES if not _exists(fs, storage.join(path, f))]
    if missing:
        raise CheckpointError(f"{scheme}://{path} is not a complete model checkpoint: missing {', '.join(missing)}")
    return f"{scheme}://{path}"


def _exists(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def local_model_dir(model: str) -> Path:
    """A local folder holding the model folder ``model`` (a local path, or a URI copied locally)."""
    if "://" not in model:
        return Path(model)
    fs, path = storage.resolve(model)
    return Path(storage.local_copy(fs, path))


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
