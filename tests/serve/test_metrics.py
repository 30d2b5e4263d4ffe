"""serve.metrics and the Grafana dashboard over them (tests/serve/test_app.py scrapes a live replica's)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from serve.metrics import api_of

ROOT = Path(__file__).resolve().parents[2]


def test_the_dashboard_charts_every_metric_the_replicas_export_and_no_other():
    dashboard = json.loads((ROOT / "configs" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    queried = {re.sub(r"_(bucket|total|sum|count)$", "", name) for e in exprs for name in re.findall(r"ray_(sentiment_\w+)", e)}
    defined = set(re.findall(r'metrics\.\w+\(\s*"(sentiment_\w+)"', (ROOT / "serve" / "metrics.py").read_text()))
    assert len(defined) == 11 and queried == defined
    assert all(p["datasource"]["uid"] == "${datasource}" for p in dashboard["panels"])  # any Prometheus, picked on import


@pytest.mark.parametrize("path, api", [
    ("/v1/predict", "v1"), ("/v1", "v1"), ("/predict", "tei"), ("/info", "tei"), ("/health", "tei"),
    ("/v2/models/sentiment/infer", "v2"), ("/v2", "v2"), ("/v1x", "other"), ("/predictor", "other"), ("/", "other"),
])
def test_errors_are_tagged_with_a_bounded_api_name(path, api):
    assert api_of(path) == api
