"""`ray start --head` on 127.0.0.1, `ray job submit` of the training job and of an evaluation of
its result, both SUCCEEDED; then that cluster's processes (only those) are stopped.

The training job is what KubeRay's submitter runs for k8s/rayjob.yaml: its entrypoint with its
``runtimeEnvYAML`` (tests/test_k8s.py ``rayjob_submission``), plus overrides that shrink the GPU
recipe to a smoke run on 2 cores (tiny model, 128 reviews, 1 epoch, CPU, local storage for S3) and
``--working-dir .`` for the code the manifest's image holds."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from ray_jobs.local_ray import free_loopback_ports, keep_ray_local

pytestmark = [pytest.mark.ray, pytest.mark.cluster]
ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _ray(*args: str, env: dict, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "ray"), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def stop_cluster(temp: Path, gcs_port: int) -> None:
    """Kill the processes of the Ray started with ``temp`` and ``gcs_port`` and their children.

    ``ray stop`` would stop every Ray on the machine, including ones this test did not start.
    """
    marks = (str(temp), f"127.0.0.1:{gcs_port}")
    roots = [p for p in psutil.process_iter(["cmdline"]) if any(m in " ".join(p.info["cmdline"] or []) for m in marks)]
    procs = set(roots)
    for root in roots:
        try:
            procs.update(root.children(recursive=True))
        except psutil.NoSuchProcess:
            pass
    for proc in procs:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(list(procs), timeout=30)


def _submit(*args: str, env: dict, address: str) -> subprocess.CompletedProcess:
    """``ray job submit``, retried (bounded) while the head's job agent is still starting."""
    deadline = time.monotonic() + 120
    while True:
        done = _ray("job", "submit", f"--address={address}", *args, env=env, timeout=600)
        if "No available agent to submit job" not in done.stderr or time.monotonic() > deadline:
            return done
        time.sleep(3)


@contextlib.contextmanager
def ray_head(head_only_env: dict[str, str] | None = None) -> Iterator[tuple[dict[str, str], str, str]]:
    """A `ray start --head` on 127.0.0.1 with free ports for every agent and its own temp folder.

    ``head_only_env`` goes to the head's processes only (secrets a node holds). Yields the client
    environment (token auth on, without ``head_only_env``), the dashboard address and the GCS
    address; stops only this cluster's processes and deletes its temp folder (runtime envs live there).
    """
    keep_ray_local()
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
           **(head_only_env or {})}
    env.pop("RAY_ADDRESS", None)
    # own ports for every agent: another Ray on this machine may hold the defaults
    dash, gcs_port, agent, metrics, runtime_env, client_server = free_loopback_ports(6)
    temp = Path("/tmp") / f"rj-{uuid.uuid4().hex[:6]}"  # short: Ray's socket paths have a length limit
    started = _ray("start", "--head", "--node-ip-address=127.0.0.1", f"--port={gcs_port}",
                   "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--num-cpus=2",
                   f"--dashboard-agent-listen-port={agent}", f"--metrics-export-port={metrics}",
                   f"--runtime-env-agent-port={runtime_env}", f"--ray-client-server-port={client_server}",
                   "--disable-usage-stats", f"--temp-dir={temp}", env=env)
    try:
        assert started.returncode == 0, started.stderr[-3000:]
        client = {k: v for k, v in env.items() if k not in (head_only_env or {})} | {"RAY_AUTH_MODE": "token"}
        yield client, f"http://127.0.0.1:{dash}", f"127.0.0.1:{gcs_port}"
    finally:
        stop_cluster(temp, gcs_port)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture()
def head_node():
    with ray_head() as (env, address, _):
        yield env, address


SMOKE = ("data.max_seq_length=64", "data.pad_to_multiple_of=8", "data.max_train_samples=128", "data.max_val_samples=64",
         "data.max_test_samples=64", "train.epochs=1", "train.batch_size=16", "train.log_every_steps=2",
         "train.precision=fp32", "scaling.use_gpu=false", "scaling.cpus_per_worker=1", "tracking.mode=offline",
         "run.max_failures=0")


def test_job_submit_runs_the_rayjobs_entrypoint_with_its_runtime_env(head_node, tiny_model_dir, small_imdb, tmp_path):
    from tests.test_k8s import rayjob_submission

    env, address = head_node
    refused = _ray("job", "list", f"--address={address}", env={**env, "RAY_AUTH_MODE": "disabled"})
    assert refused.returncode != 0, "the job server answered a client without the token"  # token auth is on
    client_env = {**env, "RAY_AUTH_MODE": "token"}  # `ray start --head` turned token auth on
    job_id = f"smoke-{uuid.uuid4().hex[:8]}"
    storage = tmp_path / "runs"
    entrypoint, runtime_env = rayjob_submission()
    submitted = _submit(
        f"--submission-id={job_id}", f"--runtime-env-json={json.dumps(runtime_env)}", "--working-dir", ".", "--",
        *shlex.split(entrypoint), *SMOKE,
        f"model.name_or_path={tiny_model_dir}", f"data.path={small_imdb}", "data.validation_fraction=0.25",
        f"run.storage_path={storage}", "run.name=submitted", env=client_env, address=address,
    )
    assert submitted.returncode == 0, (submitted.stdout + submitted.stderr)[-4000:]
    status = _ray("job", "status", f"--address={address}", job_id, env=client_env)
    assert f"Job '{job_id}' succeeded" in status.stdout, status.stdout + status.stderr  # JobStatus.SUCCEEDED
    assert "test accuracy:" in submitted.stdout
    result = json.loads((storage / "submitted" / "result.json").read_text())
    assert (Path(result["best_checkpoint"]) / "model" / "model.safetensors").is_file()
    trained = json.loads((Path(result["best_checkpoint"]) / "model" / "train_config.json").read_text())
    assert (trained["data"]["truncation"], trained["train"]["lr"], trained["scaling"]["num_workers"]) == ("head_tail", 2e-5, 2)
    assert result["test_metrics"]["test_count"] == 64

    evaluated = _submit(
        "--working-dir", ".", "--", "python", "-m", "ray_jobs.evaluate",
        "--checkpoint", str(storage / "submitted"), "--data", str(small_imdb), "--attribution-samples", "8",
        "--ig-steps", "2", env=client_env, address=address,
    )
    assert evaluated.returncode == 0, (evaluated.stdout + evaluated.stderr)[-4000:]
    report = Path(result["best_checkpoint"]) / "eval_test"
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["count"] == 64 and f"evaluate: accuracy {metrics['accuracy']:.4f}" in evaluated.stdout
    assert (report / "report.html").is_file() and "evaluate: 64/64 reviews in" in evaluated.stdout + evaluated.stderr
