"""serve.protocols without Ray: the Hugging Face (TEI), KServe v1 and Open Inference Protocol (v2)
routes over a stand-in model on a real uvicorn on 127.0.0.1, driven by each ecosystem's own clients
(huggingface_hub's InferenceClient, tritonclient, kserve's REST client). tests/serve/test_app.py runs
them on Ray Serve with a real checkpoint."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.support import STAND_IN_KEY

ROOT = Path(__file__).resolve().parents[2]
KEY = STAND_IN_KEY
AUTH = {"Authorization": f"Bearer {KEY}"}


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


def test_a_multi_label_prediction_scores_with_its_sigmoids_by_default():
    from sentiment.predict import Prediction
    from serve.protocols import TEIPredictRequest, scores

    names = ["plot", "acting"]
    logits = [2.0, -1.0]
    sigmoids = {"plot": 1 / (1 + math.exp(-2.0)), "acting": 1 / (1 + math.exp(1.0))}
    prediction = Prediction(label="plot", score=sigmoids["plot"], probabilities=sigmoids, num_tokens=5, truncated=False,
                            logits=logits, labels=["plot"])
    function, _ = TEIPredictRequest(inputs="x").scoring(multi_label=True)
    assert function == "sigmoid" and TEIPredictRequest(inputs="x").scoring()[0] == "softmax"
    assert scores(prediction, names, "sigmoid", None) == [{"label": "plot", "score": sigmoids["plot"]},
                                                           {"label": "acting", "score": sigmoids["acting"]}]
    softmax = scores(prediction, names, "softmax", None)  # asked for: from the logits, summing to 1
    assert softmax[0]["score"] == pytest.approx(1 / (1 + math.exp(-3.0))) and sum(r["score"] for r in softmax) == pytest.approx(1)
