"""What the replicas tell Prometheus about the model's own work (Ray's metrics pipeline).

Every replica records through ``ray.serve.metrics``, which each node's Ray metrics agent exports in
Prometheus's format, tagged with the deployment and replica, under Ray's ``ray_`` prefix.

The model replicas (:class:`ModelMetrics`):

- ``sentiment_predictions`` (counter, by ``label``): the label mix;
- ``sentiment_confidence`` (histogram): the predicted label's probability;
- ``sentiment_tokens_per_text``, ``sentiment_windows_per_text`` (histograms) and
  ``sentiment_truncated`` (counter): what texts cost and how many were cut;
- ``sentiment_batch_texts``, ``sentiment_batch_tokens`` (histograms): texts and tokens (of the
  windows scored, before padding) per forward pass;
- ``sentiment_queue_seconds`` (histogram): how long a text waited for its batch to start;
- ``sentiment_model_seconds`` (histogram): how long each batch took in the model.

The ingress replicas (:class:`IngressMetrics`):

- ``sentiment_explained`` (counter): texts answered with key tokens;
- ``sentiment_errors`` (counter, by ``status`` and ``api``: v1, tei, v2 or other): answers with an
  HTTP status of 400 or more, including the refusals made before a body is read.

Serve's own request metrics (``ray_serve_num_http_requests_total``, latency histograms, by route
and status) sit beside these: from Ray's proxy actors, or in HAProxy mode from the HAProxy manager,
which reads HAProxy's per-request log lines. ``configs/grafana-dashboard.json`` charts both.

Ray exports a histogram's ``_sum`` from its buckets' midpoints, not the values observed: quantiles
(``histogram_quantile`` over ``_bucket``) and ``_count`` are sound, ``_sum / _count`` averages only roughly.
"""

from __future__ import annotations

from ray.serve import metrics

from sentiment.predict import Prediction

CONFIDENCE = [0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99]
TOKENS = [16, 32, 64, 128, 256, 512, 1024, 2048, 4096]
WINDOWS = [1, 2, 3, 4, 6, 8, 16, 32]
BATCH = [1, 2, 4, 8, 16, 32, 64, 128]
BATCH_TOKENS = [64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384]
SECONDS = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5]
APIS = {"/v1": "v1", "/predict": "tei", "/info": "tei", "/health": "tei", "/v2": "v2"}


class ModelMetrics:
    """The model replica's metrics; one instance per replica."""

    def __init__(self) -> None:
        self.predictions = metrics.Counter("sentiment_predictions", "Texts predicted, by label.", tag_keys=("label",))
        self.confidence = metrics.Histogram("sentiment_confidence", "Probability of the predicted label.", CONFIDENCE)
        self.tokens = metrics.Histogram("sentiment_tokens_per_text", "Tokens of each text (whole length).", TOKENS)
        self.windows = metrics.Histogram("sentiment_windows_per_text", "Windows scored per text.", WINDOWS)
        self.truncated = metrics.Counter("sentiment_truncated", "Texts of which part was not scored.")
        self.batch = metrics.Histogram("sentiment_batch_texts", "Texts per forward pass.", BATCH)
        self.batch_tokens = metrics.Histogram("sentiment_batch_tokens", "Tokens scored per forward pass (before padding).",
                                              BATCH_TOKENS)
        self.queue = metrics.Histogram("sentiment_queue_seconds", "Seconds a text waited for its batch.", SECONDS)
        self.model = metrics.Histogram("sentiment_model_seconds", "Seconds each batch took in the model.", SECONDS)

    def record(self, predictions: list[Prediction], waits_s: list[float], tokens: int, seconds: float) -> None:
        """One batch: its predictions, each text's wait for it, its tokens and its time in the model."""
        self.batch.observe(len(predictions))
        self.batch_tokens.observe(tokens)
        self.model.observe(seconds)
        for prediction, wait in zip(predictions, waits_s):
            self.predictions.inc(tags={"label": prediction.label})
            self.confidence.observe(prediction.score)
            self.tokens.observe(prediction.num_tokens)
            self.windows.observe(prediction.windows)
            if prediction.truncated:
                self.truncated.inc()
            self.queue.observe(wait)


class IngressMetrics:
    """The ingress replica's metrics; one instance per replica."""

    def __init__(self) -> None:
        self.explained = metrics.Counter("sentiment_explained", "Texts answered with key tokens.")
        self.errors = metrics.Counter("sentiment_errors", "Answers with status >= 400, by status and API.",
                                      tag_keys=("status", "api"))

    def record_status(self, status: int, path: str) -> None:
        """One answer's HTTP ``status`` to a request for ``path`` (counted when it is an error)."""
        if status >= 400:
            self.errors.inc(tags={"status": str(status), "api": api_of(path)})


def api_of(path: str) -> str:
    """Which API a request path belongs to: ``v1``, ``tei``, ``v2`` or ``other`` (a bounded tag)."""
    return next((name for prefix, name in APIS.items() if path == prefix or path.startswith(prefix + "/")), "other")
