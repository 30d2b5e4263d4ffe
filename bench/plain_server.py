"""The server a user would otherwise write by hand: FastAPI + uvicorn, one process, torch fp32,
one text per request (the peer of ``bench/serve_throughput.py --peer plain``).

    python -m bench.plain_server --checkpoint <model folder> --port 8001

Same request and response shape as the endpoint's ``POST /v1/predict`` with ``{"text": ...}``;
the review is truncated to the checkpoint's ``max_seq_length`` (from its head, as a hand-written
server would). A sync route: FastAPI runs it in its thread pool.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel
from transformers import AutoModelForSequenceClassification, AutoTokenizer


class PredictRequest(BaseModel):
    text: str


def make_app(folder: Path) -> FastAPI:
    """The app over the model folder ``folder``."""
    max_length = json.loads((folder / "train_config.json").read_text())["data"]["max_seq_length"]
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    app = FastAPI()

    @app.post("/v1/predict")
    def predict(request: PredictRequest) -> dict:
        inputs = tokenizer(request.text, truncation=True, max_length=max_length, return_tensors="pt")
        with torch.inference_mode():
            proba = model(**inputs).logits.softmax(-1)[0].tolist()
        top = max(range(len(proba)), key=proba.__getitem__)
        return {"predictions": [{"label": labels[top], "score": proba[top], "probabilities": dict(zip(labels, proba))}]}

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok"}

    return app


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True, help="model folder")
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args()
    uvicorn.run(make_app(Path(args.checkpoint)), host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
