"""This node's copies of remote model folders, shared by the processes that load them.

A model folder behind a URI is downloaded once per node into ``cache_root()/<sha256>/model``
(checked against the sha256 that :func:`sentiment.layout.resolve` recorded), whatever the number
of replicas or actors on the node that load it. Each process holds a lease file while it uses the
copy; the copy is removed when the last lease is given back, and a lease whose process died is
noticed at the next use on that node (:func:`prune_cache`). All changes happen under one file lock.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sentiment.layout import MODEL_DIR, CheckpointError, ResolvedModel, download, filesystem


def cache_root() -> Path:
    """Where this node keeps copies of remote model folders: ``$SENTIMENT_CACHE_DIR`` or
    ``~/.cache/sentiment/models``."""
    return Path(os.environ.get("SENTIMENT_CACHE_DIR") or Path.home() / ".cache" / "sentiment" / "models")


@dataclass
class LocalModel:
    """A local model folder in use; for a cached copy, :meth:`close` gives up this process's
    claim and the copy is removed once no live process holds one."""

    path: Path
    lease: Path | None

    def close(self) -> None:
        """Release the cached copy (nothing to do for a folder that was local already)."""
        if self.lease is None:
            return
        with _cache_lock():
            self.lease.unlink(missing_ok=True)
            _remove_unused(self.lease.parent.parent)
        self.lease = None

    def __enter__(self) -> LocalModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextmanager
def _cache_lock() -> Iterator[None]:
    import fcntl

    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def acquire_copy(model: ResolvedModel) -> LocalModel:
    """This node's copy of a remote model folder, downloaded once per node (keyed by sha256) and
    held by this process until :meth:`LocalModel.close` (or until it dies).

    Raises:
        CheckpointError: the downloaded weights differ from the resolved ones.
    """
    root = cache_root()
    entry = root / model.sha256
    prune_cache()
    with _cache_lock():
        if not (entry / MODEL_DIR).is_dir():
            _download_entry(model, entry)
        lease = entry / "leases" / f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        lease.parent.mkdir(exist_ok=True)
        lease.touch()
    return LocalModel(entry / MODEL_DIR, lease)


def _download_entry(model: ResolvedModel, entry: Path) -> None:
    tmp = entry.with_name(f".tmp-{entry.name}-{uuid.uuid4().hex[:8]}")
    try:
        fs, path = filesystem(model.location)
        sha = download(fs, path, tmp / MODEL_DIR)
        if sha != model.sha256:
            raise CheckpointError(f"{model.location}: weights changed since resolved (sha256 {sha} != {model.sha256})")
        shutil.rmtree(entry, ignore_errors=True)
        tmp.rename(entry)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def prune_cache() -> None:
    """Remove this node's cached copies that no live process holds."""
    if not cache_root().is_dir():
        return
    with _cache_lock():
        for entry in cache_root().iterdir():
            if entry.is_dir() and len(entry.name) == 64:
                _remove_unused(entry)


def _remove_unused(entry: Path) -> None:
    """Remove a cached copy whose leases all belong to processes that are gone (call under the lock)."""
    leases = entry / "leases"
    live = [p for p in leases.iterdir() if _alive(int(p.name.split("-")[0]))] if leases.is_dir() else []
    if not live:
        shutil.rmtree(entry, ignore_errors=True)
