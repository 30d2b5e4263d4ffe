"""Weights & Biases on rank 0 only; offline without a key, never a prompt or a hang."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sentiment.config import Config
from sentiment.layout import ResolvedModel


def resolve_mode(mode: str) -> str:
    """``auto`` -> ``online`` when ``WANDB_API_KEY`` is set, else ``offline``; others unchanged."""
    if mode != "auto":
        return mode
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"


def run_id(name: str) -> str:
    """A W&B run id derived from the run name, so a restarted worker group resumes the same run."""
    return re.sub(r"[^A-Za-z0-9_-]", "-", name)[:64]


class Tracker:
    """A thin handle on one W&B run; every method is a no-op when tracking is off."""

    def __init__(self, run: Any = None) -> None:
        self.run = run

    @property
    def enabled(self) -> bool:
        """Whether a W&B run is open."""
        return self.run is not None

    def log(self, data: dict[str, Any], step: int | None = None) -> None:
        """Log scalars (or W&B objects) at a step."""
        if self.run is not None:
            self.run.log(data, step=step)

    def summary(self, data: dict[str, Any]) -> None:
        """Set final values shown on the run's overview."""
        if self.run is not None:
            self.run.summary.update(data)

    def log_model(self, model_dir: str, name: str, aliases: list[str], metadata: dict[str, Any]) -> None:
        """Upload a model folder as a ``model`` artifact with aliases (e.g. ``best``)."""
        if self.run is None:
            return
        import wandb

        artifact = wandb.Artifact(name=name, type="model", metadata=metadata)
        artifact.add_dir(model_dir)
        self.run.log_artifact(artifact, aliases=aliases)

    def finish(self) -> None:
        """Close the run (flushes offline files)."""
        if self.run is not None:
            self.run.finish()
            self.run = None


def start_tracking(cfg: Config, name: str, directory: str, job_type: str = "train") -> Tracker:
    """Open the W&B run for ``name`` (call on rank 0 only).

    The run id is derived from ``name`` and resumed if it exists, so a worker-group restart
    continues the same run (or, when a shared service still holds the run of a killed worker, a
    new run of the same name). The logged config is the resolved project config.
    """
    mode = resolve_mode(cfg.tracking.mode)
    if mode == "disabled":
        return Tracker()
    import wandb

    os.makedirs(directory, exist_ok=True)
    args = dict(
        project=cfg.tracking.project, entity=cfg.tracking.entity, group=cfg.tracking.group, name=name,
        resume="allow", job_type=job_type, mode=mode, dir=directory, config=cfg.model_dump(mode="json"),
        settings=wandb.Settings(silent=True, console="off"),
    )
    try:
        return Tracker(wandb.init(id=run_id(name), **args))
    except Exception as err:
        if "is in use" not in str(err):
            raise
    # A shared W&B service (a sweep's) still holds this run for a worker that was killed: the
    # restarted worker group records into a new run of the same name instead of failing.
    print(f"W&B run {run_id(name)} is still held by a killed worker's service; continuing in a new run", flush=True)
    return Tracker(wandb.init(id=f"{run_id(name)[:50]}-{int(time.time())}", **args))


def record_served_model(model: ResolvedModel, mode: str, project: str, directory: str | None) -> None:
    """Log a small W&B run (job type ``serve``) recording the served model as an artifact.

    The artifact references the model folder (no upload), is named by the weights' sha256 and
    carries the alias ``production``, so W&B's registry shows which weights are served. (W&B
    refuses ``use_artifact`` offline, so the run logs the reference, which works in both modes.)
    ``mode`` means what it means for training (:func:`resolve_mode`): ``auto`` is online with
    ``WANDB_API_KEY`` and offline without; ``disabled`` logs nothing.
    """
    mode = resolve_mode(mode)
    if mode == "disabled":
        return
    import wandb

    digest = model.sha256
    uri = model.location if model.is_remote else Path(model.location).as_uri()
    run = wandb.init(
        project=project, job_type="serve", mode=mode, dir=directory, name=f"serve-{digest[:12]}",
        config={"checkpoint": model.reference, "path": model.location, "sha256": digest},
        settings=wandb.Settings(silent=True, console="off"),
    )
    artifact = wandb.Artifact(f"served-model-{digest[:12]}", type="model", metadata={"sha256": digest, "path": model.location})
    artifact.add_reference(uri, checksum=False)
    run.log_artifact(artifact, aliases=["production"])
    run.finish()


@contextmanager
def shared_service(cfg: Config) -> Iterator[dict[str, str]]:
    """A detached ``wandb-core`` for runs whose process may be killed (trials ASHA stops).

    A W&B run buffers in the ``wandb-core`` process its SDK starts, and that process dies with
    the run's process, losing what it had not written. Runs that connect to a detached service
    (``WANDB_SERVICE``) keep everything: the service writes it when it is stopped here.

    Yields:
        The environment variables that connect a process to the service (empty when off).
    """
    if resolve_mode(cfg.tracking.mode) == "disabled":
        yield {}
        return
    cli = str(Path(sys.executable).with_name("wandb"))
    # A process that already ran wandb.init has its own (attached) service in WANDB_SERVICE;
    # the CLI refuses to start another while that is set.
    own_env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}
    started = subprocess.run([cli, "beta", "core", "start"], env=own_env, capture_output=True, text=True, check=True)
    token = started.stdout.split()[0]
    try:
        yield {"WANDB_SERVICE": token}
    finally:
        subprocess.run([cli, "beta", "core", "stop"], env={**os.environ, "WANDB_SERVICE": token}, capture_output=True)
        _wait_gone(Path(token.partition("-unix-")[2]))


def _wait_gone(socket: Path, timeout_s: float = 30.0) -> None:
    """Wait (bounded) until the service has closed its socket, i.e. written its runs."""
    deadline = time.monotonic() + timeout_s
    while socket.name and socket.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
