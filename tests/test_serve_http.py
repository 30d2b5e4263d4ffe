"""serve.http without Ray: the FastAPI app over a stand-in model, on a real uvicorn on 127.0.0.1.

The routes, the API key, the body limits and the error bodies are the product's own code; only the
model behind them is a stand-in, so these run in the fast tier. tests/test_serve.py runs the same
app on Ray Serve with a real checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import uvicorn
from pydantic import SecretStr

from ray_jobs.local_ray import free_loopback_port
from sentiment.predict import ExplainUnavailable, KeyToken, Prediction
from serve.admission import Overloaded, RequestTooCostly
from serve.http import make_api
from serve.schemas import ServeArgs

ROOT = Path(__file__).resolve().parent.parent
KEY = "test-key-123"
BODY_TIMEOUT_S = 1.0


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


@pytest.fixture(scope="module")
def api() -> Iterator[tuple[str, StandIn]]:
    backend = StandIn()
    args = ServeArgs(checkpoint="c", max_text_chars=50, max_texts=3, max_body_bytes=2000, explain_max_texts=2,
                     body_timeout_s=BODY_TIMEOUT_S, min_body_rate=1_000_000)
    port = free_loopback_port()
    server = uvicorn.Server(uvicorn.Config(make_api(backend, args, SecretStr(KEY), lambda *answer: backend.statuses.append(answer),
                                                    budget=lambda: BUDGET), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", backend
    server.should_exit = True
    thread.join(10)


AUTH = {"Authorization": f"Bearer {KEY}"}
BUDGET = 7  # what the stand-in ingress states to the HAProxy in front


def test_predictions_keep_order_and_mark_uncertain_ones(api):
    url, backend = api
    reply = requests.post(f"{url}/v1/predict", json={"texts": ["good film", "dull film"]}, headers=AUTH, timeout=10)
    assert reply.status_code == 200
    got = reply.json()["predictions"]
    assert [p["label"] for p in got] == ["positive", "negative"] and backend.seen[-1] == ["good film", "dull film"]
    assert [p["uncertain"] for p in got] == [False, True]  # 0.6 < uncertain_below 0.8


def test_the_key_is_required_by_bearer_or_basic_auth_and_never_echoed(api):
    url, _ = api
    denied = requests.post(f"{url}/v1/predict", json={"text": "good"}, headers={"Authorization": "Bearer nope"}, timeout=10)
    assert denied.status_code == 401 and denied.headers["WWW-Authenticate"] == "Bearer" and "nope" not in denied.text
    assert requests.post(f"{url}/v1/predict", json={"text": "good"}, auth=(KEY, ""), timeout=10).status_code == 200
    assert requests.get(f"{url}/v1/model", timeout=10).status_code == 401
    assert requests.get(f"{url}/healthz", timeout=10).json() == {"status": "ok", "auth_required": True, "explain": True}
    assert "<html" in requests.get(f"{url}/", timeout=10).text.lower()  # the page is open; it asks for the key


def test_every_answer_reaches_the_status_recorder_with_its_path_even_refusals_before_the_body(api):
    url, backend = api
    backend.statuses.clear()
    requests.post(f"{url}/v1/predict", json={"text": "good"}, timeout=10)  # 401 from the headers
    requests.post(f"{url}/predict", data=b"x" * 3000, headers={**AUTH, "Content-Type": "application/json"}, timeout=10)
    requests.post(f"{url}/v1/predict", json={"text": "overload"}, headers=AUTH, timeout=10)
    requests.post(f"{url}/v1/predict", json={"text": "good"}, headers=AUTH, timeout=10)
    assert backend.statuses == [(401, "/v1/predict"), (413, "/predict"), (503, "/v1/predict"), (200, "/v1/predict")]


@pytest.mark.parametrize("kwargs, status, message", [
    ({"json": {"text": "x" * 51}}, 422, "at most 50 characters"),
    ({"json": {"texts": ["a", "b", "c", "d"]}}, 422, "at most 3 items"),
    ({"json": {"text": "  <br />  "}}, 422, "text is empty"),
    ({"json": {"text": "a", "texts": ["b"]}}, 422, "exactly one of"),
    ({"data": "text=good", "headers": {"Content-Type": "text/plain"}}, 415, "Content-Type must be application/json"),
    ({"data": b"{" + b" " * 3000 + b"}", "headers": {"Content-Type": "application/json"}}, 413, "over 2000 bytes"),
])
def test_bad_requests_get_a_json_4xx_naming_the_problem(api, kwargs, status, message):
    url, backend = api
    calls = len(backend.seen)
    headers = {**AUTH, **kwargs.get("headers", {})}
    reply = requests.post(f"{url}/v1/predict", **{k: v for k, v in kwargs.items() if k != "headers"}, headers=headers, timeout=10)
    assert reply.status_code == status and message in reply.text
    assert "x" * 51 not in reply.text  # a rejected text is not echoed back
    assert len(backend.seen) == calls  # the model never saw it


def test_form_posts_go_to_their_own_route(api):
    url, _ = api
    reply = requests.post(f"{url}/v1/predict/form", data={"review": "good"}, headers=AUTH, timeout=10)
    assert reply.status_code == 200 and reply.json()["predictions"][0]["label"] == "positive"


@pytest.mark.parametrize("path, script", [("/docs", "swagger-ui-bundle.js"), ("/redoc", "redoc.standalone.js")])
def test_api_docs_are_open_and_load_nothing_from_outside(api, path, script):
    url, _ = api
    page = requests.get(url + path, timeout=10)
    assert page.status_code == 200  # open, like the page; predictions still need the key
    assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert f"/static-offline-docs/{script}" in assets
    for asset in assets:
        assert asset.startswith("/"), asset  # served by the endpoint itself, never a CDN
        fetched = requests.get(url + asset, timeout=10)
        assert fetched.status_code == 200 and len(fetched.content) > 1000, asset
    spec = requests.get(f"{url}/openapi.json", timeout=10).json()["paths"]["/v1/predict"]["post"]
    assert "At most 3 texts of at most 50 characters each, in a body of at most 2000 bytes" in spec["description"]
    assert {"401", "413", "415", "422"} <= set(spec["responses"])


def test_explain_adds_key_tokens_and_only_when_asked(api):
    url, _ = api
    plain = requests.post(f"{url}/v1/predict", json={"texts": ["good film", "dull"]}, headers=AUTH, timeout=10)
    assert all("key_tokens" not in p for p in plain.json()["predictions"])
    explained = requests.post(f"{url}/v1/predict", json={"texts": ["good film", "dull"], "explain": True},
                              headers=AUTH, timeout=10)
    assert explained.status_code == 200
    assert [p["key_tokens"] for p in explained.json()["predictions"]] == [[{"word": "good", "score": 0.5}], []]


@pytest.mark.parametrize("body, explains, message", [
    ({"texts": ["a", "b", "c"], "explain": True}, True, "explain: at most 2 texts per explained request, got 3"),
    ({"text": "good", "explain": "yes"}, True, "valid boolean"),
    ({"text": "good", "explain": True}, False, "backend 'onnx-int8' cannot give"),
])
def test_explain_beyond_its_limits_or_backend_gets_a_422_naming_it(api, body, explains, message):
    url, backend = api
    backend.explains = explains
    try:
        reply = requests.post(f"{url}/v1/predict", json=body, headers=AUTH, timeout=10)
        assert reply.status_code == 422 and message in reply.text, reply.text
        assert requests.get(f"{url}/healthz", timeout=10).json()["explain"] is explains
    finally:
        backend.explains = True


@pytest.mark.parametrize("text, status, message", [
    ("overload", 503, "overloaded: 40 windows in flight"),
    ("costly", 422, "over max_request_windows=512"),
])
def test_overload_gets_a_503_with_retry_after_and_cost_caps_a_422(api, text, status, message):
    url, _ = api
    reply = requests.post(f"{url}/v1/predict", json={"text": text}, headers=AUTH, timeout=10)
    assert reply.status_code == status and message in reply.text
    assert reply.headers.get("Retry-After") == ("2" if status == 503 else None)


def raw_request(url: str, headers: str, path: str = "/v1/predict") -> socket.socket:
    """A socket that has sent a POST's request line to ``path`` and ``headers`` to ``url``, and no body."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n{headers}\r\n".encode())
    return sock


def test_a_request_without_the_key_gets_its_401_before_sending_its_body(api):
    url, backend = api
    calls = len(backend.seen)
    with raw_request(url, "Content-Length: 1000000\r\n") as sock:
        started = time.monotonic()
        reply = sock.recv(4096).decode()
        assert reply.startswith("HTTP/1.1 401") and "missing or wrong API key" in reply
        assert time.monotonic() - started < BODY_TIMEOUT_S  # from the headers alone, not after a body deadline
    assert len(backend.seen) == calls


@pytest.mark.parametrize("path", ["/v1/predict", "/v1/predict/form", "/predict", "/v2/models/sentiment/infer"])
def test_under_overload_a_prediction_gets_its_503_before_sending_its_body(api, path, monkeypatch):
    url, backend = api
    calls = len(backend.seen)
    monkeypatch.setattr(backend, "saturated", True)
    with raw_request(url, f"Authorization: Bearer {KEY}\r\nContent-Length: 1000\r\n", path) as sock:
        started = time.monotonic()
        reply = sock.recv(4096).decode()
        assert time.monotonic() - started < BODY_TIMEOUT_S  # from the headers alone, not after a body deadline
    assert reply.startswith("HTTP/1.1 503") and "retry-after: 3" in reply.lower() and "64 windows in flight" in reply
    assert len(backend.seen) == calls  # nothing parsed, tokenized or predicted
    assert requests.get(f"{url}/v2/models/sentiment", headers=AUTH, timeout=10).status_code == 200  # the rest is served
    assert requests.post(f"{url}/v1/predict", json={"text": "good"}, timeout=10).status_code == 401  # the key first
    monkeypatch.setattr(backend, "saturated", False)
    assert requests.post(f"{url}{path.replace('/form', '')}", json=body_for(path), headers=AUTH, timeout=10).ok


@pytest.mark.parametrize("path", ["/v1/predict", "/predict", "/v2/models/sentiment/infer"])
def test_a_predictions_answer_states_the_budget_for_haproxy_and_nothing_else_does(api, path, monkeypatch):
    url, backend = api
    answered = requests.post(f"{url}{path}", json=body_for(path), headers=AUTH, timeout=10)
    assert answered.ok and answered.headers["x-sentiment-budget"] == str(BUDGET)
    assert answered.headers["x-sentiment-key"] == hashlib.sha256(KEY.encode()).hexdigest()  # for HAProxy to count keyed ones
    monkeypatch.setattr(backend, "saturated", True)
    refused = requests.post(f"{url}{path}", json=body_for(path), headers=AUTH, timeout=10)
    assert refused.status_code == 503 and refused.headers["x-sentiment-budget"] == str(BUDGET)
    for other in (requests.get(f"{url}/healthz", timeout=10), requests.get(f"{url}/v2/models/sentiment", headers=AUTH, timeout=10)):
        assert other.ok and not {"x-sentiment-budget", "x-sentiment-key"} & other.headers.keys()


def test_without_a_budget_no_answer_states_one():
    from fastapi.testclient import TestClient

    app = make_api(StandIn(), ServeArgs(checkpoint="c"), SecretStr(KEY))
    answered = TestClient(app).post("/v1/predict", json={"text": "good"}, headers=AUTH)
    assert answered.status_code == 200 and not {"x-sentiment-budget", "x-sentiment-key"} & answered.headers.keys()


def body_for(path: str) -> dict[str, Any]:
    """A one-text body for a prediction route (the form route's JSON twin, /v1/predict)."""
    if path.startswith("/v2/"):
        return {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["good"]}]}
    return {"inputs": "good"} if path == "/predict" else {"text": "good"}


def test_a_body_slower_than_its_deadline_is_cut_with_408(api):
    url, backend = api
    calls = len(backend.seen)
    with raw_request(url, f"Authorization: Bearer {KEY}\r\nContent-Length: 100\r\n") as sock:
        started = time.monotonic()
        sock.sendall(b'{"text": ')  # then nothing more: a client stalling mid-body
        reply = sock.recv(4096).decode()
        waited = time.monotonic() - started
    assert reply.startswith("HTTP/1.1 408") and "not received within 1.0 s" in reply
    assert BODY_TIMEOUT_S - 0.1 <= waited < BODY_TIMEOUT_S + 2  # cut at its deadline (clocks differ by a hair)
    assert len(backend.seen) == calls
    ok = requests.post(f"{url}/v1/predict", json={"text": "good"}, headers=AUTH, timeout=10)
    assert ok.status_code == 200


# --- Hugging Face / text-embeddings-inference routes ---------------------------------------------

def test_huggingface_inference_client_classifies_unchanged_with_the_key_as_its_token(api, monkeypatch):
    from huggingface_hub import InferenceClient, constants
    from huggingface_hub.errors import HfHubHTTPError

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # the suite keeps the hub offline; this URL is local
    url, _ = api
    top = InferenceClient(model=f"{url}/predict", token=KEY).text_classification("good film", top_k=2)
    assert [(e.label, e.score) for e in top] == [("positive", 0.9), ("negative", 0.1)]  # every label, best first
    with pytest.raises(HfHubHTTPError) as denied:
        InferenceClient(model=f"{url}/predict").text_classification("good film")
    assert denied.value.response.status_code == 401


@pytest.mark.parametrize("body, expected", [
    ({"inputs": "good"}, [{"label": "positive", "score": 0.9}, {"label": "negative", "score": 0.1}]),
    ({"inputs": ["good", ["dull"]], "top_k": 1}, [[{"label": "positive", "score": 0.9}],
                                                 [{"label": "negative", "score": 0.6}]]),
    ({"inputs": "good", "raw_scores": True}, [{"label": "positive", "score": 1.2}, {"label": "negative", "score": -1.0}]),
    ({"inputs": "dull", "function_to_apply": "sigmoid", "top_k": 1}, [{"label": "negative", "score": 1 / (1 + math.exp(-0.2))}]),
    ({"inputs": "dull", "parameters": {"top_k": 1}}, [[{"label": "negative", "score": 0.6}]]),  # the Inference API's shape
])
def test_tei_predict_answers_in_teis_shapes(api, body, expected):
    url, _ = api
    reply = requests.post(f"{url}/predict", json=body, headers=AUTH, timeout=10)
    assert reply.status_code == 200 and same_scores(reply.json(), expected), reply.json()


def same_scores(got, expected):
    """Equal labels in the same nesting, scores to 1e-6."""
    if isinstance(expected, list):
        return isinstance(got, list) and len(got) == len(expected) and all(same_scores(g, e) for g, e in zip(got, expected))
    return got["label"] == expected["label"] and got["score"] == pytest.approx(expected["score"])


@pytest.mark.parametrize("body, status, message", [
    ({"inputs": [["good", "bad"]]}, 422, "inputs[0]: a text pair (2 texts); this model classifies single texts"),
    ({"inputs": ["a", "b", "c", "d"]}, 422, "at most 3 texts per request, got 4"),
    ({"inputs": "x" * 51}, 422, "over max_text_chars=50"),
    ({"inputs": ["good", " <br /> "]}, 422, "inputs[1]: text is empty"),
    ({"inputs": "long and good", "truncate": False}, 422, "truncate=false"),
    ({"inputs": "good", "function_to_apply": "tanh"}, 422, "function_to_apply"),
    ({"inputs": "overload"}, 503, "overloaded"),
])
def test_tei_predict_refuses_what_it_cannot_do_naming_it(api, body, status, message):
    url, _ = api
    reply = requests.post(f"{url}/predict", json=body, headers=AUTH, timeout=10)
    assert reply.status_code == status and message in reply.text, reply.text


def test_tei_info_and_health(api):
    url, _ = api
    assert requests.get(f"{url}/info", timeout=10).status_code == 401
    info = requests.get(f"{url}/info", headers=AUTH, timeout=10).json()
    assert info["model_type"]["classifier"]["id2label"] == {"0": "negative", "1": "positive"}
    assert (info["max_input_length"], info["max_client_batch_size"], info["model_sha"]) == (64, 3, "1" * 64)
    assert requests.get(f"{url}/health", timeout=10).json() == {"status": "ok"}  # open, like /healthz


# --- Open Inference Protocol v2 (KServe, Triton) -------------------------------------------------

@pytest.mark.parametrize("binary", [True, False], ids=["binary-input", "json-input"])
def test_a_triton_client_infers_with_the_key_and_reads_labels_and_probabilities(api, binary):
    import numpy as np
    import tritonclient.http as triton
    from tritonclient.utils import InferenceServerException

    url, _ = api
    client = triton.InferenceServerClient(url.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready()  # probes are open
    text = triton.InferInput("text", [2], "BYTES")
    text.set_data_from_numpy(np.array(["good film", "dull"], dtype=object), binary_data=binary)
    wanted = [triton.InferRequestedOutput(n, binary_data=False) for n in ("label", "probabilities")]
    result = client.infer("sentiment", [text], outputs=wanted, headers=dict(AUTH))  # the client adds to it
    assert [str(v, "utf-8") if isinstance(v, bytes) else v for v in result.as_numpy("label")] == ["positive", "negative"]
    np.testing.assert_allclose(result.as_numpy("probabilities"), [[0.1, 0.9], [0.6, 0.4]], rtol=1e-6)
    assert client.get_model_metadata("sentiment", headers=dict(AUTH))["parameters"]["labels"] == ["negative", "positive"]
    defaults = client.infer("sentiment", [text], headers=dict(AUTH))  # no outputs named: the client's defaults
    np.testing.assert_allclose(defaults.as_numpy("probabilities"), [[0.1, 0.9], [0.6, 0.4]], rtol=1e-6)
    with pytest.raises(InferenceServerException, match="401|API key"):
        client.infer("sentiment", [text], outputs=wanted)


KSERVE = "kserve==0.21.0"  # pinned: its own venv (its pins conflict with the project's, see tests/kserve_client.py)


@pytest.fixture(scope="session")
def kserve_python() -> Path:
    """The Python of ``.venv-kserve``, a venv holding only KServe's client, made (once) with uv."""
    venv = ROOT / ".venv-kserve"
    python = venv / "bin" / "python"
    stamp = venv / f".installed-{KSERVE}"
    if not stamp.exists():
        uv = [sys.executable, "-m", "uv"]
        subprocess.run([*uv, "venv", "--quiet", "--clear", "--python", sys.executable, str(venv)], check=True)
        subprocess.run([*uv, "pip", "install", "--quiet", "--python", str(python), KSERVE], check=True)
        stamp.touch()
    return python


def test_kserves_rest_client_gets_the_v1_labels_and_probabilities_by_json_and_binary_input(api, kserve_python):
    import numpy as np

    url, _ = api
    texts = ["good film", "dull film", "good"]
    v1 = requests.post(f"{url}/v1/predict", json={"texts": texts}, headers=AUTH, timeout=10).json()["predictions"]
    out = subprocess.run([str(kserve_python), str(ROOT / "tests" / "kserve_client.py"), url, "sentiment", KEY, json.dumps(texts)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    answers = json.loads(out.stdout)
    assert (answers["live"], answers["ready"], answers["model_ready"], answers["without_key"]) == (True, True, True, 401)
    for mode in ("json", "binary"):
        assert answers[mode]["label"] == [p["label"] for p in v1]
        expected = [[p["probabilities"][name] for name in ("negative", "positive")] for p in v1]
        np.testing.assert_allclose(answers[mode]["probabilities"], expected, atol=1e-6)


@pytest.mark.parametrize("path, body, status, message", [
    ("/v2/models/other/infer", {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["good"]}]},
     404, "serves 'sentiment'"),
    ("/v2/models/sentiment/infer", {"inputs": [{"name": "ids", "shape": [1], "datatype": "INT64", "data": [1]}]},
     400, "one BYTES tensor named 'text'"),
    ("/v2/models/sentiment/infer", {"inputs": [{"name": "text", "shape": [3], "datatype": "BYTES", "data": ["a"]}]},
     400, "shape [3] does not hold its 1 strings"),
    ("/v2/models/sentiment/infer", {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a"]}],
                                    "outputs": [{"name": "logits"}]}, 400, "unknown ['logits']"),
    ("/v2/models/sentiment/infer", {"inputs": [{"name": "text", "shape": [4], "datatype": "BYTES", "data": ["a"] * 4}]},
     400, "at most 3 texts per request, got 4"),
    ("/v2/models/sentiment/infer", {"input": []}, 400, "inputs: Field required"),
])
def test_v2_infer_refuses_what_it_cannot_do_naming_it(api, path, body, status, message):
    url, _ = api
    reply = requests.post(url + path, json=body, headers=AUTH, timeout=10)
    assert reply.status_code == status and message in reply.json()["error"], reply.text  # the protocol's error body


def test_v2_infer_json_shape(api):
    url, _ = api
    body = {"id": "r1", "inputs": [{"name": "text", "shape": [1, 1], "datatype": "BYTES", "data": [["good"]]}],
            "outputs": [{"name": "probabilities"}]}
    reply = requests.post(f"{url}/v2/models/sentiment/infer", json=body, headers=AUTH, timeout=10).json()
    assert reply["id"] == "r1" and reply["model_name"] == "sentiment"
    assert reply["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [1, 2], "data": [0.1, 0.9]}]
