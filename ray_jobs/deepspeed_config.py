"""Our config -> a DeepSpeed config dict (pure: no DeepSpeed import, unit-tested)."""

from __future__ import annotations

from typing import Any

from sentiment.config import Config, deep_merge

# DeepSpeed prints its own progress every N steps; ours replaces it.
_QUIET_STEPS = 10**9


def build_deepspeed_config(cfg: Config, world_size: int) -> dict[str, Any]:
    """The DeepSpeed JSON for this run.

    Precision (``auto`` already resolved on the workers): ``fp32`` adds nothing; ``bf16`` is torch
    autocast over fp32 weights by default (``deepspeed.precision_mode=autocast``, faster than
    DeepSpeed's native bf16 and the weights stay fp32) or native ``bf16.enabled``; ``fp16`` is DeepSpeed's native fp16 with dynamic loss
    scaling. The optimizer and scheduler are not configured here: the training loop passes torch
    objects in (a DeepSpeed-defined optimizer JIT-compiles fused Adam). ``deepspeed.overrides``
    is merged in last.

    Args:
        cfg: the project config.
        world_size: number of training workers.
    """
    t, ds = cfg.train, cfg.deepspeed
    if t.precision == "auto":
        raise ValueError("train.precision=auto is resolved on the workers (train_loop.resolve_precision) before this")
    zero: dict[str, Any] = {"stage": ds.zero_stage}
    if ds.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": cfg.scaling.use_gpu}
    if ds.offload_param:
        zero["offload_param"] = {"device": "cpu", "pin_memory": cfg.scaling.use_gpu}
    out: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": t.batch_size,
        "gradient_accumulation_steps": t.grad_accum_steps,
        "train_batch_size": t.batch_size * t.grad_accum_steps * world_size,
        "gradient_clipping": t.max_grad_norm,
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": _QUIET_STEPS,
        "wall_clock_breakdown": False,
    }
    if t.precision == "bf16" and ds.precision_mode == "autocast":
        out["torch_autocast"] = {"enabled": True, "dtype": "bfloat16"}
    elif t.precision == "bf16":
        out["bf16"] = {"enabled": True}
    elif t.precision == "fp16":
        out["fp16"] = {"enabled": True, "loss_scale": 0, "initial_scale_power": 16}
    return deep_merge(out, ds.overrides)
