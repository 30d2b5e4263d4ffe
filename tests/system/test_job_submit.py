"""`ray start --head` on 127.0.0.1, `ray job submit` of the training job and of an evaluation of
its result, both SUCCEEDED; then that cluster's processes (only those) are stopped.

The training job is what KubeRay's submitter runs for k8s/rayjob.yaml: its entrypoint with its
``runtimeEnvYAML`` (tests/repo/test_k8s.py ``rayjob_submission``), plus overrides that shrink the GPU
recipe to a smoke run on 2 cores (tiny model, 128 reviews, 1 epoch, CPU, local storage for S3) and
``--working-dir .`` for the code the manifest's image holds."""

from __future__ import annotations

import json
import shlex
import uuid
from pathlib import Path

import pytest

from tests.support import ray_cli, ray_head, submit_job

pytestmark = [pytest.mark.ray, pytest.mark.cluster]
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def head_node():
    with ray_head() as (env, address, _):
        yield env, address


SMOKE = ("data.max_seq_length=64", "data.pad_to_multiple_of=8", "data.max_train_samples=128", "data.max_val_samples=64",
         "data.max_test_samples=64", "train.epochs=1", "train.batch_size=16", "train.log_every_steps=2",
         "train.precision=fp32", "scaling.use_gpu=false", "scaling.cpus_per_worker=1", "tracking.mode=offline",
         "run.max_failures=0")


def test_job_submit_runs_the_rayjobs_entrypoint_with_its_runtime_env(head_node, tiny_model_dir, small_imdb, tmp_path):
    from tests.support import rayjob_submission

    env, address = head_node
    refused = ray_cli("job", "list", f"--address={address}", env={**env, "RAY_AUTH_MODE": "disabled"})
    assert refused.returncode != 0, "the job server answered a client without the token"  # token auth is on
    client_env = {**env, "RAY_AUTH_MODE": "token"}  # `ray start --head` turned token auth on
    job_id = f"smoke-{uuid.uuid4().hex[:8]}"
    storage = tmp_path / "runs"
    entrypoint, runtime_env = rayjob_submission()
    submitted = submit_job(
        f"--submission-id={job_id}", f"--runtime-env-json={json.dumps(runtime_env)}", "--working-dir", ".", "--",
        *shlex.split(entrypoint), *SMOKE,
        f"model.name_or_path={tiny_model_dir}", f"data.path={small_imdb}", "data.validation_fraction=0.25",
        f"run.storage_path={storage}", "run.name=submitted", env=client_env, address=address,
    )
    assert submitted.returncode == 0, (submitted.stdout + submitted.stderr)[-4000:]
    status = ray_cli("job", "status", f"--address={address}", job_id, env=client_env)
    assert f"Job '{job_id}' succeeded" in status.stdout, status.stdout + status.stderr  # JobStatus.SUCCEEDED
    assert "test accuracy:" in submitted.stdout
    result = json.loads((storage / "submitted" / "result.json").read_text())
    assert (Path(result["best_checkpoint"]) / "model" / "model.safetensors").is_file()
    trained = json.loads((Path(result["best_checkpoint"]) / "model" / "train_config.json").read_text())
    assert (trained["data"]["truncation"], trained["train"]["lr"], trained["scaling"]["num_workers"]) == ("head_tail", 2e-5, 2)
    assert result["test_metrics"]["test_count"] == 64

    evaluated = submit_job(
        "--working-dir", ".", "--", "python", "-m", "ray_jobs.evaluate",
        "--checkpoint", str(storage / "submitted"), "--data", str(small_imdb), "--attribution-samples", "8",
        "--ig-steps", "2", env=client_env, address=address,
    )
    assert evaluated.returncode == 0, (evaluated.stdout + evaluated.stderr)[-4000:]
    report = Path(result["best_checkpoint"]) / "eval_test"
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["count"] == 64 and f"evaluate: accuracy {metrics['accuracy']:.4f}" in evaluated.stdout
    assert (report / "report.html").is_file() and "evaluate: 64/64 reviews in" in evaluated.stdout + evaluated.stderr
