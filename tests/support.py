"""What many test modules share: the tiny training run's config, checkpoints, a served app and
its helpers, Ray heads and job submission, fault injection. No test module imports another."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
import pytest
import ray
import requests
import torch
import uvicorn
import yaml
from pydantic import SecretStr
from ray import serve
from ray.dashboard.modules.dashboard_sdk import parse_runtime_env_args
from ray.util.state import list_actors

from ray_jobs.local_ray import free_loopback_port, free_loopback_ports, init_ray, keep_ray_local
from sentiment.config import Config, load_config
from sentiment.model import build_model, load_tokenizer
from sentiment.model_folder import save_model_dir
from sentiment.predict import ExplainUnavailable, KeyToken, Prediction
from serve.admission import Overloaded, RequestTooCostly
from serve.app import build_app
from serve.http import make_api
from serve.schemas import API_KEY_ENV, ServeArgs

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "k8s"


# 120 texts in windows of at most 64 tokens per window, micro-batch 4 on 2 workers: a kill lands after epoch 1's
# checkpoint and before the last epoch ends.
PRETRAIN_RUN = ("pretrain.max_texts=120", "pretrain.validation_texts=24", "data.max_seq_length=64", "train.epochs=3",
       "train.batch_size=4", "train.lr=1e-3", "train.log_every_steps=20", "deepspeed.zero_stage=2",
       "scaling.num_workers=2", "tracking.mode=offline", "run.max_failures=1")


def pretrain_config(model: Path, data: Path, storage: Path, name: str, *extra: str) -> Config:
    """configs/itpt-minilm.yaml shrunk to the tiny model and a few texts."""
    return load_config(ROOT / "configs" / "itpt-minilm.yaml", [  # the in-domain pretraining config, shrunk
        f"model.name_or_path={model}", f"data.path={data}", f"run.storage_path={storage}", f"run.name={name}", *PRETRAIN_RUN, *extra])


def smoke_config(model_dir, data_dir, storage, name, *extra):
    return load_config(None, [
        f"model.name_or_path={model_dir}", f"data.path={data_dir}", "data.max_seq_length=64",
        "data.validation_fraction=0.25", "data.max_train_samples=128", "data.max_val_samples=64", "data.max_test_samples=64",
        "train.epochs=2", "train.batch_size=16", "train.log_every_steps=2", "train.lr=5e-4",
        "deepspeed.zero_stage=2", "scaling.num_workers=2", "tracking.mode=offline", "run.max_failures=0",
        "data.long_reviews=chunks",  # the test at the end scores whole reviews (windows of 64 tokens)
        "train.precision=auto",  # bf16 where the CPU runs it natively (the quickstart's setting), else fp32
        f"run.storage_path={storage}", f"run.name={name}", *extra,
    ])


def sweep_config(model_dir, data_dir, storage, name, *extra):
    return load_config(None, [
        f"model.name_or_path={model_dir}", f"data.path={data_dir}", "data.max_seq_length=64",
        "data.validation_fraction=0.25", "data.max_train_samples=96", "data.max_val_samples=64",
        "data.max_test_samples=32", "train.epochs=2", "train.batch_size=16", "train.log_every_steps=3",
        "scaling.num_workers=1", "scaling.cpus_per_worker=0.9", "tracking.mode=offline",
        "run.metric=val_loss", "run.mode=min", "run.max_failures=0", f"run.storage_path={storage}",
        f"sweep.name={name}", "sweep.search=random", "sweep.num_samples=1", *extra,
    ])


def model_replica_actors() -> dict[str, int]:
    """Alive model replicas of this app: actor id -> worker PID."""
    return alive_actors(f"ServeReplica:{APP}:{MODEL}")


def serve_pids() -> dict[str, int]:
    """PIDs of the app's (single) model replica, its ingress replica and the HTTP proxy."""
    pids = {}
    for role, name in (("model", f"ServeReplica:{APP}:{MODEL}"), ("ingress", f"ServeReplica:{APP}:SentimentAPI")):
        (pids[role],) = alive_actors(name).values()
    pids["proxy"] = http_front_pid()
    return pids


class TimedLoad:
    """Single-review requests from ``concurrency`` threads, at most ``limit`` of them.

    Keeps the completion time of every 200 (``done``) and a line per failure (``failures``).
    """

    def __init__(self, url: str, concurrency: int, limit: int, headers: dict[str, str] | None = None) -> None:
        self.url, self.limit, self.sent, self.headers = url, limit, 0, headers or {}
        self.done: list[float] = []
        self.failures: list[str] = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._worker, daemon=True) for _ in range(concurrency)]
        for t in self.threads:
            t.start()

    def _take(self) -> bool:
        with self.lock:
            if self.sent >= self.limit:
                return False
            self.sent += 1
            return True

    def _worker(self) -> None:
        session = requests.Session()
        session.headers.update(self.headers)
        while self._take():
            try:
                r = session.post(self.url, json={"text": TEXTS[self.sent % len(TEXTS)]}, timeout=60)
                if r.status_code == 200:
                    self.done.append(time.monotonic())
                else:
                    self.failures.append(f"{r.status_code}: {r.text[:300]}")
            except requests.RequestException as err:
                self.failures.append(repr(err))

    def rate(self, start: float, end: float) -> float:
        """Successful requests per second completed in ``[start, end)``."""
        return sum(start <= t < end for t in self.done) / (end - start)

    def join(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for every request to be sent and answered; True if they were."""
        deadline = time.monotonic() + timeout_s
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self.threads)

    def stop(self, timeout_s: float) -> None:
        """Send no more requests; wait for those in flight (fail if they outlast ``timeout_s``)."""
        with self.lock:
            self.limit = self.sent
        assert self.join(timeout_s), f"requests still running after {timeout_s} s"


APP = "sentiment"


MODEL = "SentimentModel"


TEXTS = [
    "A fun brain candy movie...good dialog.",
    "What a waste of time. The plot was confusing, acting was terrible.",
    "meh",
    "While the cinematography was stunning, the weak storyline ruined the experience. " * 8,  # truncated at 64
    "This movie is an absolute masterpiece! The acting was brilliant.",
]


def make_checkpoint(tiny_model_dir: Path, folder: Path) -> Path:
    """A servable model folder (max_seq_length 64) whose outputs differ clearly from text to text.

    The tiny BERT's default init maps every text to nearly the same probability, which would let a
    wrong endpoint pass a 1e-5 comparison; larger weights (seeded) spread the outputs.
    """
    cfg = load_config(None, [f"model.name_or_path={tiny_model_dir}", "data.max_seq_length=64"])
    model = build_model(cfg.model)
    torch.manual_seed(0)
    with torch.no_grad():
        for weight in (p for p in model.parameters() if p.ndim == 2):
            weight.normal_(0.0, 0.2)
    return save_model_dir(model, load_tokenizer(str(tiny_model_dir)), cfg, {"val_accuracy": 0.5}, folder)


def start_serve(args: dict[str, Any]) -> str:
    """Start a loopback-only Ray and Serve, deploy ``build_app(args)`` at ``/``; return its URL.

    No W&B lineage run unless ``args`` asks for one (tests/ray_jobs/test_tracking.py covers it)."""
    init_ray(num_cpus=2)
    port = free_loopback_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app({"wandb_mode": "disabled", **args}), name=APP, route_prefix="/", logging_config={"enable_access_log": False})
    return f"http://127.0.0.1:{port}"


def stop_serve() -> None:
    """Shut Serve and Ray down."""

    serve.shutdown()
    ray.shutdown()


@contextmanager
def keyless_server(tiny_model_dir: Path, folder: Path, args: dict[str, Any]) -> Iterator[str]:
    """Serve a fresh checkpoint in ``folder`` with ``args`` and no API key; yields the base URL."""
    checkpoint = make_checkpoint(tiny_model_dir, folder / "model")
    with pytest.MonkeyPatch.context() as env:
        env.delenv(API_KEY_ENV, raising=False)
        try:
            yield start_serve({"checkpoint": str(checkpoint), **args})
        finally:
            stop_serve()


def model_replicas() -> dict[str, int]:
    """Replica counts by state of the model deployment, from ``serve.status()``."""
    states = serve.status().applications[APP].deployments[MODEL].replica_states
    return {str(getattr(k, "value", k)): v for k, v in states.items() if v}


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll ``condition`` every 0.2 s; fail naming ``what`` if it does not hold within the time."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout_s:.0f} s waiting for {what}"
        time.sleep(0.2)


def manifest(name: str) -> dict:
    return yaml.safe_load((K8S / name).read_text())


def rayjob_submission() -> tuple[str, dict]:
    """What KubeRay's submitter runs for k8s/rayjob.yaml (K8sJobMode), as ``ray job submit`` parses it:
    the entrypoint, and the runtime env of ``--runtime-env-json`` (runtimeEnvYAML as JSON)."""
    spec = manifest("rayjob.yaml")["spec"]
    runtime_env = parse_runtime_env_args(runtime_env_json=json.dumps(yaml.safe_load(spec["runtimeEnvYAML"])))
    return spec["entrypoint"].strip(), runtime_env


BIN = Path(sys.executable).parent


def ray_cli(*args: str, env: dict, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "ray"), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def submit_job(*args: str, env: dict, address: str) -> subprocess.CompletedProcess:
    """``ray job submit``, retried (bounded) while the head's job agent is still starting."""
    deadline = time.monotonic() + 120
    while True:
        done = ray_cli("job", "submit", f"--address={address}", *args, env=env, timeout=600)
        if "No available agent to submit job" not in done.stderr or time.monotonic() > deadline:
            return done
        time.sleep(3)


@contextlib.contextmanager
def ray_head(head_only_env: dict[str, str] | None = None) -> Iterator[tuple[dict[str, str], str, str]]:
    """A `ray start --head` on 127.0.0.1 with free ports for every agent and its own temp folder.

    Token auth is on with a token of its own, as cluster.yaml starts nodes: ``RAY_AUTH_MODE=token``
    and the token in a file (``RAY_AUTH_TOKEN_PATH``); a plain ``ray start --head`` turns it on only
    when ``~/.ray/auth_token`` already exists. ``head_only_env`` goes to the head's processes only
    (secrets a node holds). Yields the client environment (the same token, without
    ``head_only_env``), the dashboard address and the GCS address; stops only this cluster's
    processes and deletes its temp folder (runtime envs and the token live there).
    """
    keep_ray_local()
    temp = Path("/tmp") / f"rj-{uuid.uuid4().hex[:6]}"  # short: Ray's socket paths have a length limit
    temp.mkdir()
    token = temp / "auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
           **auth, **(head_only_env or {})}
    env.pop("RAY_ADDRESS", None)
    env.pop("RAY_AUTH_TOKEN", None)
    # own ports for every agent: another Ray on this machine may hold the defaults
    dash, gcs_port, agent, metrics, runtime_env, client_server = free_loopback_ports(6)
    started = ray_cli("start", "--head", "--node-ip-address=127.0.0.1", f"--port={gcs_port}",
                   "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--num-cpus=2",
                   f"--dashboard-agent-listen-port={agent}", f"--metrics-export-port={metrics}",
                   f"--runtime-env-agent-port={runtime_env}", f"--ray-client-server-port={client_server}",
                   "--disable-usage-stats", f"--temp-dir={temp}", env=env)
    try:
        assert started.returncode == 0, started.stderr[-3000:]
        client = {k: v for k, v in env.items() if k not in (head_only_env or {})}
        yield client, f"http://127.0.0.1:{dash}", f"127.0.0.1:{gcs_port}"
    finally:
        stop_cluster(temp, gcs_port)
        shutil.rmtree(temp, ignore_errors=True)


S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@contextlib.contextmanager
def s3_server(ip_address: str) -> Iterator[tuple[str, Any]]:
    """A real S3 server (moto's server mode) on ``ip_address`` with an empty bucket ``bucket``; yields
    its endpoint URL and a boto3 client. Clients use :data:`S3_CREDENTIALS`."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address=ip_address, port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
                              aws_secret_access_key=S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
                              region_name=S3_CREDENTIALS["AWS_DEFAULT_REGION"])
        client.create_bucket(Bucket="bucket")
        yield endpoint, client
    finally:
        server.stop()


def s3_objects(client: Any, prefix: str) -> dict[str, int]:
    """Every object in ``bucket`` under ``prefix``: its key and size in bytes."""
    pages = client.get_paginator("list_objects_v2").paginate(Bucket="bucket", Prefix=prefix)
    return {o["Key"]: o["Size"] for page in pages for o in page.get("Contents", [])}


def s3_keys(client: Any, prefix: str) -> set[str]:
    """Every object key in ``bucket`` under ``prefix``."""
    return set(s3_objects(client, prefix))


def registered(run_dir: Path, checkpoint: str) -> bool:
    """Whether Ray Train has registered ``checkpoint`` (a restart resumes from registered ones only)."""
    snapshot = run_dir / "checkpoint_manager_snapshot.json"
    try:
        return f'"{checkpoint}"' in snapshot.read_text()
    except OSError:
        return False


def kill_a_worker_in_epoch_2(run_dir: Path, pick: Callable[[list[int]], int]) -> tuple[threading.Thread, dict[str, object]]:
    """Start a thread that SIGKILLs the worker ``pick`` chooses 0.1 s after ``run_dir``'s epoch 1 is
    registered; returns it and what it saw (``pid``, ``epochs_done_at_kill``: the epoch folders there were, or ``error``)."""
    seen: dict[str, object] = {}

    def kill() -> None:
        try:
            deadline = time.monotonic() + 600
            while not registered(run_dir, "epoch_001") and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.1)  # into epoch 2: registration comes up to 2 s after the report, epoch 2 runs meanwhile
            pid = pick(worker_pids())
            seen["epochs_done_at_kill"] = sorted(p.name for p in run_dir.glob("epoch_*"))
            seen["pid"] = pid
            os.kill(pid, signal.SIGKILL)
        except Exception as err:  # surfaced by the caller's assertions
            seen["error"] = repr(err)

    killer = threading.Thread(target=kill, daemon=True)
    killer.start()
    return killer, seen


def run_module(module: str, *args: str, data: Path, timeout: int = 600) -> list[str]:
    out = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True,
                         timeout=timeout, env={**os.environ, "IMDB_DATA_DIR": str(data)})
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    return out.stdout.strip().splitlines()


def worker_pids() -> list[int]:
    """PIDs of the live Ray Train workers of this process's Ray (named by its GCS address: with
    another Ray on the machine, the state API would otherwise pick the latest one started)."""
    actors = list_actors(address=ray.get_runtime_context().gcs_address,
                         filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])
    return [a.pid for a in actors]


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


def http_front_pid() -> int:
    """The process that takes the HTTP requests: HAProxy in HAProxy mode (a local Ray's default,
    ``ray_jobs.local_ray_env``; the newest, if a reload left an old one draining), else Serve's proxy."""
    managers = alive_actors("HAProxyManager")
    if not managers:
        (proxy,) = alive_actors("ProxyActor").values()
        return proxy
    (manager,) = managers.values()
    fronts = [p for p in psutil.Process(manager).children() if p.name() == "haproxy"]
    return max(fronts, key=lambda p: p.create_time()).pid


def alive_actors(class_name: str) -> dict[str, int]:
    """Alive actors named ``class_name`` in this driver's Ray: actor id -> worker PID (Ray's state API)."""
    import ray
    from ray.util.state import list_actors

    actors = list_actors(address=ray.get_runtime_context().gcs_address,  # another Ray may run on this machine
                         filters=[("class_name", "=", class_name), ("state", "=", "ALIVE")])
    return {a.actor_id: a.pid for a in actors}


SHAPE = [("data", "max_seq_length"), ("data", "truncation"), ("data", "pad_to_multiple_of"), ("data", "long_reviews"),
         ("deepspeed", "zero_stage"), ("scaling", "num_workers"), ("train", "schedule"), ("train", "freeze_embeddings")]


def kept_shape(model_dir: Path, raw: dict) -> dict:
    """The config saved with a ``shrink``-ed run's model; each shape key the file sets is what the run used."""
    saved = json.loads((model_dir / "train_config.json").read_text())
    for section, key in SHAPE:
        if key in raw.get(section, {}):
            assert saved[section][key] == raw[section][key], f"{section}.{key}"
    return saved


def shrink(name: str, model: Path, data: Path, storage: Path, *extra: str) -> tuple[Config, dict]:
    """``configs/<name>.yaml`` on the tiny model and data, one epoch of a few reviews on CPU; and the file."""
    raw = yaml.safe_load((ROOT / "configs" / f"{name}.yaml").read_text())
    overrides = [
        f"model.name_or_path={model}", f"data.path={data}", "data.max_train_samples=32", "data.max_val_samples=16",
        "data.max_test_samples=16", "train.epochs=1", "train.batch_size=8", "scaling.use_gpu=false",
        "scaling.cpus_per_worker=1", "tracking.mode=disabled", "run.max_failures=0", f"run.storage_path={storage}",
        f"run.name={name}",
    ]
    if raw.get("train", {}).get("precision") == "bf16":
        overrides.append("train.precision=auto")  # bf16 where this CPU runs it natively, else fp32
    if raw.get("train", {}).get("freeze_layers"):
        overrides.append("train.freeze_layers=1")  # the tiny BERT has 2 layers
    if "pretrain" in raw:
        overrides += ["pretrain.splits=[train]", "pretrain.max_texts=48", "pretrain.validation_texts=16"]
    return load_config(ROOT / "configs" / f"{name}.yaml", [*overrides, *extra]), raw


# --- serve.http over a stand-in model (tests/serve/conftest.py's ``api``) ---------------------------

STAND_IN_KEY = "test-key-123"
STAND_IN_BODY_TIMEOUT_S = 1.0
STAND_IN_BUDGET = 7  # what the stand-in ingress states to the HAProxy in front


class StandIn:
    """A model that calls a text positive when it holds 'good' (its key token when explained);
    records what it was asked."""

    def __init__(self) -> None:
        self.seen: list[list[str]] = []
        self.explains = True
        self.statuses: list[tuple[int, str]] = []  # what the app's status recorder saw
        self.saturated = False  # what overloaded() says: every prediction refused from the headers

    async def predict(self, texts: list[str], explain: bool = False) -> list[Prediction]:
        if explain and not self.explains:
            raise ExplainUnavailable("explain needs gradients, which backend 'onnx-int8' cannot give")
        if "overload" in texts:
            raise Overloaded("overloaded: 40 windows in flight", retry_after_s=2)
        if "costly" in texts:
            raise RequestTooCostly("over max_request_windows=512 per request")
        self.seen.append(texts)
        return [Prediction("positive" if "good" in t else "negative", 0.9 if "good" in t else 0.6,
                           {"negative": 0.1, "positive": 0.9} if "good" in t else {"negative": 0.6, "positive": 0.4},
                           num_tokens=len(t.split()) + 2, truncated="long" in t,
                           key_tokens=[KeyToken("good", 0.5)] if explain and "good" in t else [] if explain else None,
                           logits=[-1.0, 1.2] if "good" in t else [0.2, -0.2])
                for t in texts]

    def overloaded(self) -> Overloaded | None:
        return Overloaded("overloaded: 64 windows in flight", retry_after_s=3) if self.saturated else None

    async def info(self) -> dict[str, Any]:
        return {"checkpoint": "c", "path": "/p", "sha256": "0" * 64, "weights_sha256": "1" * 64,
                "label_names": ["negative", "positive"], "metrics": {}, "config": {"max_seq_length": 64},
                "device": "cpu", "dtype": "float32"}


@contextmanager
def stand_in_api() -> Iterator[tuple[str, StandIn]]:
    """serve.http's FastAPI app over a StandIn on a real uvicorn on 127.0.0.1: its URL and the stand-in."""
    backend = StandIn()
    args = ServeArgs(checkpoint="c", max_text_chars=50, max_texts=3, max_body_bytes=2000, explain_max_texts=2,
                     body_timeout_s=STAND_IN_BODY_TIMEOUT_S, min_body_rate=1_000_000)
    port = free_loopback_port()
    server = uvicorn.Server(uvicorn.Config(make_api(backend, args, SecretStr(STAND_IN_KEY), lambda *answer: backend.statuses.append(answer),
                                                    budget=lambda: STAND_IN_BUDGET), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", backend
    server.should_exit = True
    thread.join(10)
