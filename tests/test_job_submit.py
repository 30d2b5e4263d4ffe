"""`ray start --head` on 127.0.0.1, `ray job submit` of the smoke config, SUCCEEDED, `ray stop`."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from ray_jobs.local_ray import keep_ray_local

pytestmark = pytest.mark.ray
ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray(*args: str, env: dict, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "ray"), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture()
def head_node(tmp_path_factory):
    keep_ray_local()
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    env.pop("RAY_ADDRESS", None)
    dash = _free_port()
    temp = Path("/tmp") / f"rj-{uuid.uuid4().hex[:6]}"  # short: Ray's socket paths have a length limit
    started = _ray("start", "--head", "--node-ip-address=127.0.0.1", f"--port={_free_port()}",
                   "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--num-cpus=2",
                   "--disable-usage-stats", f"--temp-dir={temp}", env=env)
    assert started.returncode == 0, started.stderr[-3000:]
    yield env, f"http://127.0.0.1:{dash}"
    _ray("stop", "--force", env=env)


def test_job_submit_runs_the_smoke_config(head_node, tiny_model_dir, small_imdb, tmp_path):
    env, address = head_node
    client_env = {**env, "RAY_AUTH_MODE": "token"}  # `ray start --head` turned token auth on
    job_id = f"smoke-{uuid.uuid4().hex[:8]}"
    storage = tmp_path / "runs"
    submitted = _ray(
        "job", "submit", f"--address={address}", f"--submission-id={job_id}", "--working-dir", ".", "--",
        "python", "-m", "ray_jobs.train", "--config", "configs/smoke.yaml",
        f"model.name_or_path={tiny_model_dir}", f"data.path={small_imdb}", "data.validation_fraction=0.25",
        f"run.storage_path={storage}", "run.name=submitted", env=client_env, timeout=600,
    )
    assert submitted.returncode == 0, (submitted.stdout + submitted.stderr)[-4000:]
    status = _ray("job", "status", f"--address={address}", job_id, env=client_env)
    assert f"Job '{job_id}' succeeded" in status.stdout, status.stdout + status.stderr  # JobStatus.SUCCEEDED
    assert "test accuracy:" in submitted.stdout
    result = json.loads((storage / "submitted" / "result.json").read_text())
    assert (Path(result["best_checkpoint"]) / "model" / "model.safetensors").is_file()
    assert result["test_metrics"]["test_count"] == 64
