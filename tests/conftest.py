"""Shared fixtures: a tiny BERT saved to a folder, small IMDB-shaped data, test artifacts."""

from __future__ import annotations

import ray_jobs  # noqa: F401  (imported before Ray: keeps the Rays tests start on loopback)

# isort: split

import os
import shutil
from pathlib import Path

import pandas as pd
import pytest

from tests.browser import browser  # noqa: F401  (the browser tests' fixture)

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the hub is unreachable here: fail fast, not after retries
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_SILENT", "true")
# Ray Train's controller polls its workers every 2 s by default: each start, report and finish of
# the suite's ~35 short training runs waits up to one poll. Rays started from this environment inherit
# this (the separate hosts of tests/system/test_hosts.py get a clean environment of their own).
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")


def imdb_dir() -> Path | None:
    """The real IMDB parquet folder from $IMDB_DATA_DIR, if it is there."""
    path = os.environ.get("IMDB_DATA_DIR")
    return Path(path) if path and (Path(path) / "train.parquet").is_file() else None


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny BERT the tests train (``bench.common.tiny_bert``): 128 positions."""
    from bench.common import tiny_bert

    return tiny_bert(tmp_path_factory.mktemp("tiny-bert"), positions=128)


@pytest.fixture(scope="session")
def tiny_long_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny BERT with 512 positions, for configs that keep their 512-token shape shrunk."""
    from bench.common import tiny_bert

    return tiny_bert(tmp_path_factory.mktemp("tiny-bert-512"), positions=512)


@pytest.fixture(scope="session")
def deterministic_model(tmp_path_factory, tiny_model_dir):
    """The tiny BERT without dropout, so 1- and 2-worker runs differ only by float summation order."""
    from transformers import AutoConfig, AutoTokenizer, BertForSequenceClassification

    folder = tmp_path_factory.mktemp("tiny-nodropout")
    config = AutoConfig.from_pretrained(tiny_model_dir, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    BertForSequenceClassification(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def small_imdb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A parquet folder shaped like IMDB: real reviews when $IMDB_DATA_DIR is set, else synthetic."""
    folder = tmp_path_factory.mktemp("imdb-small")
    real = imdb_dir()
    for split, n in (("train", 400), ("test", 200)):
        if real is not None:
            df = pd.read_parquet(real / f"{split}.parquet").groupby("label").sample(n // 2, random_state=0)
        else:
            words = {0: "dull awful boring waste <br /><br />bad", 1: "great brilliant fun moving <br />superb"}
            df = pd.DataFrame({"text": [f"{words[i % 2]} review {i} " * (1 + i % 7) for i in range(n)],
                               "label": [i % 2 for i in range(n)]})
        df.sample(frac=1, random_state=0).to_parquet(folder / f"{split}.parquet", index=False)
    return folder


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """Folder for screenshots and other files a person may want to look at after the tests."""
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="module")
def local_ray():
    """A loopback-only local Ray with 2 CPUs for one test module (one Ray at a time on 2 cores)."""
    import ray

    from ray_jobs.local_ray import init_ray

    init_ray(num_cpus=2)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def smoke_run(tiny_model_dir, small_imdb, tmp_path_factory):
    """One real 2-epoch training run of the tiny BERT (2 workers, ZeRO-2; ``smoke_config``), shared
    by every module that reads a trained run: ``(config, result.json)``.

    It uses the Ray of the module that first asks for it, or starts and stops its own.
    """
    import ray

    from ray_jobs.launcher import launch, prepare_data
    from ray_jobs.local_ray import init_ray
    from tests.support import smoke_config

    own_ray = not ray.is_initialized()
    if own_ray:
        init_ray(num_cpus=2)
    try:
        cfg = smoke_config(tiny_model_dir, small_imdb, tmp_path_factory.mktemp("runs"), "smoke")
        return cfg, launch(cfg, prepare_data(cfg))
    finally:
        if own_ray:
            ray.shutdown()


@pytest.fixture(scope="module")
def unlabelled(small_imdb: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """small_imdb plus an ``unsupervised`` split (real unlabelled reviews when $IMDB_DATA_DIR is set)."""
    folder = tmp_path_factory.mktemp("imdb-unlabelled")
    for split in ("train", "test"):
        shutil.copy(small_imdb / f"{split}.parquet", folder)
    real = imdb_dir()
    if real is not None:
        df = pd.read_parquet(real / "unsupervised.parquet").sample(300, random_state=0)
    else:
        df = pd.DataFrame({"text": [f"an unlabelled review number {i} about a film " * (1 + i % 9) for i in range(300)],
                           "label": -1})
    df.to_parquet(folder / "unsupervised.parquet", index=False)
    return folder
