"""Job submission to a real `ray start --head` (127.0.0.1, own ports, token auth on), one head for
the module whose raylet holds the secrets in its environment, as cluster.yaml's start commands do.

- The training job KubeRay's submitter runs for k8s/rayjob.yaml: its entrypoint with its
  ``runtimeEnvYAML`` (tests/repo/test_k8s.py ``rayjob_submission``), plus overrides that shrink the
  GPU recipe to a smoke run on 2 cores (tiny model, 128 reviews, 1 epoch, CPU, local storage for
  S3) and ``--working-dir .`` for the code the manifest's image holds: SUCCEEDED, with its run
  where the job put it; a client without the token is refused. (``ray_jobs.evaluate`` on such a run:
  tests/ray_jobs/test_batch_inference.py, and from S3 tests/system/test_storage_s3.py.)
- runtime_env.yaml: the job's driver and its workers get the working folder without what it
  excludes (an 80 MB ``data/train.parquet`` stays behind) and what pyproject.toml lists and the
  cluster lacks, installed by Ray's uv runtime env from the shipped pyproject (offline here: a
  local wheel); the secrets the nodes hold reach the job while `ray job list` (the job table, what the
  dashboard shows) never holds their values.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shlex
import shutil
import uuid
import zipfile
from pathlib import Path

import pytest
import yaml

from tests.support import ray_cli, ray_head, submit_job

pytestmark = [pytest.mark.ray, pytest.mark.cluster]
ROOT = Path(__file__).resolve().parents[2]
SECRETS = {"WANDB_API_KEY": f"wandb-{uuid.uuid4().hex}", "SENTIMENT_API_KEY": f"api-{uuid.uuid4().hex}"}

PROBE = '''
import hashlib, json, os, sys
import ray

def info():
    import sentiment_probe  # only in the job's runtime env, from the shipped pyproject.toml
    digest = lambda k: hashlib.sha256(os.environ.get(k, "").encode()).hexdigest()[:16]
    return {"prefix": sys.prefix, "probe": sentiment_probe.VALUE,
            "wandb": digest("WANDB_API_KEY"), "api": digest("SENTIMENT_API_KEY"),
            "shipped": sorted(p for p in ("probe_env.py", "data/train.parquet") if os.path.exists(p))}

ray.init()
print("DRIVER " + json.dumps(info()))
print("WORKER " + json.dumps(ray.get(ray.remote(info).remote())))
'''


@pytest.fixture(scope="module")
def head_with_secrets():
    """The cluster's raylet holds the secrets in its environment, as cluster.yaml's start commands do."""
    with ray_head(SECRETS) as head:
        yield head


def _wheel(folder: Path) -> Path:
    """A pure-Python wheel ``sentiment-probe 0.1`` that no environment here has installed."""
    files = {
        "sentiment_probe/__init__.py": b'VALUE = "probe-ok"\n',
        "sentiment_probe-0.1.dist-info/METADATA": b"Metadata-Version: 2.1\nName: sentiment-probe\nVersion: 0.1\n",
        "sentiment_probe-0.1.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = [f"{name},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},{len(data)}"
              for name, data in files.items()] + ["sentiment_probe-0.1.dist-info/RECORD,,"]
    path = folder / "sentiment_probe-0.1-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as whl:
        for name, data in files.items():
            whl.writestr(name, data)
        whl.writestr("sentiment_probe-0.1.dist-info/RECORD", "\n".join(record) + "\n")
    return path


def _project_needing_the_probe(tmp_path: Path) -> Path:
    """A copy of this project whose pyproject.toml also depends on ``sentiment-probe``."""
    workdir = tmp_path / "project"
    shutil.copytree(ROOT, workdir, ignore=shutil.ignore_patterns(".venv", ".git", "test-artifacts", "__pycache__"))
    pyproject = workdir / "pyproject.toml"
    text = pyproject.read_text()
    assert "dependencies = [\n" in text
    pyproject.write_text(text.replace("dependencies = [\n", 'dependencies = [\n    "sentiment-probe==0.1",\n', 1))
    (workdir / "probe_env.py").write_text(PROBE)
    (workdir / "data").mkdir()  # excluded by runtime_env.yaml (not by .gitignore): must not be shipped
    (workdir / "data" / "train.parquet").write_bytes(b"\0" * (80 * 1024 * 1024))
    return workdir


def _reports(logs: str) -> dict[str, dict]:
    return {m.group(1): json.loads(m.group(2)) for m in re.finditer(r"^(DRIVER|WORKER) (\{.*\})$", logs, re.M)}


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:16]


def test_runtime_env_yaml_reads_pyproject_and_holds_no_secrets():
    env = yaml.safe_load((ROOT / "runtime_env.yaml").read_text())
    assert env["uv"]["uv_pip_install_options"] == ["-r", "${RAY_RUNTIME_ENV_CREATE_WORKING_DIR}/pyproject.toml"]
    assert not set(env.get("env_vars", {})) & set(SECRETS)


def test_submitted_job_gets_pyproject_deps_and_node_secrets(head_with_secrets, tmp_path):
    env, address, _ = head_with_secrets
    pytest.importorskip("uv")  # Ray's uv runtime env runs `python -m uv` (test extras install it)
    with pytest.raises(ImportError):
        __import__("sentiment_probe")  # the cluster's environment lacks it
    workdir = _project_needing_the_probe(tmp_path)
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _wheel(wheels)
    runtime_env = yaml.safe_load((ROOT / "runtime_env.yaml").read_text())
    # Offline: every other dependency must already be in the node's environment (nothing downloaded).
    runtime_env["uv"]["uv_pip_install_options"] += ["--no-index", "--find-links", str(wheels)]
    env_file = tmp_path / "runtime_env.yaml"
    env_file.write_text(yaml.safe_dump(runtime_env))
    job_id = f"uv-{uuid.uuid4().hex[:8]}"

    done = submit_job(f"--submission-id={job_id}", "--runtime-env", str(env_file), "--working-dir", str(workdir),
                   "--", "python", "probe_env.py", env=env, address=address)

    logs = done.stdout + done.stderr
    assert done.returncode == 0, logs[-4000:]
    reports = _reports(done.stdout)
    assert set(reports) == {"DRIVER", "WORKER"}, logs[-4000:]
    for where, report in reports.items():
        assert report["probe"] == "probe-ok", where
        assert "/runtime_resources/uv/" in report["prefix"], (where, report["prefix"])  # Ray's uv env
        assert report["wandb"] == _digest(SECRETS["WANDB_API_KEY"]), where  # inherited from the raylet
        assert report["api"] == _digest(SECRETS["SENTIMENT_API_KEY"]), where
        assert report["shipped"] == ["probe_env.py"], where  # the code, not the 80 MB excluded by runtime_env.yaml
    listed = ray_cli("job", "list", f"--address={address}", env=env)
    assert listed.returncode == 0 and job_id in listed.stdout, listed.stderr[-2000:]
    assert "uv_pip_install_options" in listed.stdout  # the job table shows the runtime env ...
    for secret in SECRETS.values():
        assert secret not in listed.stdout + logs  # ... and no secret value


def test_env_vars_in_a_runtime_env_would_be_listed(head_with_secrets):
    """Why secrets stay out of runtime envs: `ray job list` prints a job's env_vars verbatim."""
    env, address, _ = head_with_secrets
    leaked = f"leak-{uuid.uuid4().hex}"
    done = submit_job("--runtime-env-json", json.dumps({"env_vars": {"WANDB_API_KEY": leaked}}),
                   "--", "python", "-c", "print('ok')", env=env, address=address)
    assert done.returncode == 0, (done.stdout + done.stderr)[-2000:]
    listed = ray_cli("job", "list", f"--address={address}", env=env)
    assert leaked in listed.stdout


SMOKE = ("data.max_seq_length=64", "data.pad_to_multiple_of=8", "data.max_train_samples=128", "data.max_val_samples=64",
         "data.max_test_samples=64", "train.epochs=1", "train.batch_size=16", "train.log_every_steps=2",
         "train.precision=fp32", "scaling.use_gpu=false", "scaling.cpus_per_worker=1", "tracking.mode=offline",
         "run.max_failures=0")


def test_job_submit_runs_the_rayjobs_entrypoint_with_its_runtime_env(head_with_secrets, tiny_model_dir, small_imdb, tmp_path):
    from tests.support import rayjob_submission

    env, address, _ = head_with_secrets
    for stranger in ({"RAY_AUTH_MODE": "disabled"}, {"RAY_AUTH_TOKEN": "0" * 64}):  # no token, a wrong one
        refused = ray_cli("job", "list", f"--address={address}", env={**env, **stranger})
        assert refused.returncode != 0, f"the job server answered a client with {stranger}"
    client_env = env  # the cluster's token
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

