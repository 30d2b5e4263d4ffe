import pytest

from ray_jobs.deepspeed_config import build_deepspeed_config
from sentiment.config import load_config


def _ds(*overrides, world=2):
    return build_deepspeed_config(load_config(None, list(overrides)), world)


def test_batch_arithmetic_and_clipping():
    ds = _ds("train.batch_size=16", "train.grad_accum_steps=4", "train.max_grad_norm=0.5", world=8)
    assert ds["train_micro_batch_size_per_gpu"] == 16 and ds["gradient_accumulation_steps"] == 4
    assert ds["train_batch_size"] == 16 * 4 * 8 and ds["gradient_clipping"] == 0.5
    assert "optimizer" not in ds and "scheduler" not in ds  # torch objects are passed in


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_zero_stage(stage):
    assert _ds(f"deepspeed.zero_stage={stage}")["zero_optimization"]["stage"] == stage


def test_precision_modes():
    assert not {"bf16", "fp16", "torch_autocast"} & set(_ds("train.precision=fp32"))
    assert _ds("train.precision=bf16")["torch_autocast"] == {"enabled": True, "dtype": "bfloat16"}
    assert _ds("train.precision=bf16", "deepspeed.precision_mode=native")["bf16"] == {"enabled": True}
    fp16 = _ds("train.precision=fp16", "scaling.use_gpu=true")
    assert fp16["fp16"]["enabled"] and fp16["fp16"]["loss_scale"] == 0


def test_offload_and_raw_overrides_merge():
    ds = _ds("deepspeed.zero_stage=3", "deepspeed.offload_param=true", "deepspeed.offload_optimizer=true",
             "deepspeed.overrides={zero_optimization: {overlap_comm: true}, steps_per_print: 5}")
    z = ds["zero_optimization"]
    assert z["stage"] == 3 and z["overlap_comm"] is True and z["offload_param"]["device"] == "cpu"
    assert z["offload_optimizer"]["device"] == "cpu" and ds["steps_per_print"] == 5


def test_auto_precision_must_be_resolved_on_the_workers_first():
    with pytest.raises(ValueError, match="resolved on the workers"):
        _ds("train.precision=auto")
