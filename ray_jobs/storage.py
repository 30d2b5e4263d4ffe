"""Read and write run files on the storage path: a local folder or a pyarrow filesystem URI."""

from __future__ import annotations

import json
import tempfile
from typing import Any

import pyarrow.fs as pafs


def resolve(location: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem and the path on it for a local path or a URI (s3://, gs://).

    Raises:
        ValueError: a URI whose filesystem is not installed or cannot be reached.
    """
    if "://" not in location:
        return pafs.LocalFileSystem(), location
    try:
        return pafs.FileSystem.from_uri(location)
    except Exception as err:
        raise ValueError(f"storage location {location!r} cannot be opened: {err}") from None


def join(*parts: str) -> str:
    """Join storage path parts with ``/`` (storage paths are not OS paths)."""
    return "/".join(p.rstrip("/") for p in parts)


def local_copy(fs: pafs.FileSystem, path: str) -> str:
    """A local folder holding ``path`` (itself on a local filesystem, else a temp download)."""
    if isinstance(fs, pafs.LocalFileSystem):
        return path
    dest = tempfile.mkdtemp(prefix="sentiment-ckpt-")
    pafs.copy_files(path, dest, source_filesystem=fs)
    return dest


def write_json(fs: pafs.FileSystem, path: str, data: Any) -> None:
    """Write JSON to ``path``: under a temporary name first, then moved into place."""
    tmp = path + ".tmp"
    with fs.open_output_stream(tmp) as out:
        out.write(json.dumps(data, indent=2, sort_keys=True).encode())
    fs.move(tmp, path)


def read_json(fs: pafs.FileSystem, path: str) -> Any:
    """Read JSON from ``path``."""
    with fs.open_input_stream(path) as src:
        return json.loads(src.read().decode())
