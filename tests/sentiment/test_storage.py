"""Storage: local paths and URIs, atomic files and folders, and copies that stay inside their folder."""

import hashlib
import os

import fsspec
import pyarrow.fs as pafs
import pytest

from sentiment import storage
from sentiment.storage import UnsafeKeyError, atomic_dir


@pytest.fixture()
def folder(tmp_path):
    """A folder of a few files, one of them nested (as an object store lists a model folder)."""
    root = tmp_path / "src" / "model"
    (root / "sub").mkdir(parents=True)
    (root / "weights.bin").write_bytes(os.urandom(3 * storage.READ_CHUNK + 17))  # several reads
    (root / "config.json").write_text("{}")
    (root / "sub" / "weights.bin").write_bytes(b"not the top-level one")
    return root


def test_atomic_dir_leaves_nothing_on_a_crash(tmp_path):
    dest = tmp_path / "ckpt"
    with pytest.raises(RuntimeError):
        with atomic_dir(dest) as tmp:
            (tmp / "half.bin").write_bytes(b"x" * 10)
            raise RuntimeError("killed mid-write")
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_replaces_only_when_complete(tmp_path):
    dest = tmp_path / "ckpt"
    with atomic_dir(dest) as tmp:
        (tmp / "v").write_text("1")
    with pytest.raises(RuntimeError):
        with atomic_dir(dest) as tmp:
            (tmp / "v").write_text("2")
            raise RuntimeError
    assert (dest / "v").read_text() == "1"
    with atomic_dir(dest) as tmp:
        (tmp / "v").write_text("3")
    assert (dest / "v").read_text() == "3" and [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_locations_keep_scheme_and_query():
    base = "s3://bucket/runs?endpoint_override=127.0.0.1:9000&scheme=http"
    assert storage.location_of(base, "bucket/runs/r1/epoch_001") == \
        "s3://bucket/runs/r1/epoch_001?endpoint_override=127.0.0.1:9000&scheme=http"
    assert storage.child(base, "r1", "best.json") == "s3://bucket/runs/r1/best.json?endpoint_override=127.0.0.1:9000&scheme=http"
    assert storage.location_of("file:///data/runs", "/data/runs/r1") == "file:///data/runs/r1"
    assert storage.location_of("/data/runs", "/data/runs/r1") == "/data/runs/r1"
    assert storage.is_uri("gs://b/x") and not storage.is_uri("runs/x")


def test_write_json_is_atomic_on_a_filesystem(tmp_path):
    fs, path = storage.filesystem(tmp_path)
    storage.write_json(fs, storage.join(path, "a.json"), {"x": 1})
    storage.write_json(fs, storage.join(path, "a.json"), {"x": 2})
    assert storage.read_json(fs, storage.join(path, "a.json")) == {"x": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


class _ListsAStrayKey(pafs.FSSpecHandler):
    """A local folder whose listing also names one more key (as a hostile object store's could)."""

    def __init__(self, stray: str) -> None:
        super().__init__(fsspec.filesystem("file"))
        self.stray = stray

    def get_file_info_selector(self, selector):
        return [*super().get_file_info_selector(selector), pafs.FileInfo(self.stray, pafs.FileType.File, size=5)]


@pytest.mark.parametrize("stray", [
    "{folder}/../../evil.txt", "{folder}/zz/../../../evil.txt", "{folder}/{tmp}/evil.txt",
    "{tmp}/evil.txt", "{folder}/./evil.txt", "{folder}-sibling/evil.txt",
])
def test_download_refuses_a_key_outside_the_folder_and_writes_nothing(folder, tmp_path, stray):
    (tmp_path / "evil.txt").write_text("owned")  # what the stray key reads, wherever it points
    key = stray.format(folder=str(folder), tmp=str(tmp_path))
    dest = tmp_path / "out" / "copy" / "model"
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(UnsafeKeyError, match="object key .*evil.txt.* outside the download folder"):
        storage.download(pafs.PyFileSystem(_ListsAStrayKey(key)), str(folder), dest)
    assert sorted(tmp_path.rglob("*")) == before  # not the good files either, nor evil.txt anywhere


def test_download_copies_a_well_formed_listing_and_hashes_the_named_file(folder, tmp_path):
    fs = pafs.PyFileSystem(pafs.FSSpecHandler(fsspec.filesystem("file")))
    sha = storage.download(fs, str(folder), tmp_path / "copy", hashed="weights.bin")
    assert sha == hashlib.sha256((folder / "weights.bin").read_bytes()).hexdigest()
    copied = sorted(str(p.relative_to(tmp_path / "copy")) for p in (tmp_path / "copy").rglob("*"))
    assert copied == sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))
    assert (tmp_path / "copy" / "sub" / "weights.bin").read_bytes() == b"not the top-level one"
    assert storage.download(fs, str(folder), tmp_path / "again", hashed="absent.bin") is None
