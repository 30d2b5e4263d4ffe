"""DeepSpeed checkpoints loaded with ``torch.load(weights_only=True)``.

DeepSpeed's own checkpoint engine unpickles optimizer and model state with ``weights_only=False``:
a shard written by anyone who can write the storage path would run code on every worker that
resumes from it. This engine restricts unpickling to tensors, containers and the few DeepSpeed
classes its state holds. Import it only after ``deepspeed`` (it subclasses DeepSpeed's engine).
"""

from __future__ import annotations

from typing import Any

import torch
from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine
from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
from deepspeed.runtime.zero.config import ZeroStageEnum
from deepspeed.utils.tensor_fragment import fragment_address

# What DeepSpeed 0.19 puts in its state besides tensors and builtins (found by loading real
# ZeRO-0/2 checkpoints with weights_only=True): plain data classes, no code.
SAFE_GLOBALS = [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


class WeightsOnlyCheckpointEngine(TorchCheckpointEngine):
    """DeepSpeed's torch checkpoint engine with ``weights_only=True`` loads."""

    def load(self, path: str, map_location: Any = None) -> Any:
        """Load one state file; raises ``pickle.UnpicklingError`` on anything but data."""
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location=map_location, weights_only=True)


def use_weights_only_loads(engine: Any) -> None:
    """Make ``engine.load_checkpoint`` read every state file through :class:`WeightsOnlyCheckpointEngine`."""
    engine.checkpoint_engine = WeightsOnlyCheckpointEngine(engine._config)
