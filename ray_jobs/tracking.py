"""Weights & Biases on rank 0 only; offline without a key, never a prompt or a hang."""

from __future__ import annotations

import os
import re
from typing import Any

from sentiment.config import Config


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
    continues the same run. The logged config is the resolved project config.
    """
    mode = resolve_mode(cfg.tracking.mode)
    if mode == "disabled":
        return Tracker()
    import wandb

    os.makedirs(directory, exist_ok=True)
    run = wandb.init(
        project=cfg.tracking.project,
        entity=cfg.tracking.entity,
        group=cfg.tracking.group,
        name=name,
        id=run_id(name),
        resume="allow",
        job_type=job_type,
        mode=mode,
        dir=directory,
        config=cfg.model_dump(mode="json"),
        settings=wandb.Settings(silent=True, console="off"),
    )
    return Tracker(run)
