"""The Serve application: a FastAPI ingress bound to the model and explainer deployments, built from typed args.

    serve run serve.app:build_app checkpoint=~/sentiment-runs/<run> [key=value ...]
    serve run configs/serve.yaml          (or serve deploy configs/serve.yaml on a running cluster)

``build_app`` validates its args as :class:`~serve.schemas.ServeArgs` and resolves the checkpoint
once (:func:`sentiment.layout.resolve`) before anything is deployed, so a typo or a missing,
incomplete or corrupt checkpoint fails at once with a message. The replicas get the resolved
record and never resolve again (each re-hashes the files it loads against it). The HTTP routes
live in ``serve.http``, the schemas in ``serve.schemas``, load shedding in ``serve.admission``, the
model and explainer replicas in ``serve.deployment``.
"""

# No ``from __future__ import annotations`` here: Serve reads build_app's annotation as a class to
# validate the args dict into ServeArgs.
import asyncio
import contextlib
import os
from collections.abc import Iterator
from typing import Any

from fastapi import FastAPI
from ray import serve
from ray.exceptions import RayActorError
from ray.serve import Application
from ray.serve.config import BackpressureConfig
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle

from ray_jobs.tracking import record_served_model
from sentiment import layout
from sentiment.backends import choose_backend
from sentiment.layout import ResolvedModel
from sentiment.predict import Encoded, ExplainUnavailable, Prediction, TextEncoder
from serve.admission import Admission, Overloaded, RequestTooCostly
from serve.deployment import SentimentExplainer, SentimentModel
from serve.http import make_api
from serve.metrics import IngressMetrics
from serve.schemas import ServeArgs

EXPLAIN_THREADS = 1  # an explainer takes at most one core from the predictions
# What Serve's own router answers past the ingress's max_queued_requests (under Ray's HTTP proxy: a Ray
# the project did not start, KubeRay): the ingress's 503 with the Retry-After every other refusal carries,
# so that well-behaved clients back off instead of resending at once.
ROUTER_REFUSAL = BackpressureConfig(status_code=503, retry_after_s=1)


@serve.deployment
@serve.ingress()
class SentimentAPI:
    """HTTP ingress: checks requests, encodes their texts once, admits them within the endpoint's
    budgets and fans the texts out to the model deployment (explained ones also to the explainer).

    Args:
        model: the model deployment.
        explainer: the explainer deployment, or None when explain is off.
        args: the deployment's arguments (no secrets: the key is read here, on this node).
        resolved: the checkpoint, resolved once by :func:`build_app` (its tokenizer is loaded here).
        require_key: whether the deployment was built with a key (missing here is then an error).
    """

    def __init__(self, model: DeploymentHandle, explainer: DeploymentHandle | None, args: ServeArgs,
                 resolved: ResolvedModel, require_key: bool) -> None:
        self.model, self.explainer, self.args = model, explainer, args
        self.explains = explainer is not None
        self.key = args.read_api_key(require_key)
        self.encoder = TextEncoder.load(resolved, args.long_reviews)
        self.label_names = list(resolved.config.model.label_names)
        self.admission = Admission(args.max_queue_wait_s, min_windows=args.max_ongoing_requests,  # one replica's fill
                                   max_texts=args.max_ongoing_requests * args.max_replicas)
        self.explaining = 0  # explained requests in this ingress, from their predictions to their key tokens
        self.metrics = IngressMetrics()

    async def predict(self, texts: list[str], explain: bool = False) -> list[Prediction]:
        """One model call per text, which the model replicas batch across requests; explained
        requests then get their key tokens from the explainer, toward the labels predicted.

        Raises:
            RequestTooCostly: more windows than ``max_request_windows`` (or ``explain_max_windows``).
            Overloaded: over the load budget, a queue full, or no answer within ``request_timeout_s``.
            ExplainUnavailable: ``explain`` on a deployment whose explainer is off.
        """
        if explain and not self.explains:
            raise ExplainUnavailable("explain is off on this deployment (explain_max_texts=0)")
        encoded = self.encoder.encode(texts)
        self.check_cost(len(encoded.windows), explain)
        with self.explain_slot() if explain else contextlib.nullcontext():
            try:
                async with asyncio.timeout(self.args.request_timeout_s):
                    with self.admission.admitted(len(encoded.windows), len(texts)):
                        predictions = list(await asyncio.gather(*(self._call("predict", t) for t in encoded.split())))
                    if explain:
                        await self._explain(encoded, predictions)
                        self.metrics.explained.inc(len(predictions))
            except TimeoutError:
                raise Overloaded(f"not answered within request_timeout_s={self.args.request_timeout_s:g} s") from None
        return predictions

    def overloaded(self) -> Overloaded | None:
        """Why any prediction would be refused now (the load budget is spent), or None."""
        return self.admission.refusal()

    def budget(self) -> int:
        """Predictions this ingress admits in flight now (:meth:`serve.admission.Admission.requests`)."""
        return self.admission.requests()

    @contextlib.contextmanager
    def explain_slot(self) -> Iterator[None]:
        """Hold one of this ingress's places for explained requests (as many as the explainers run and
        queue), refusing at once when none is free: a refused explanation costs no prediction either."""
        if self.explaining >= self.args.explain_replicas + self.args.explain_queue:
            raise Overloaded("explain queue full (explain_queue); retry shortly, or ask without explain")
        self.explaining += 1
        try:
            yield
        finally:
            self.explaining -= 1

    def check_cost(self, windows: int, explain: bool) -> None:
        """Refuse a request over a per-request cost cap, naming it."""
        cap, name = ((self.args.explain_max_windows, "explain_max_windows") if explain
                     else (self.args.max_request_windows, "max_request_windows"))
        if windows > cap:
            raise RequestTooCostly(f"the texts make {windows} windows of {self.encoder.data.max_seq_length} tokens, "
                                   f"over {name}={cap} per request; send fewer or shorter texts")

    async def _explain(self, encoded: Encoded, predictions: list[Prediction]) -> None:
        """Add each prediction's key tokens toward its label (the explainer's own queue bounds these)."""
        targets = [self.label_names.index(p.label) for p in predictions]
        try:
            tokens = await self.explainer.explain.remote(encoded, targets, self.args.explain_top_k, self.args.explain_steps)
        except BackPressureError:
            raise Overloaded("explain queue full (explain_queue); retry shortly, or ask without explain") from None
        for prediction, words in zip(predictions, tokens):
            prediction.key_tokens = words

    async def _call(self, method: str, *args: Any) -> Any:
        """Call the model deployment, once more on another replica if the first one died mid-request.

        A prediction has no side effects, so repeating it is safe. Serve's router drops the dead
        replica when the first call fails, so the retry goes to a live one; if that fails too, or
        the replicas' queue is full (``max_queued_requests``), the client gets 503 with
        ``Retry-After`` rather than a 500 or a long wait.
        """
        try:
            try:
                return await getattr(self.model, method).remote(*args)
            except RayActorError:
                return await getattr(self.model, method).remote(*args)
        except RayActorError:
            raise Overloaded("model replica unavailable; retry shortly") from None
        except BackPressureError:
            raise Overloaded("model replicas' queue full (max_queued_requests); retry shortly") from None

    async def info(self) -> dict[str, Any]:
        """The model deployment's lineage record."""
        return await self.model.info.remote()

    def __serve_build_asgi_app__(self) -> FastAPI:
        behind_haproxy = bool(os.environ.get("SENTIMENT_HAPROXY_BINARY"))  # the project's wrapper reads the budget
        return make_api(self, self.args, self.key, self.metrics.record_status, self.budget if behind_haproxy else None)


def build_app(args: ServeArgs) -> Application:
    """Build the Serve application: ingress bound to the model deployment.

    Args:
        args: a :class:`ServeArgs` or a dict of its fields (``serve run`` passes strings; they are
            converted). The API key comes from ``api_key_file`` or ``$SENTIMENT_API_KEY``, read here
            to check it and again by each ingress replica on its node: it is never an argument, so it
            never reaches Ray's object store or GCS.

    Returns:
        The application for ``serve.run`` / ``serve run`` / ``serve deploy``.

    Raises:
        pydantic.ValidationError: unknown or invalid args (``api_key`` among them).
        ValueError: an empty key, or an ``api_key_file`` that cannot be read.
        CheckpointError: missing, incomplete or corrupt checkpoint, or a backend it has no verified export for.
        ValueError: ``max_batch_tokens`` below the checkpoint's ``max_seq_length``.
    """
    args = ServeArgs.model_validate(args)
    require_key = args.read_api_key(required=False) is not None
    model = layout.resolve(args.checkpoint, args.which, args.storage_path)
    choose_backend(args.backend, model, "cuda" if args.num_gpus > 0 else "cpu")  # a missing export fails here
    if args.max_batch_tokens < model.config.data.max_seq_length:
        raise ValueError(f"max_batch_tokens={args.max_batch_tokens} is below the checkpoint's max_seq_length "
                         f"({model.config.data.max_seq_length}): one long review would never fit a batch")
    record_served_model(model, args.wandb_mode, args.wandb_project, args.wandb_dir)
    replicas = SentimentModel.options(
        ray_actor_options={"num_cpus": args.num_cpus, "num_gpus": args.num_gpus},
        max_ongoing_requests=args.max_ongoing_requests,
        max_queued_requests=args.max_queued_requests,
        autoscaling_config=args.autoscaling_config(),
        user_config={"max_batch_size": args.max_batch_size, "max_batch_tokens": args.max_batch_tokens,
                     "batch_wait_timeout_s": args.batch_wait_timeout_s},
    ).bind(model, args.num_gpus > 0, args.backend, args.long_reviews)
    explainer = SentimentExplainer.options(
        num_replicas=args.explain_replicas,
        ray_actor_options={"num_cpus": 0},
        max_ongoing_requests=1,
        max_queued_requests=args.explain_queue,
    ).bind(model, EXPLAIN_THREADS) if args.explain_max_texts else None
    ingress = SentimentAPI.options(  # requests reach its code at once, where Admission sheds them by time
        num_replicas=args.ingress_replicas,
        ray_actor_options={"num_cpus": 0},
        max_ongoing_requests=args.max_ongoing_requests * args.max_replicas + args.max_queued_requests,
        max_queued_requests=args.max_queued_requests,
        backpressure_config=ROUTER_REFUSAL,
    )
    return ingress.bind(replicas, explainer, args, model, require_key)
