"""What the model replicas tell Prometheus about the model's own work (Ray's metrics pipeline).

Each replica records, through ``ray.serve.metrics`` (exported by every node's Ray metrics agent in
Prometheus's format, tagged with the deployment and replica, under Ray's ``ray_`` prefix):

- ``sentiment_predictions`` (counter, by ``label``): the label mix;
- ``sentiment_confidence`` (histogram): the predicted label's probability;
- ``sentiment_tokens_per_text``, ``sentiment_windows_per_text`` (histograms) and
  ``sentiment_truncated`` (counter): what texts cost and how many were cut;
- ``sentiment_batch_texts`` (histogram): texts per forward pass;
- ``sentiment_queue_seconds`` (histogram): how long a text waited for its batch to start.

``configs/grafana-dashboard.json`` charts them.
"""

from __future__ import annotations

from ray.serve import metrics

from sentiment.predict import Prediction

CONFIDENCE = [0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99]
TOKENS = [16, 32, 64, 128, 256, 512, 1024, 2048, 4096]
WINDOWS = [1, 2, 3, 4, 6, 8, 16, 32]
BATCH = [1, 2, 4, 8, 16, 32, 64, 128]
QUEUE_S = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5]


class ModelMetrics:
    """The model replica's metrics; one instance per replica."""

    def __init__(self) -> None:
        self.predictions = metrics.Counter("sentiment_predictions", "Texts predicted, by label.", tag_keys=("label",))
        self.confidence = metrics.Histogram("sentiment_confidence", "Probability of the predicted label.", CONFIDENCE)
        self.tokens = metrics.Histogram("sentiment_tokens_per_text", "Tokens of each text (whole length).", TOKENS)
        self.windows = metrics.Histogram("sentiment_windows_per_text", "Windows scored per text.", WINDOWS)
        self.truncated = metrics.Counter("sentiment_truncated", "Texts of which part was not scored.")
        self.batch = metrics.Histogram("sentiment_batch_texts", "Texts per forward pass.", BATCH)
        self.queue = metrics.Histogram("sentiment_queue_seconds", "Seconds a text waited for its batch.", QUEUE_S)

    def record(self, predictions: list[Prediction], waits_s: list[float]) -> None:
        """One batch: its predictions and how long each of its texts waited."""
        self.batch.observe(len(predictions))
        for prediction, wait in zip(predictions, waits_s):
            self.predictions.inc(tags={"label": prediction.label})
            self.confidence.observe(prediction.score)
            self.tokens.observe(prediction.num_tokens)
            self.windows.observe(prediction.windows)
            if prediction.truncated:
                self.truncated.inc()
            self.queue.observe(wait)
