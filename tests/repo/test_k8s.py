"""k8s/: the KubeRay manifests, checked offline against the code they run (no cluster here).

The pod templates against Kubernetes' own JSON schemas (kubernetes-validate, strict: an unknown or
misspelt field fails), KubeRay's fields by name, serveConfigV2 with Ray Serve's schema, and the
RayJob through Ray's own job client up to its HTTP request, and what the job server and the driver
then parse. :func:`rayjob_submission` gives what KubeRay submits, for a test that runs it."""

from __future__ import annotations

import copy
import json
import re
import shlex
from importlib.util import find_spec
from pathlib import Path

import kubernetes_validate
import pytest
import ray
import requests
import yaml
from kubernetes_validate.utils import all_versions, major_minor
from ray._private.utils import get_runtime_env_info
from ray.dashboard.modules.job.common import JobSubmitRequest
from ray.job_submission import JobSubmissionClient
from ray.runtime_env import RuntimeEnv
from ray.serve.config import ProxyLocation
from ray.serve.schema import ServeDeploySchema

from sentiment.config import load_config, refuse_credentials
from serve.app import SentimentAPI
from serve.schemas import ServeArgs
from tests.support import K8S, manifest, rayjob_submission

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ["rayjob.yaml", "rayservice.yaml"]
# The three newest Kubernetes minor versions whose schemas the pinned kubernetes-validate ships.
KUBERNETES = sorted({major_minor(v) for v in all_versions()}, key=lambda v: tuple(map(int, v.split("."))))[-3:]
# Spec fields of KubeRay's ray.io/v1 CRDs in both v1.3.0 and v1.7.0 (ray-operator/config/crd/bases):
# a field outside these is misspelt or needs a KubeRay newer than the manifests say.
KUBERAY = {
    "RayJob": {"activeDeadlineSeconds", "backoffLimit", "clusterSelector", "entrypoint", "entrypointNumCpus",
               "entrypointNumGpus", "entrypointResources", "jobId", "managedBy", "metadata", "rayClusterSpec",
               "runtimeEnvYAML", "shutdownAfterJobFinishes", "submissionMode", "submitterConfig",
               "submitterPodTemplate", "suspend", "ttlSecondsAfterFinished"},
    "RayService": {"deploymentUnhealthySecondThreshold", "excludeHeadPodFromServeSvc", "rayClusterConfig",
                   "serveConfigV2", "serveService", "serviceUnhealthySecondThreshold", "upgradeStrategy"},
    "cluster": {"autoscalerOptions", "enableInTreeAutoscaling", "gcsFaultToleranceOptions", "headGroupSpec",
                "headServiceAnnotations", "managedBy", "rayVersion", "suspend", "workerGroupSpecs"},
    "head": {"enableIngress", "headService", "rayStartParams", "serviceType", "template"},
    "worker": {"groupName", "idleTimeoutSeconds", "maxReplicas", "minReplicas", "numOfHosts", "rayStartParams",
               "replicas", "scaleStrategy", "suspend", "template"},
}
UPGRADE_TYPES = {"NewCluster", "None"}  # KubeRay 1.3's; 1.5 adds NewClusterWithIncrementalUpgrade (alpha)
SECRET_NAME = re.compile(r"(^|_)(KEY|SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIALS?)(_|$)", re.IGNORECASE)


def cluster_of(resource: dict) -> dict:
    return resource["spec"]["rayClusterSpec" if resource["kind"] == "RayJob" else "rayClusterConfig"]


def containers(cluster: dict) -> list[dict]:
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


def pod_templates(resource: dict) -> dict[str, dict]:
    """Each group's pod template (a v1 PodTemplateSpec), by group name."""
    cluster = cluster_of(resource)
    return {"head": cluster["headGroupSpec"]["template"]} | {g["groupName"]: g["template"] for g in cluster["workerGroupSpecs"]}


def validate_pod_template(template: dict, name: str, version: str) -> None:
    """``template`` as Kubernetes ``version`` would take it: a v1 PodTemplate, strictly (no unknown field)."""
    kubernetes_validate.validate({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": name},
                                  "template": template}, version, strict=True)


def strings(value) -> list[str]:
    """Every string in a parsed manifest (entrypoint, serveConfigV2, env values...), comments aside."""
    if isinstance(value, dict):
        return [s for v in value.values() for s in strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in strings(v)]
    return [value] if isinstance(value, str) else []


def dockerfile(instruction: str) -> list[str]:
    """The arguments of each ``instruction`` line of k8s/Dockerfile."""
    lines = (K8S / "Dockerfile").read_text().splitlines()
    return [line.split(None, 1)[1] for line in lines if line.split(None, 1)[:1] == [instruction]]


class _JobClientWithoutHTTP(JobSubmissionClient):
    """Ray's own job client, all of it but the HTTP: it answers the version checks as a job server of
    this Ray would, and keeps what ``submit_job`` would POST."""

    posted: dict | None = None

    def _do_request(self, method: str, endpoint: str, *, data=None, json_data=None, **kwargs) -> requests.Response:
        if (method, endpoint) == ("GET", "/api/version"):
            return _answer({"version": "4", "ray_version": ray.__version__, "ray_commit": ray.__commit__})
        assert (method, endpoint) == ("POST", "/api/jobs/"), f"unexpected request {method} {endpoint} (an upload?)"
        self.posted = json_data
        return _answer({"job_id": "raysubmit_test", "submission_id": "raysubmit_test"})


def _answer(body: dict) -> requests.Response:
    response = requests.Response()
    response.status_code, response._content = 200, json.dumps(body).encode()
    return response


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
    assert config.proxy_location == ProxyLocation.EveryNode  # each pod behind the Service answers
    ServeArgs.model_validate(app.args)  # "api_key" would be refused here: the key is never an arg
    (ingress,) = app.deployments  # build_app's ingress, spread: a lost node leaves the other replica answering
    assert (ingress.name, ingress.max_replicas_per_node) == (SentimentAPI.name, 1) and app.args["ingress_replicas"] == 2
    for container in containers(service["spec"]["rayClusterConfig"]):
        (key,) = [e for e in container["env"] if e["name"] == "SENTIMENT_API_KEY"]
        assert "secretKeyRef" in key["valueFrom"]
    (head,) = service["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"]
    assert head["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    for container in containers(service["spec"]["rayClusterConfig"]):  # what a PodMonitor scrapes
        assert {"containerPort": 8080, "name": "metrics"} in container["ports"]  # KubeRay's --metrics-export-port


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


def test_the_rayjob_submits_through_rays_job_client_with_runtime_env_yaml_as_it_applies_to_the_image(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
    entrypoint, runtime_env = rayjob_submission()
    client = _JobClientWithoutHTTP("http://bert-sentiment-train-head-svc:8265")
    client.submit_job(entrypoint=entrypoint, runtime_env=copy.deepcopy(runtime_env), submission_id="raysubmit_test")
    # What the job server parses from the POST, and what the driver's runtime env then becomes.
    request = JobSubmitRequest(**client.posted)
    assert request.entrypoint == entrypoint
    parsed = RuntimeEnv(**request.runtime_env)
    assert parsed.plugins() == [] and set(parsed) <= RuntimeEnv.known_fields  # a misspelt key would be a plugin
    json.loads(get_runtime_env_info(parsed, is_job_runtime_env=True, serialize=True))
    # runtime_env.yaml, less what the image already holds: the code (working_dir and its excludes)
    # and the dependencies (uv, which installs from the shipped working_dir's pyproject.toml).
    shipped = yaml.safe_load((ROOT / "runtime_env.yaml").read_text())
    assert {"working_dir", "excludes", "uv"} <= shipped.keys()
    assert not {"working_dir", "py_modules", "excludes", "uv", "pip", "conda"} & runtime_env.keys()
    assert runtime_env == {"env_vars": shipped["env_vars"]} == request.runtime_env
    assert not [name for name in parsed["env_vars"] if SECRET_NAME.search(name)]  # secrets: from Secrets, in the pods


def test_the_image_holds_what_the_manifests_run():
    workdir, = dockerfile("WORKDIR")
    assert f"PYTHONPATH={workdir}" in dockerfile("ENV")
    copied = {args.split()[-1] for args in dockerfile("COPY")}
    job = manifest("rayjob.yaml")
    for container in containers(job["spec"]["rayClusterSpec"]):
        assert container["workingDir"] == workdir  # the entrypoint's relative config path resolves there
    _, _, module, _, config, *_ = shlex.split(job["spec"]["entrypoint"])
    service_config = yaml.safe_load(manifest("rayservice.yaml")["spec"]["serveConfigV2"])
    imported = [module, *(app["import_path"].split(":")[0] for app in service_config["applications"])]
    assert {name.split(".")[0] for name in imported} | {Path(config).parts[0]} <= copied
    assert {"pyproject.toml", "constraints.txt"} <= {f for args in dockerfile("COPY") for f in args.split()[1:-1]}


@pytest.mark.parametrize("version", KUBERNETES)
@pytest.mark.parametrize("name", MANIFESTS)
def test_each_pod_template_is_a_valid_kubernetes_pod_template(name, version):
    templates = pod_templates(manifest(name))
    assert "head" in templates and len(templates) >= 2
    errors = []
    for group, template in templates.items():
        try:
            validate_pod_template(template, f"{Path(name).stem}-{group}", version)
        except kubernetes_validate.ValidationError as e:
            errors.append(f"{name}, group {group}: {'.'.join(map(str, e.path))}: {e.message} (Kubernetes {e.version})")
    assert not errors, "\n".join(errors)  # the message only: the schema it failed would fill pages


@pytest.mark.parametrize("path, field, misspelt", [
    (["spec", "containers", 0, "env", 0, "valueFrom"], "secretKeyRef", "secretKeyref"),
    (["spec", "containers", 0], "resources", "resource"),
    (["spec", "containers", 0], "workingDir", "workdir"),
])
def test_a_misspelt_pod_field_fails_the_validation(path, field, misspelt):
    template = copy.deepcopy(pod_templates(manifest("rayjob.yaml"))["head"])
    holder = template
    for key in path:
        holder = holder[key]
    holder[misspelt] = holder.pop(field)
    with pytest.raises(kubernetes_validate.ValidationError, match=misspelt):
        validate_pod_template(template, "misspelt", KUBERNETES[-1])


@pytest.mark.parametrize("name", MANIFESTS)
def test_each_manifest_uses_kuberay_fields_only(name):
    resource = manifest(name)
    assert (resource["apiVersion"], set(resource)) == ("ray.io/v1", {"apiVersion", "kind", "metadata", "spec"})
    assert set(resource["spec"]) <= KUBERAY[resource["kind"]]
    name = resource["metadata"]["name"]  # KubeRay: a DNS-1035 label, 6 characters short of a RayCluster's 53
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name) and len(name) <= 47
    cluster = cluster_of(resource)
    assert set(cluster) <= KUBERAY["cluster"] and set(cluster["headGroupSpec"]) <= KUBERAY["head"]
    for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        assert all(isinstance(v, str) for v in group["rayStartParams"].values())  # a map of strings in the CRD
    for group in cluster["workerGroupSpecs"]:
        assert set(group) <= KUBERAY["worker"]
        assert int(group["minReplicas"]) <= int(group["replicas"]) <= int(group["maxReplicas"])


def test_the_rayservice_upgrades_on_a_new_cluster():
    strategy = manifest("rayservice.yaml")["spec"]["upgradeStrategy"]
    assert strategy == {"type": "NewCluster"} and strategy["type"] in UPGRADE_TYPES


@pytest.mark.parametrize("name", MANIFESTS)
def test_credentials_come_from_secrets_and_no_uri_carries_any(name):
    resource = manifest(name)
    for container in containers(cluster_of(resource)):
        env = {e["name"]: e for e in container["env"]}
        for key in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]:
            assert env[key]["valueFrom"]["secretKeyRef"]["key"] and "value" not in env[key]
        for secret in [e for n, e in env.items() if SECRET_NAME.search(n)]:
            assert set(secret) == {"name", "valueFrom"} and "secretKeyRef" in secret["valueFrom"]
    uris = [uri for text in strings(resource) for uri in re.findall(r"\b[a-z][a-z0-9+.-]*://\S+", text)]
    assert any(uri.startswith("s3://") for uri in uris)
    for uri in uris:
        refuse_credentials(uri, name)
    with pytest.raises(ValueError, match="credentials"):  # what refuse_credentials would say of one that did
        refuse_credentials(uris[0].replace("s3://", "s3://AKIAEXAMPLE:secret@"), name)
