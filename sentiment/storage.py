"""Storage: local paths and URIs on one pyarrow filesystem API, and writes that never leave half a file.

A local path and a URI (``s3://``, ``gs://``, ``file://``, with a query such as
``?endpoint_override=...``) are handled by the same functions: :func:`filesystem` opens either,
storage paths are joined with ``/``, and :func:`location_of` turns a path back into a location with
its URI's scheme and query. Every write is atomic: a file is written under a temporary name and
moved into place (:func:`write_file`), a folder is built beside its destination and renamed
(:func:`atomic_dir`) or uploaded only once complete (:func:`publish_dir`). What the files of a run
are called is :mod:`sentiment.layout`'s business, not this module's.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pyarrow.fs as pafs

from sentiment.config import ConfigError

READ_CHUNK = 1 << 20
"""Bytes read at a time when streaming a file (copies, hashes)."""


class UnsafeKeyError(ValueError):
    """A listed object key that would be copied outside the destination folder."""


def is_uri(location: str | os.PathLike[str]) -> bool:
    """Whether ``location`` is a URI (``scheme://...``) rather than a local path."""
    return "://" in str(location)


def filesystem(location: str | os.PathLike[str]) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem and the path on it for a local path (made absolute) or a URI.

    Raises:
        ConfigError: a URI whose filesystem is not installed or cannot be reached.
    """
    location = str(location)
    if not is_uri(location):
        return pafs.LocalFileSystem(), str(Path(location).expanduser().resolve())
    try:
        return pafs.FileSystem.from_uri(location)
    except Exception as err:
        raise ConfigError(f"storage location {location!r} cannot be opened: {err}") from None


def join(*parts: str) -> str:
    """Join storage path parts with ``/`` (storage paths are not OS paths)."""
    return "/".join(p.rstrip("/") for p in parts)


def parent(path: str) -> str:
    """The folder holding ``path`` on its filesystem."""
    return path.rstrip("/").rsplit("/", 1)[0]


def location_of(base: str, path: str) -> str:
    """``path`` (on ``base``'s filesystem) as a location: a local path, or a URI with ``base``'s
    scheme and query (``?endpoint_override=...`` and the like stay)."""
    if not is_uri(base):
        return path
    parts = urlsplit(base)
    netloc, rest = (parts.netloc, path) if path.startswith("/") else (path.split("/", 1) + [""])[:2]
    return urlunsplit((parts.scheme, netloc, "/" + rest.lstrip("/"), parts.query, ""))


def child(location: str, *names: str) -> str:
    """``names`` under the folder ``location`` (a local path, or a URI whose query stays at the end)."""
    if not is_uri(location):
        return join(location, *names)
    parts = urlsplit(location)
    return urlunsplit(parts._replace(path=join(parts.path, *names)))


class StorageFullError(OSError):
    """The run's storage has too little free space for the next checkpoint; nothing of it was written."""


def free_bytes(location: str) -> int | None:
    """Free space on the local filesystem holding ``location`` (its nearest existing folder), or
    None for remote storage (object stores report no free space)."""
    fs, path = filesystem(location)
    if not isinstance(fs, pafs.LocalFileSystem):
        return None
    folder = Path(path)
    while not folder.exists():
        folder = folder.parent
    return shutil.disk_usage(folder).free


def file_sizes(fs: pafs.FileSystem, path: str) -> dict[str, int]:
    """Size of every file under the folder ``path`` of ``fs``, by its path relative to ``path``."""
    files = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    return {f.path[len(path):].lstrip("/"): f.size for f in files if f.type == pafs.FileType.File}


def check_free_space(location: str, needed: int, what: str) -> None:
    """Refuse to start writing ``what`` (``needed`` bytes) where the local filesystem has less free.

    Raises:
        StorageFullError: one line naming the storage path, the free space and the space needed.
    """
    free = free_bytes(location)
    if free is not None and free < needed:
        raise StorageFullError(
            f"storage full: {location} has {free / 2**20:.1f} MiB free, {what} needs {needed / 2**20:.1f} MiB; "
            "free space there and rerun with the same run.name: it resumes from the last complete checkpoint"
        )


def exists(fs: pafs.FileSystem, path: str) -> bool:
    """Whether anything is at ``path``."""
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def is_file(fs: pafs.FileSystem, path: str) -> bool:
    """Whether a file (not a folder) is at ``path``."""
    return fs.get_file_info(path).type == pafs.FileType.File


def read_json(fs: pafs.FileSystem, path: str) -> Any:
    """Read JSON from ``path``."""
    with fs.open_input_stream(path) as src:
        return json.loads(src.read().decode())


def write_file(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` under a temporary name first, then move it into place."""
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    with fs.open_output_stream(tmp) as out:
        out.write(data)
    fs.move(tmp, path)


def write_json(fs: pafs.FileSystem, path: str, data: Any) -> None:
    """Write JSON to ``path`` atomically (:func:`write_file`)."""
    write_file(fs, path, json.dumps(data, indent=2, sort_keys=True).encode())


def write_local_json(path: str | os.PathLike[str], data: Any) -> None:
    """:func:`write_json` for a local path."""
    write_json(pafs.LocalFileSystem(), str(Path(path).resolve()), data)


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


@contextmanager
def publish_dir(location: str) -> Iterator[Path]:
    """Yield an empty local folder that becomes ``location`` only when the block completes:
    renamed into place for a local path, uploaded for a URI."""
    if not is_uri(location):
        with atomic_dir(location) as tmp:
            yield tmp
        return
    fs, path = filesystem(location)
    with tempfile.TemporaryDirectory(prefix="publish-") as local:
        yield Path(local)
        pafs.copy_files(local, path, destination_filesystem=fs)


def download(fs: pafs.FileSystem, path: str, dest: str | os.PathLike[str], hashed: str | None = None) -> str | None:
    """Copy the folder ``path`` to the local folder ``dest``; returns the sha256 of its top-level
    file named ``hashed`` (hashed as it streams), or None when there is no such file.

    Raises:
        UnsafeKeyError: the listing holds a key that would land outside ``dest`` (absolute, outside
            ``path``, or with an empty, ``.`` or ``..`` part); every key is checked before anything is written.
    """
    files = [info for info in fs.get_file_info(pafs.FileSelector(path, recursive=True)) if info.type == pafs.FileType.File]
    targets = [(info.path, Path(dest) / _relative_key(path, info.path)) for info in files]
    digest = None
    for key, target in targets:
        target.parent.mkdir(parents=True, exist_ok=True)
        hasher = hashlib.sha256() if target.name == hashed and target.parent == Path(dest) else None
        with fs.open_input_stream(key) as src, target.open("wb") as out:
            while chunk := src.read(READ_CHUNK):
                out.write(chunk)
                if hasher:
                    hasher.update(chunk)
        digest = hasher.hexdigest() if hasher else digest
    return digest


def _relative_key(folder: str, key: str) -> str:
    """``key``'s path under the listed ``folder``, refused unless it stays inside it."""
    root = folder.rstrip("/") + "/"
    relative = key[len(root):] if key.startswith(root) else ""
    if not relative or "\0" in relative or any(part in ("", ".", "..") for part in relative.split("/")):
        raise UnsafeKeyError(f"{folder}: object key {key!r} would be copied outside the download folder; nothing was copied")
    return relative


def file_sha256(fs: pafs.FileSystem, path: str) -> str:
    """Hex sha256 of the file at ``path``."""
    digest = hashlib.sha256()
    with fs.open_input_stream(path) as src:
        while chunk := src.read(READ_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
