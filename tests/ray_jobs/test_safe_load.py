"""ray_jobs.safe_load: DeepSpeed state files are read as data only; a pickle that would run code is
refused before it runs. (Resuming real ZeRO checkpoints through it: tests/system/test_faults.py.)"""

from __future__ import annotations

import os
import pickle

import pytest
import torch
from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler
from deepspeed.runtime.zero.config import ZeroStageEnum

from ray_jobs.safe_load import WeightsOnlyCheckpointEngine, use_weights_only_loads


class RunsCode:
    """What a hostile shard would hold: unpickling it calls a function of the writer's choosing."""

    def __reduce__(self):
        return (os.system, ("touch hacked",))


def test_deepspeed_state_loads_and_a_pickle_that_runs_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    scaler = DynamicLossScaler(init_scale=8, scale_window=100, min_scale=1, delayed_shift=1, consecutive_hysteresis=False)
    state = {"module": {"w": torch.ones(2)}, "loss_scaler": scaler, "stage": ZeroStageEnum.gradients}
    torch.save(state, tmp_path / "good.pt")
    torch.save({"module": {"w": torch.ones(2)}, "extra": RunsCode()}, tmp_path / "bad.pt")
    engine = WeightsOnlyCheckpointEngine()
    loaded = engine.load(str(tmp_path / "good.pt"), map_location="cpu")
    assert torch.equal(loaded["module"]["w"], torch.ones(2)) and loaded["loss_scaler"].cur_scale == 8
    assert loaded["stage"] is ZeroStageEnum.gradients
    with pytest.raises(pickle.UnpicklingError, match="system"):
        engine.load(str(tmp_path / "bad.pt"), map_location="cpu")
    assert not (tmp_path / "hacked").exists()
    assert torch.load(tmp_path / "bad.pt", weights_only=False) and (tmp_path / "hacked").exists()  # what it refused


def test_an_engine_is_switched_to_weights_only_loads():
    class Engine:
        _config = None
        checkpoint_engine = object()

    engine = Engine()
    use_weights_only_loads(engine)
    assert isinstance(engine.checkpoint_engine, WeightsOnlyCheckpointEngine)
