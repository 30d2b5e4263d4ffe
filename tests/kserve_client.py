"""KServe's own REST client against an Open Inference Protocol v2 endpoint; runs in the kserve venv.

KServe's package pins versions the project's environment cannot hold (psutil < 6), so
tests/serve/test_http.py runs this file with the Python of a separate venv that has only kserve:
``python tests/kserve_client.py URL MODEL KEY TEXTS_JSON`` prints one JSON object: the probes,
labels and probabilities by JSON and by binary input, and the status a request without the key got.
"""

import asyncio
import json
import sys

import httpx
import numpy as np
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig


async def main(url: str, model: str, key: str, texts: list[str]) -> dict:
    auth = {"Authorization": f"Bearer {key}"}
    answers: dict = {}
    async with InferenceRESTClient(RESTConfig(protocol="v2", retries=0, timeout=30)) as client:
        answers["live"] = await client.is_server_live(url)
        answers["ready"] = await client.is_server_ready(url)
        answers["model_ready"] = await client.is_model_ready(url, model, headers=auth)
        for mode in ("json", "binary"):
            text = InferInput("text", [len(texts)], "BYTES")
            text.set_data_from_numpy(np.array(texts, dtype=object), binary_data=mode == "binary")
            reply = await client.infer(url, InferRequest(model, [text]), model_name=model, headers=dict(auth))
            outputs = {o.name: o.as_numpy() for o in reply.outputs}
            answers[mode] = {"label": [v.decode() if isinstance(v, bytes) else str(v) for v in outputs["label"]],
                             "probabilities": outputs["probabilities"].tolist()}
        text = InferInput("text", [1], "BYTES")
        text.set_data_from_numpy(np.array(texts[:1], dtype=object), binary_data=False)
        try:
            await client.infer(url, InferRequest(model, [text]), model_name=model)
        except httpx.HTTPStatusError as err:
            answers["without_key"] = err.response.status_code
    return answers


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])))))
