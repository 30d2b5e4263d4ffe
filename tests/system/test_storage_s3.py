"""`run.storage_path` on S3, end to end against a local S3 (moto, 127.0.0.1): a 2-worker ZeRO-2
run writes every checkpoint, both ranks' shards and result.json to the bucket; Serve's checkpoint
resolution and the evaluation job read the run back from the URI. Bad storage fails before Ray."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

from ray_jobs import train
from ray_jobs.launcher import check_storage, launch, prepare_data
from ray_jobs.local_ray import free_loopback_port
from sentiment.config import ConfigError, load_config
from tests.support import S3_CREDENTIALS, s3_keys, s3_server, smoke_config
from tune import cv, sweep


@pytest.fixture(scope="module")
def s3():
    """A moto S3 on 127.0.0.1 with an empty ``bucket``; yields its endpoint URL and a boto3 client.

    The fake credentials go into this process's environment before the module's Ray starts, so
    the Ray workers inherit them (as cluster nodes would get an instance role).
    """
    saved = {k: os.environ.get(k) for k in S3_CREDENTIALS}
    os.environ.update(S3_CREDENTIALS)
    with s3_server("127.0.0.1") as (endpoint, client):
        yield endpoint, client
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="module")
def trained_on_s3(s3, local_ray, tiny_model_dir, small_imdb):
    endpoint, _ = s3
    # The endpoint travels in the URI (pyarrow's query options); AWS_ENDPOINT_URL_S3 is not set.
    uri = f"s3://bucket/runs?endpoint_override={endpoint.removeprefix('http://')}&scheme=http"
    cfg = smoke_config(tiny_model_dir, small_imdb, uri, "s3run")
    check_storage(cfg)
    return launch(cfg, prepare_data(cfg))


@pytest.mark.ray
def test_training_writes_every_checkpoint_to_s3(s3, trained_on_s3):
    _, client = s3
    keys = s3_keys(client, "runs/s3run/")
    for epoch in ("epoch_001", "epoch_002"):
        assert f"runs/s3run/{epoch}/model/model.safetensors" in keys
        for rank in (0, 1):
            assert f"runs/s3run/{epoch}/deepspeed/state/zero_pp_rank_{rank}_mp_rank_00_optim_states.pt" in keys
    result = json.loads(client.get_object(Bucket="bucket", Key="runs/s3run/result.json")["Body"].read())
    assert result["run_dir"] == "bucket/runs/s3run" and result["test_metrics"]["test_count"] == 64
    assert not Path("bucket").exists() and not Path("s3:").exists()  # nothing went to a local look-alike


@pytest.mark.ray
def test_best_resolves_through_a_best_json_on_s3(s3, trained_on_s3):
    """``checkpoint=best`` with an S3 ``storage_path`` whose URI has a query: best.json goes under the
    path, the query stays at the end (a sweep on S3 writes it there)."""
    from sentiment.layout import resolve

    endpoint, client = s3
    client.put_object(Bucket="bucket", Key="runs/best.json", Body=json.dumps({"checkpoint": trained_on_s3["best_checkpoint"]}))
    query = f"endpoint_override={endpoint.removeprefix('http://')}&scheme=http"
    model = resolve("best", storage_path=f"s3://bucket/runs?{query}")
    assert model.epoch_dir == f"s3://{trained_on_s3['best_checkpoint']}?{query}"


@pytest.mark.ray
def test_serve_and_evaluate_read_the_run_from_s3(s3, trained_on_s3, small_imdb, monkeypatch):
    import ray

    from ray_jobs import evaluate
    from ray_jobs.local_ray import init_ray
    from sentiment import layout
    from sentiment.node_cache import cache_root
    from sentiment.predict import Predictor

    endpoint, client = s3
    # Plain s3:// URIs (what result.json and Serve hand around) find the endpoint through the
    # standard AWS variable, which a cluster sets on its nodes: restart Ray so its workers have it.
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", endpoint)
    ray.shutdown()
    init_ray(num_cpus=2)
    best = trained_on_s3["best_checkpoint"]
    model = layout.resolve("s3://bucket/runs/s3run")
    assert model.location == f"s3://{best}/model"
    predictor = Predictor.load(model)  # this node's cached copy, removed once closed
    assert predictor.predict(["a fine film"]) in (["negative"], ["positive"])
    assert predictor.path == str(cache_root() / model.sha256 / "model")
    predictor.close()
    assert not (cache_root() / model.sha256).exists()

    metrics = evaluate.main(["--checkpoint", "s3://bucket/runs/s3run", "--data", str(small_imdb),
                             "--attribution-samples", "4", "--ig-steps", "2"])
    assert metrics["count"] == 64
    report = best.removeprefix("bucket/") + "/eval_test"
    metrics = json.loads(client.get_object(Bucket="bucket", Key=f"{report}/metrics.json")["Body"].read())
    assert metrics["count"] == 64
    client.head_object(Bucket="bucket", Key=f"{report}/report.html")


def test_unreachable_s3_endpoint_fails_before_training_not_a_hang():
    closed = free_loopback_port()  # nothing listens there
    cfg = load_config(None, [f"run.storage_path=s3://bucket/runs?endpoint_override=127.0.0.1:{closed}&scheme=http"])
    t0 = time.monotonic()
    with pytest.raises(ConfigError, match=r"run\.storage_path=.*cannot be used: .*(connect|Connect)"):
        check_storage(cfg)
    assert time.monotonic() - t0 < 60


def test_storage_uri_without_an_installed_filesystem_fails_before_training():
    cfg = load_config(None, ["run.storage_path=nosuchfs://bucket/runs"])
    with pytest.raises(ConfigError, match=r"run\.storage_path='nosuchfs://bucket/runs' cannot be used"):
        check_storage(cfg)


@pytest.mark.parametrize("command, options", [(train.main, []), (sweep.main, []), (cv.main, ["--folds", "2"])],
                         ids=["train", "sweep", "cv"])
def test_every_training_command_checks_the_storage_before_it_starts_ray(command, options, monkeypatch):
    """Each then checks it from every node once Ray is up (tests/system/test_hosts.py: train)."""
    started = []
    monkeypatch.setattr(sys.modules[command.__module__], "init_ray", lambda *a, **k: started.append(a))
    with pytest.raises(ConfigError, match=r"run\.storage_path='nosuchfs://bucket/runs' cannot be used"):
        command([*options, "run.storage_path=nosuchfs://bucket/runs", "sweep.space={train.lr: {type: choice, values: [0.001]}}"])
    assert started == []
