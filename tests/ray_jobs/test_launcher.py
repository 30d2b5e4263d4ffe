"""A job whose Ray differs from the cluster's stops with one clear line (exit 2) before training,
not a traceback or a hang. Ray records its version in the GCS at `ray start`; `ray.init` compares."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import ray

from tests.support import ray_head

pytestmark = [pytest.mark.ray, pytest.mark.cluster]
ROOT = Path(__file__).resolve().parents[2]
# The real CLI, in a process whose Ray claims another version (as an older client's would).
PATCHED_CLI = (
    "import ray, runpy, sys; ray.__version__ = '2.59.0'; sys.argv[0] = 'ray_jobs.train'; "
    "runpy.run_module('ray_jobs.train', run_name='__main__', alter_sys=True)"
)


def test_ray_version_mismatch_is_one_clear_line(tiny_model_dir, small_imdb, tmp_path):
    with ray_head() as (env, _, gcs):
        done = subprocess.run(
            [sys.executable, "-c", PATCHED_CLI, "--config", "configs/smoke.yaml",
             f"model.name_or_path={tiny_model_dir}", f"data.path={small_imdb}", "data.validation_fraction=0.25",
             f"run.storage_path={tmp_path / 'runs'}", "run.name=mismatch"],
            cwd=ROOT, env={**env, "RAY_ADDRESS": gcs}, capture_output=True, text=True, timeout=300,
        )
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert len(errors) == 1 and errors[0].startswith(f"error: Ray version mismatch with the cluster at {gcs}")
    assert f"Ray: {ray.__version__}" in errors[0] and "Ray: 2.59.0" in errors[0]
    assert not (tmp_path / "runs" / "mismatch").exists()  # nothing trained
