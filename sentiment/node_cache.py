"""This node's copies of remote model folders, shared by the processes that load them.

A model folder behind a URI is downloaded once per node into ``cache_root()/<sha256>/model``
(checked against the sha256 that :func:`sentiment.layout.resolve` recorded), whatever the number
of replicas or actors on the node that load it. Each process holds a lease file while it uses the
copy; the copy is removed when the last lease is given back, and a lease whose process died is
noticed at the next use on that node (:func:`prune_cache`), as is a download its process left
half done. All changes happen under one file lock, waited for at most
``$SENTIMENT_CACHE_LOCK_TIMEOUT_S`` seconds. Files that are not the cache's own there are ignored.
:func:`open_local` is the way in: a local model folder as it is, a remote one through the cache.
This module builds on :mod:`sentiment.layout`, never the other way round.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sentiment.layout import MODEL_DIR, WEIGHTS_FILE, CheckpointError, ResolvedModel
from sentiment.storage import UnsafeKeyError, download, filesystem

LOCK_TIMEOUT_ENV = "SENTIMENT_CACHE_LOCK_TIMEOUT_S"
DEFAULT_LOCK_TIMEOUT_S = 600.0


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


def lock_timeout() -> float:
    """Seconds to wait for the cache lock: ``$SENTIMENT_CACHE_LOCK_TIMEOUT_S`` or 600.

    Raises:
        ValueError: a value that is not a positive number.
    """
    raw = os.environ.get(LOCK_TIMEOUT_ENV) or str(DEFAULT_LOCK_TIMEOUT_S)
    try:
        timeout = float(raw)
    except ValueError:
        timeout = 0.0
    if not timeout > 0:
        raise ValueError(f"${LOCK_TIMEOUT_ENV}={raw!r}: give the seconds to wait for the model cache's lock (> 0)")
    return timeout


@contextmanager
def _cache_lock() -> Iterator[None]:
    """Hold the cache's lock (its holder's pid is written in it), waiting at most :func:`lock_timeout`.

    Raises:
        CheckpointError: the lock was not free within the timeout, naming the lock file and its holder.
    """
    import fcntl

    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    timeout = lock_timeout()
    deadline = time.monotonic() + timeout
    with open(root / ".lock", "a+") as lock:
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    lock.seek(0)
                    raise CheckpointError(
                        f"the model cache's lock {root / '.lock'} was held for more than {timeout:g} s "
                        f"(by pid {lock.read().strip() or '?'}: a stuck download?); "
                        f"set ${LOCK_TIMEOUT_ENV} to wait longer"
                    ) from None
                time.sleep(0.05)
        try:
            lock.truncate(0)
            lock.write(str(os.getpid()))
            lock.flush()
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def open_local(model: ResolvedModel) -> LocalModel:
    """A local folder holding ``model``: its folder itself, or this node's cached copy of a remote one
    (:func:`acquire_copy`); close it (or use it as a context manager) when done."""
    if not model.is_remote:
        return LocalModel(Path(model.location), None)
    return acquire_copy(model)


def acquire_copy(model: ResolvedModel) -> LocalModel:
    """This node's copy of a remote model folder, downloaded once per node (keyed by sha256) and
    held by this process until :meth:`LocalModel.close` (or until it dies).

    Raises:
        CheckpointError: the downloaded weights differ from the resolved ones, or the cache's lock
            stayed taken longer than :func:`lock_timeout`.
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
    """Download into ``.tmp-<sha256>-<pid>-<random>`` (pruned if this process dies), then rename it in place."""
    tmp = entry.with_name(f".tmp-{entry.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        fs, path = filesystem(model.location)
        try:
            sha = download(fs, path, tmp / MODEL_DIR, hashed=WEIGHTS_FILE)
        except UnsafeKeyError as err:
            raise CheckpointError(str(err)) from None
        if sha != model.sha256:
            raise CheckpointError(f"{model.location}: weights changed since resolved (sha256 {sha} != {model.sha256})")
        _remove(entry)
        tmp.rename(entry)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def verify_files(folder: Path, expected: dict[str, str]) -> None:
    """Hash each file of ``expected`` (its path relative to ``folder`` -> hex sha256) again.

    Raises:
        CheckpointError: naming a file that is missing or whose sha256 differs.
    """
    for name, sha in expected.items():
        file = folder / name
        if not file.is_file():
            raise CheckpointError(f"{file} is missing (its sha256 was recorded as {sha[:12]}...)")
        with file.open("rb") as src:
            actual = hashlib.file_digest(src, "sha256").hexdigest()
        if actual != sha:
            raise CheckpointError(f"{file} changed since the checkpoint was resolved (sha256 {actual[:12]}..., expected {sha[:12]}...)")


def _remove(path: Path) -> None:
    """Remove a folder, a file or a link at ``path``, if anything is there."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _pid_of(name: str) -> int | None:
    """The pid a lease (``<pid>-<random>``) or download (``.tmp-<sha256>-<pid>-<random>``) is named by."""
    parts = name.split("-")
    pid = parts[2] if name.startswith(".tmp-") and len(parts) > 2 else parts[0]
    return int(pid) if pid.isdigit() else None


def _alive(pid: int | None) -> bool:
    """Whether process ``pid`` runs on this node (False for None or 0)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:
        return True
    return True


def prune_cache() -> None:
    """Remove this node's cached copies that no live process holds, and downloads whose process
    died; anything else in the cache folder is left alone."""
    if not cache_root().is_dir():
        return
    with _cache_lock():
        for entry in cache_root().iterdir():
            if entry.is_dir() and len(entry.name) == 64:
                _remove_unused(entry)
            elif entry.name.startswith(".tmp-") and not _alive(_pid_of(entry.name)):
                _remove(entry)


def _remove_unused(entry: Path) -> None:
    """Remove a cached copy whose leases all belong to processes that are gone (call under the lock);
    a file in ``leases/`` not named by a pid is no lease."""
    leases = entry / "leases"
    live = [p for p in leases.iterdir() if _alive(_pid_of(p.name))] if leases.is_dir() else []
    if not live:
        _remove(entry)
