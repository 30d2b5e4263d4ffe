"""serve.app and serve.deployment: build_app's checks, then a real Ray Serve on 127.0.0.1 with a tiny model on CPU.

One module-scoped deployment (API key from $SENTIMENT_API_KEY, autoscaling 1..2 model replicas with
short delays) answers every HTTP test: predictions against the in-process Predictor, the bad-input
table, the API key, lineage, and scaling up and back down under load with no failed request.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from pydantic import ValidationError
from ray.serve import Application
from ray.serve._private.api import call_user_app_builder_with_args_if_necessary
from ray.serve.schema import ServeDeploySchema

from sentiment.layout import CheckpointError, resolve
from sentiment.predict import Predictor
from serve.app import build_app
from serve.schemas import API_KEY_ENV, ServeArgs
from tests.support import TEXTS, make_checkpoint, model_replicas, start_serve, stop_serve, wait_until

# Serve warns when look_back_period_s is under its deprecated 10 s metrics_interval_s; the tests
# push metrics every 0.1 s (FAST_METRICS_ENV), so a 2 s window is sound.
pytestmark = [pytest.mark.ray, pytest.mark.filterwarnings("ignore:`look_back_period_s`:FutureWarning")]

ROOT = Path(__file__).resolve().parents[2]
KEY = "k-" + secrets.token_hex(16)
# Serve reads these when its actors start: push load metrics every 0.1 s instead of every 10 s.
FAST_METRICS_ENV = {
    "RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.1",
    "RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.1",
    "RAY_metrics_report_interval_ms": "1000",  # Prometheus sees the replicas' counters within a second, not ten
}
# downscale_delay_s outlasts a replica's start (~15 s of CPU-heavy imports on 2 cores, which slows
# the ingress enough that the measured load dips): shorter, the autoscaler flaps 2 -> 1 -> 2.
# configs/serve.yaml's application, shrunk to the tiny model's sizes (as the training configs are)
SERVE_YAML_ARGS = yaml.safe_load((ROOT / "configs" / "serve.yaml").read_text())["applications"][0]["args"]
TEST_ARGS = {
    "num_cpus": 0.5, "max_batch_size": 8, "batch_wait_timeout_s": 0.005, "max_ongoing_requests": 16,
    "max_batch_tokens": 128,  # with max_seq_length 64: two long reviews fill a batch (the token budget at work)
    "min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 2, "upscale_delay_s": 0.5,
    "downscale_delay_s": 15.0, "look_back_period_s": 2.0, "max_text_chars": 2000, "max_texts": 8,
    "max_request_windows": 6,  # under max_texts: 7 texts are a request over its cost cap
}


@pytest.fixture(scope="module")
def checkpoint(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tiny_model_dir, tmp_path_factory.mktemp("serve") / "model")


@pytest.fixture(scope="module")
def server(checkpoint: Path) -> Iterator[str]:
    with pytest.MonkeyPatch.context() as env:
        for name, value in FAST_METRICS_ENV.items():
            env.setenv(name, value)
        env.setenv(API_KEY_ENV, KEY)
        url = start_serve({**SERVE_YAML_ARGS, "checkpoint": str(checkpoint), **TEST_ARGS})
        try:
            yield url
        finally:
            stop_serve()


@pytest.fixture
def client() -> requests.Session:
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {KEY}"
    return session


# --- build_app and checkpoint resolution (no Serve) ------------------------------------------


def test_bad_checkpoints_fail_before_deploying(checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        build_app({"checkpoint": str(tmp_path / "nope")})
    no_weights = shutil.copytree(checkpoint, tmp_path / "no-weights")
    (no_weights / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="missing model.safetensors"):
        build_app({"checkpoint": str(no_weights)})
    cut = shutil.copytree(checkpoint, tmp_path / "cut")
    weights = (cut / "model.safetensors").read_bytes()
    (cut / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    with pytest.raises(CheckpointError, match="damaged weights"):
        build_app({"checkpoint": str(cut)})
    bad_config = shutil.copytree(checkpoint, tmp_path / "bad-config")
    (bad_config / "train_config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupt"):
        build_app({"checkpoint": str(bad_config)})


def test_args_are_validated_naming_the_field(checkpoint: Path) -> None:
    for bad, field in [({"checkpont": "x"}, "checkpont"), ({"which": "first"}, "which"),
                       ({"min_replicas": 3, "max_replicas": 2}, "max_replicas"),
                       ({"max_batch_size": 64, "max_ongoing_requests": 8}, "max_ongoing_requests")]:
        with pytest.raises(ValidationError, match=field):
            build_app({"checkpoint": str(checkpoint), **bad})
    with pytest.raises(ValueError, match=r"max_batch_tokens=32 is below the checkpoint's max_seq_length \(64\)"):
        build_app({"checkpoint": str(checkpoint), "max_batch_tokens": 32})
    assert ServeArgs.model_validate({"checkpoint": "x", "max_replicas": "4"}).max_replicas == 4  # CLI strings


def test_checkpoint_forms_resolve_to_the_model_folder(checkpoint: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    for epoch in ("epoch_001", "epoch_002"):
        shutil.copytree(checkpoint, run / epoch / "model")
    (run / "result.json").write_text(json.dumps(
        {"best_checkpoint": str(run / "epoch_001"), "last_checkpoint": str(run / "epoch_002")}))
    (tmp_path / "best.json").write_text(json.dumps({"checkpoint": str(run / "epoch_002")}))
    assert resolve(str(run)).location == str(run / "epoch_001" / "model")
    assert resolve(str(run), "last").location == str(run / "epoch_002" / "model")
    assert resolve("best", storage_path=str(tmp_path)).location == str(run / "epoch_002" / "model")
    assert resolve(f"file://{run}", "last").location == f"file://{run}/epoch_002/model"
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="missing config.json"):
        resolve(f"file://{tmp_path}/empty")


def test_serve_run_cli_args_reach_build_app_as_serve_args(checkpoint: Path) -> None:
    # `serve run serve.app:build_app checkpoint=... max_replicas=3` passes strings through this call
    app = call_user_app_builder_with_args_if_necessary(build_app, {"checkpoint": str(checkpoint), "max_replicas": "3"})
    assert isinstance(app, Application)
    with pytest.raises(ValidationError, match="max_replicas"):
        call_user_app_builder_with_args_if_necessary(build_app, {"checkpoint": str(checkpoint), "max_replicas": "many"})


def test_serve_config_file_is_a_valid_serve_config() -> None:
    path = ROOT / "configs" / "serve.yaml"
    assert path.read_text().splitlines()[0].startswith("# serve ")
    config = ServeDeploySchema.model_validate(yaml.safe_load(path.read_text()))
    (app,) = config.applications
    assert app.import_path == "serve.app:build_app"
    ServeArgs.model_validate(app.args)


# --- HTTP on a real Serve --------------------------------------------------------------------


def assert_matches(got: list[dict[str, Any]], expected: list[Any]) -> None:
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g["label"] == e.label and g["num_tokens"] == e.num_tokens and g["truncated"] == e.truncated
        assert g["probabilities"].keys() == e.probabilities.keys()
        for name, p in e.probabilities.items():
            assert g["probabilities"][name] == pytest.approx(p, abs=1e-5)
        assert g["uncertain"] == (e.score < 0.8)


def test_probabilities_equal_the_in_process_predictor(server: str, client: requests.Session, checkpoint: Path) -> None:
    expected = Predictor.load(checkpoint).predict_details(TEXTS)
    positive = [e.probabilities["positive"] for e in expected]
    assert max(positive) - min(positive) > 0.05  # the comparison below can tell texts apart
    assert any(e.truncated for e in expected)
    single = [client.post(f"{server}/v1/predict", json={"text": t}).json()["predictions"][0] for t in TEXTS]
    assert_matches(single, expected)
    response = client.post(f"{server}/v1/predict", json={"texts": TEXTS})
    assert response.status_code == 200
    assert_matches(response.json()["predictions"], expected)
    # cleaned like the training data: <br /> tags are not tokens
    texts = ["Fun.<br /><br />Good dialog.", "Fun. Good dialog."]
    html, plain = client.post(f"{server}/v1/predict", json={"texts": texts}).json()["predictions"]
    assert html["num_tokens"] == plain["num_tokens"] and html["probabilities"] == pytest.approx(plain["probabilities"], abs=1e-6)


LONG = "x" * 2001
BAD_INPUT = [
    # id, method, path, request kwargs, status, text the JSON error must contain
    ("invalid-json", "post", "/v1/predict", {"data": b"{not json", "headers": {"Content-Type": "application/json"}},
     422, "JSON decode error"),
    ("missing-field", "post", "/v1/predict", {"json": {}}, 422, "exactly one of 'text'"),
    ("unknown-field", "post", "/v1/predict", {"json": {"review": "good"}}, 422, "review"),
    ("both-fields", "post", "/v1/predict", {"json": {"text": "a", "texts": ["b"]}}, 422, "exactly one of 'text'"),
    ("non-string-text", "post", "/v1/predict", {"json": {"text": 5}}, 422, "valid string"),
    ("non-string-in-texts", "post", "/v1/predict", {"json": {"texts": ["ok", None]}}, 422, "valid string"),
    ("texts-not-a-list", "post", "/v1/predict", {"json": {"texts": "ok"}}, 422, "valid list"),
    ("body-not-an-object", "post", "/v1/predict", {"json": ["ok"]}, 422, "valid dictionary"),
    ("empty-text", "post", "/v1/predict", {"json": {"text": ""}}, 422, "text is empty"),
    ("whitespace-text", "post", "/v1/predict", {"json": {"texts": ["fine", " \n\t<br /> "]}}, 422, "text is empty"),
    ("empty-list", "post", "/v1/predict", {"json": {"texts": []}}, 422, "at least 1 item"),
    ("too-many-texts", "post", "/v1/predict", {"json": {"texts": ["ok"] * 9}}, 422, "at most 8 items"),
    ("text-too-long", "post", "/v1/predict", {"json": {"text": LONG}}, 422, "at most 2000 characters"),
    ("over-the-windows-cap", "post", "/v1/predict", {"json": {"texts": ["ok"] * 7}}, 422, "over max_request_windows=6"),
    ("wrong-content-type", "post", "/v1/predict", {"data": "text=good", "headers": {"Content-Type": "text/plain"}},
     415, "application/json"),
    ("form-missing-review", "post", "/v1/predict/form", {"data": {"text": "good"}}, 422, "review"),
    ("form-blank-review", "post", "/v1/predict/form", {"data": {"review": "  "}}, 422, "text is empty"),
    ("form-review-too-long", "post", "/v1/predict/form", {"data": {"review": LONG}}, 422, "at most 2000 characters"),
    ("unknown-path", "post", "/v1/nope", {"json": {"text": "good"}}, 404, "Not Found"),
    ("unversioned-path", "post", "/predictions", {"json": {"text": "good"}}, 404, "Not Found"),
    ("wrong-method", "get", "/v1/predict", {}, 405, "Method Not Allowed"),
]


@pytest.mark.parametrize("method, path, kwargs, status, message", [row[1:] for row in BAD_INPUT], ids=[row[0] for row in BAD_INPUT])
def test_bad_input_gets_a_json_4xx_and_serving_goes_on(
    server: str, client: requests.Session, method: str, path: str, kwargs: dict[str, Any], status: int, message: str
) -> None:
    response = client.request(method, server + path, **kwargs)
    assert (response.status_code, response.headers["content-type"]) == (status, "application/json")
    assert message in json.dumps(response.json()["detail"])
    assert client.post(f"{server}/v1/predict", json={"text": "still serving?"}).status_code == 200


def test_an_explained_answer_is_the_plain_answer_with_key_tokens(server: str, client: requests.Session) -> None:
    plain = client.post(f"{server}/v1/predict", json={"texts": TEXTS[:3]}).json()["predictions"]
    explained = client.post(f"{server}/v1/predict", json={"texts": TEXTS[:3], "explain": True}).json()["predictions"]
    for p, e in zip(plain, explained, strict=True):
        assert isinstance(e.pop("key_tokens"), list) and "key_tokens" not in p
        assert e["label"] == p["label"] and e["probabilities"] == pytest.approx(p["probabilities"], abs=1e-6)


def test_huggingface_inference_client_gets_the_v1_probabilities(server: str, client: requests.Session,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import InferenceClient, constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # the suite keeps the hub offline; this URL is local
    hf = InferenceClient(model=f"{server}/predict", token=KEY)
    for text in TEXTS[:3]:
        (v1,) = client.post(f"{server}/v1/predict", json={"text": text}).json()["predictions"]
        got = hf.text_classification(text, top_k=2)
        assert [e.label for e in got] == sorted(v1["probabilities"], key=lambda n: -v1["probabilities"][n])
        assert {e.label: e.score for e in got} == pytest.approx(v1["probabilities"], abs=1e-6)
    info = client.get(f"{server}/info").json()
    assert info["model_type"]["classifier"]["id2label"] == {"0": "negative", "1": "positive"}


def scrape(port: int) -> dict[tuple[str, frozenset], float]:
    """Every sample on a node's Prometheus port: (name, labels) -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def total(samples: dict[tuple[str, frozenset], float], name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels`` (over replicas, routes...)."""
    return sum(v for (n, tags), v in samples.items() if n == name and set(labels.items()) <= tags)


# Ray's workers export every 10 s (metrics_report_interval_ms) and Serve's HAProxy manager every
# 10 s (RAY_SERVE_HAPROXY_METRICS_REPORT_INTERVAL_S): counts of a request show up to ~20 s later.
EXPORT_LAG_S = 22


def settled(port: int, prefixes: tuple[str, ...]) -> dict[tuple[str, frozenset], float]:
    """A scrape taken once the counters named by ``prefixes`` have not moved for ``EXPORT_LAG_S``.

    Earlier tests' requests are still being exported for a while; a baseline taken before they
    land would count them as this test's.
    """
    def counted(samples: dict[tuple[str, frozenset], float]) -> dict[tuple[str, frozenset], float]:
        return {k: v for k, v in samples.items() if k[0].startswith(prefixes)}

    last, since, deadline = scrape(port), time.monotonic(), time.monotonic() + 120
    while time.monotonic() - since < EXPORT_LAG_S:
        assert time.monotonic() < deadline, "the counters never stopped moving"
        time.sleep(1)
        now = scrape(port)
        if counted(now) != counted(last):
            since = time.monotonic()
        last = now
    return last


def test_the_replicas_metrics_reach_prometheus_with_the_counts_sent(server: str, client: requests.Session) -> None:
    import ray

    wait_until(lambda: model_replicas() == {"RUNNING": 1}, 60, "one model replica (counters live as long as it does)")
    port = ray._private.worker.global_worker.node.metrics_export_port
    before = settled(port, ("ray_sentiment_", "ray_serve_num_http_requests"))
    answers = [client.post(f"{server}/v1/predict", json={"text": text}).json()["predictions"][0] for text in TEXTS]
    answers += client.post(f"{server}/v1/predict", json={"texts": TEXTS[:2], "explain": True}).json()["predictions"]
    for _ in range(2):
        assert requests.post(f"{server}/v1/predict", json={"text": "no key"}).status_code == 401
    assert client.post(f"{server}/predict", json={"inputs": "   "}).status_code == 422
    texts = len(answers)
    labels = {label: sum(a["label"] == label for a in answers) for label in ("negative", "positive")}
    expected = {
        **{("ray_sentiment_predictions_total", (("label", k),)): v for k, v in labels.items()},
        ("ray_sentiment_confidence_count", ()): texts,
        ("ray_sentiment_queue_seconds_count", ()): texts,
        # Ray exports a histogram's _sum from its buckets' midpoints: the buckets are what is exact
        **{("ray_sentiment_tokens_per_text_bucket", (("le", f"{le:.1f}"),)): sum(a["num_tokens"] <= le for a in answers)
           for le in (16, 32, 64)},
        ("ray_sentiment_truncated_total", ()): sum(a["truncated"] for a in answers),
        ("ray_sentiment_explained_total", ()): 2,
        ("ray_sentiment_errors_total", (("status", "401"), ("api", "v1"))): 2,
        ("ray_sentiment_errors_total", (("status", "422"), ("api", "tei"))): 1,
        # Serve's own request metrics (from the HAProxy manager in this mode) count the same answers
        ("ray_serve_num_http_requests_total", (("status_code", "401"),)): 2,
        ("ray_serve_num_http_requests_total", (("status_code", "422"),)): 1,
    }

    def grown() -> dict[tuple[str, tuple], float]:
        now = scrape(port)
        return {key: total(now, key[0], **dict(key[1])) - total(before, key[0], **dict(key[1])) for key in expected}

    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and not all(grown()[k] >= v for k, v in expected.items()):
        time.sleep(0.5)
    time.sleep(2)  # a few more export rounds: nothing counted twice
    assert grown() == expected
    now = scrape(port)
    batches = total(now, "ray_sentiment_batch_texts_count") - total(before, "ray_sentiment_batch_texts_count")
    assert texts / TEST_ARGS["max_batch_size"] <= batches <= texts
    for name in ("ray_sentiment_model_seconds_count", "ray_sentiment_batch_tokens_count"):
        assert total(now, name) - total(before, name) == batches, name  # one observation per forward pass
    small = total(now, "ray_sentiment_batch_tokens_bucket", le="128.0") - total(before, "ray_sentiment_batch_tokens_bucket", le="128.0")
    assert small == batches  # max_batch_tokens=128: no batch holds more
    dashboard = json.loads((ROOT / "configs" / "grafana-dashboard.json").read_text())
    queried = {re.sub(r"_(bucket|total|sum|count)$", "", name)
               for panel in dashboard["panels"] for t in panel["targets"] for name in re.findall(r"\bray_\w+", t["expr"])}
    shown = {re.sub(r"_(bucket|total|sum|count)$", "", name) for name, _ in now}
    assert queried <= shown, queried - shown  # every chart of the dashboard has data


def test_api_key_by_bearer_and_basic_auth(server: str) -> None:
    url, body = f"{server}/v1/predict", {"json": {"text": "A fun brain candy movie...good dialog."}}
    assert requests.post(url, **body).status_code == 401
    assert requests.post(url, **body, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert requests.post(url, **body, auth=("wrong", "")).status_code == 401
    assert requests.post(url, **body, headers={"Authorization": f"Bearer {KEY[:-1]}"}).status_code == 401
    assert requests.get(f"{server}/v1/model").status_code == 401
    denied = requests.post(f"{server}/v1/predict/form", data={"review": "good"})
    assert denied.status_code == 401 and KEY not in denied.text and "Bearer" in denied.json()["detail"]
    assert requests.post(url, **body, headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    assert requests.post(url, **body, auth=(KEY, "")).status_code == 200
    review = {"review": (None, "A fun brain candy movie...good dialog.")}  # curl -F "review=..." -u "<key>:"
    form = requests.post(f"{server}/v1/predict/form", files=review, auth=(KEY, ""))
    assert form.status_code == 200 and form.json()["predictions"][0]["label"] in ("negative", "positive")
    for open_path in ("/healthz", "/", "/openapi.json", "/docs", "/redoc"):  # the docs' assets are local
        assert requests.get(server + open_path).status_code == 200, open_path
    assert requests.get(f"{server}/healthz").json() == {"status": "ok", "auth_required": True, "explain": True}


def test_openapi_documents_the_versioned_api_and_its_limits(server: str) -> None:
    spec = requests.get(f"{server}/openapi.json").json()
    assert {"/v1/predict", "/v1/predict/form", "/v1/model", "/healthz"} <= spec["paths"].keys()
    texts = spec["components"]["schemas"]["PredictRequest"]["properties"]["texts"]["anyOf"][0]
    assert (texts["maxItems"], texts["items"]["maxLength"]) == (8, 2000)


def test_model_info_records_the_checkpoint_served(server: str, client: requests.Session, checkpoint: Path) -> None:
    info = client.get(f"{server}/v1/model").json()
    assert info["checkpoint"] == str(checkpoint) and info["path"] == str(checkpoint.resolve())
    assert info["sha256"] == hashlib.sha256((checkpoint / "model.safetensors").read_bytes()).hexdigest()
    assert info["label_names"] == ["negative", "positive"] and info["metrics"] == {"val_accuracy": 0.5}
    assert info["config"]["max_seq_length"] == 64 and info["config"]["truncation"] == "head_tail"
    assert (info["device"], info["dtype"]) == ("cpu", "float32")


class Load:
    """Single-review requests from ``concurrency`` threads until ``limit`` of them have been sent.

    The limit bounds the load; :meth:`stop_after` lowers it while the load runs. Every response
    that is not a 200 is kept in ``failures``.
    """

    def __init__(self, url: str, concurrency: int, limit: int) -> None:
        self.url, self.limit, self.sent, self.failures = url, limit, 0, []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._worker) for _ in range(concurrency)]
        for t in self.threads:
            t.start()

    def _take(self) -> int | None:
        with self.lock:
            if self.sent >= self.limit:
                return None
            self.sent += 1
            return self.sent

    def _worker(self) -> None:
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {KEY}"
        while (i := self._take()) is not None:
            try:
                r = session.post(self.url, json={"text": TEXTS[i % len(TEXTS)]}, timeout=60)
                if r.status_code != 200:
                    self.failures.append(f"{r.status_code}: {r.text[:200]}")
            except requests.RequestException as err:
                self.failures.append(repr(err))

    def stop_after(self, more: int) -> None:
        """Send at most ``more`` further requests."""
        with self.lock:
            self.limit = min(self.limit, self.sent + more)

    def join(self, timeout_s: float) -> None:
        """Wait for the last requests; fail if they are not done within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))
        assert not any(t.is_alive() for t in self.threads), f"requests still running after {timeout_s} s"


MAX_LOAD_REQUESTS = 30000  # a bound far past what 150 s of load sends here (8,000 once ran out on a slow day)


def test_autoscales_from_one_to_two_replicas_and_back_without_failures(server: str) -> None:
    url = f"{server}/v1/predict"
    wait_until(lambda: model_replicas() == {"RUNNING": 1}, 60, "one model replica before the load")
    # 12 concurrent requests against target_ongoing_requests=2: the autoscaler wants more replicas.
    # The load lasts until a second replica runs (it starts in ~20 s: a new process importing
    # torch), then both serve 200 more; MAX_LOAD_REQUESTS bounds it.
    load = Load(url, concurrency=12, limit=MAX_LOAD_REQUESTS)
    try:
        wait_until(lambda: model_replicas().get("RUNNING", 0) == 2, 150, "a second replica under load")
    finally:
        load.stop_after(200)
        load.join(60)
    assert load.failures == [] and load.sent < MAX_LOAD_REQUESTS
    # One request at a time keeps flowing while the idle replica is drained and removed.
    trickle = Load(url, concurrency=1, limit=MAX_LOAD_REQUESTS)
    try:
        wait_until(lambda: model_replicas() == {"RUNNING": 1}, 90, "the model deployment to scale back to 1")
    finally:
        trickle.stop_after(10)
        trickle.join(60)
    assert trickle.failures == [] and trickle.sent > 10
