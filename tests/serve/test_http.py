"""serve.http without Ray: the FastAPI app over a stand-in model, on a real uvicorn on 127.0.0.1.

The routes, the API key, the body limits and the error bodies are the product's own code; only the
model behind them is a stand-in, so these run in the fast tier. tests/serve/test_app.py runs the same
app on Ray Serve with a real checkpoint.
"""

from __future__ import annotations

import hashlib
import re
import socket
import time
from typing import Any

import pytest
import requests
from pydantic import SecretStr

from serve.http import make_api
from serve.schemas import ServeArgs
from tests.support import STAND_IN_BODY_TIMEOUT_S as BODY_TIMEOUT_S
from tests.support import STAND_IN_BUDGET as BUDGET
from tests.support import STAND_IN_KEY, StandIn

KEY = STAND_IN_KEY
AUTH = {"Authorization": f"Bearer {KEY}"}


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
