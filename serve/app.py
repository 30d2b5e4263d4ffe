"""The Serve application: a FastAPI ingress bound to the model deployment, built from typed args.

    serve run serve.app:build_app checkpoint=~/sentiment-runs/<run> [key=value ...]
    serve run configs/serve.yaml          (or serve deploy configs/serve.yaml on a running cluster)

``build_app`` validates its args as :class:`~serve.schemas.ServeArgs` and resolves the checkpoint
once (:func:`sentiment.layout.resolve`) before anything is deployed, so a typo or a missing,
incomplete or corrupt checkpoint fails at once with a message. The replicas get the resolved
record and never resolve or hash again. The HTTP routes live in ``serve.http``, the schemas in
``serve.schemas``, the model replica in ``serve.deployment``.
"""

# No ``from __future__ import annotations`` here: Serve reads build_app's annotation as a class to
# validate the args dict into ServeArgs.
import asyncio
import os
from typing import Any

from fastapi import FastAPI, HTTPException
from pydantic import SecretStr
from ray import serve
from ray.exceptions import RayActorError
from ray.serve import Application
from ray.serve.handle import DeploymentHandle

from ray_jobs.tracking import record_served_model
from serve.deployment import SentimentModel
from serve.http import make_api
from serve.schemas import API_KEY_ENV, ServeArgs
from sentiment import layout
from sentiment.backends import choose_backend
from sentiment.predict import ExplainUnavailable, Prediction


@serve.deployment
@serve.ingress()
class SentimentAPI:
    """HTTP ingress: validates requests and fans their texts out to the model deployment."""

    def __init__(self, model: DeploymentHandle, args: ServeArgs, backend: str) -> None:
        self.model = model
        self.args = args
        self.backend = backend
        self.explains = backend == "torch"

    async def predict(self, texts: list[str], explain: bool = False) -> list[Prediction]:
        """One model call per text, which the model replicas batch across requests; or, to
        explain, one unbatched call for all the texts (bounded by ``explain_max_texts``).

        Raises:
            ExplainUnavailable: ``explain`` on a deployment whose backend gives no gradients.
        """
        if not explain:
            return list(await asyncio.gather(*(self._call("predict", t) for t in texts)))
        if not self.explains:
            raise ExplainUnavailable(f"explain needs gradients, which backend {self.backend!r} cannot give: "
                                     "deploy with backend=torch")
        return await self._call("explain", texts, self.args.explain_top_k, self.args.explain_steps)

    async def _call(self, method: str, *args: Any) -> Any:
        """Call the model deployment, once more on another replica if the first one died mid-request.

        A prediction has no side effects, so repeating it is safe. Serve's router drops the dead
        replica when the first call fails, so the retry goes to a live one; if that fails too, the
        client gets 503 with ``Retry-After`` rather than a 500.
        """
        try:
            return await getattr(self.model, method).remote(*args)
        except RayActorError:
            try:
                return await getattr(self.model, method).remote(*args)
            except RayActorError:
                raise HTTPException(503, "model replica unavailable; retry shortly", headers={"Retry-After": "1"}) from None

    async def info(self) -> dict[str, Any]:
        """The model deployment's lineage record."""
        return await self.model.info.remote()

    def __serve_build_asgi_app__(self) -> FastAPI:
        return make_api(self, self.args)


def build_app(args: ServeArgs) -> Application:
    """Build the Serve application: ingress bound to the model deployment.

    Args:
        args: a :class:`ServeArgs` or a dict of its fields (``serve run`` passes strings; they are
            converted). Without ``api_key``, ``$SENTIMENT_API_KEY`` is used when set.

    Returns:
        The application for ``serve.run`` / ``serve run`` / ``serve deploy``.

    Raises:
        pydantic.ValidationError: unknown or invalid args.
        CheckpointError: missing, incomplete or corrupt checkpoint, or a backend it has no verified export for.
        ValueError: ``max_batch_tokens`` below the checkpoint's ``max_seq_length``.
    """
    args = ServeArgs.model_validate(args)
    if args.api_key is None and os.environ.get(API_KEY_ENV):
        args = args.model_copy(update={"api_key": SecretStr(os.environ[API_KEY_ENV])})
    model = layout.resolve(args.checkpoint, args.which, args.storage_path)
    backend = choose_backend(args.backend, model, "cuda" if args.num_gpus > 0 else "cpu")  # a missing export fails here
    if args.max_batch_tokens < model.config.data.max_seq_length:
        raise ValueError(f"max_batch_tokens={args.max_batch_tokens} is below the checkpoint's max_seq_length "
                         f"({model.config.data.max_seq_length}): one long review would never fit a batch")
    record_served_model(model, args.wandb_mode, args.wandb_project, args.wandb_dir)
    replicas = SentimentModel.options(
        ray_actor_options={"num_cpus": args.num_cpus, "num_gpus": args.num_gpus},
        max_ongoing_requests=args.max_ongoing_requests,
        autoscaling_config=args.autoscaling_config(),
        user_config={"max_batch_size": args.max_batch_size, "max_batch_tokens": args.max_batch_tokens,
                     "batch_wait_timeout_s": args.batch_wait_timeout_s},
    ).bind(model, args.num_gpus > 0, args.backend, args.long_reviews)
    ingress = SentimentAPI.options(
        num_replicas=args.ingress_replicas,
        ray_actor_options={"num_cpus": 0},
        max_ongoing_requests=args.max_ongoing_requests * args.max_replicas,
    )
    return ingress.bind(replicas, args, backend)
