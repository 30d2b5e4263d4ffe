"""k8s/: the KubeRay manifests, checked offline against the code they run (no cluster here)."""

from __future__ import annotations

import re
import shlex
from importlib.util import find_spec
from pathlib import Path

import pytest
import ray
import yaml
from ray.serve.schema import ServeDeploySchema

from serve.schemas import ServeArgs
from sentiment.config import load_config

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "k8s"


def manifest(name: str) -> dict:
    return yaml.safe_load((K8S / name).read_text())


def containers(cluster: dict) -> list[dict]:
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


@pytest.mark.parametrize("name", ["rayservice.yaml", "rayjob.yaml", "Dockerfile"])
def test_each_file_starts_with_its_command_and_runs_this_ray(name):
    text = (K8S / name).read_text()
    assert text.startswith("# kubectl apply -f k8s/" if name.endswith(".yaml") else "# docker build -f k8s/Dockerfile")
    versions = set(re.findall(r'rayVersion: "([\d.]+)"|rayproject/ray:([\d.]+)', text))
    assert {v for pair in versions for v in pair if v} == {ray.__version__}


def test_the_rayservice_serves_a_valid_serve_config_with_the_key_from_a_secret():
    service = manifest("rayservice.yaml")
    assert (service["apiVersion"], service["kind"]) == ("ray.io/v1", "RayService")
    config = ServeDeploySchema.model_validate(yaml.safe_load(service["spec"]["serveConfigV2"]))
    (app,) = config.applications
    assert app.import_path == "serve.app:build_app" and config.http_options.host == "0.0.0.0"
    ServeArgs.model_validate(app.args)  # "api_key" would be refused here: the key is never an arg
    for container in containers(service["spec"]["rayClusterConfig"]):
        (key,) = [e for e in container["env"] if e["name"] == "SENTIMENT_API_KEY"]
        assert "secretKeyRef" in key["valueFrom"]
    (head,) = service["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"]
    assert head["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"


def test_the_rayjob_runs_a_module_and_config_of_this_checkout():
    job = manifest("rayjob.yaml")
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    python, m, module, flag, config, *overrides = shlex.split(job["spec"]["entrypoint"])
    assert (python, m, flag) == ("python", "-m", "--config") and find_spec(module) is not None
    cfg = load_config(ROOT / config, overrides)
    workers = [g for g in job["spec"]["rayClusterSpec"]["workerGroupSpecs"]]
    gpus = sum(int(g["replicas"]) * int(c["resources"]["limits"].get("nvidia.com/gpu", 0))
               for g in workers for c in g["template"]["spec"]["containers"])
    assert cfg.scaling.use_gpu and cfg.scaling.num_workers == gpus  # one training worker per GPU pod
    assert cfg.run.storage_path.startswith("s3://")  # the only storage that outlives the pods
