"""Which numeric precision a device runs fast: the one place ``precision: auto`` is decided.

bf16 pays on a CPU only where the hardware multiplies in bf16 (AVX-512 BF16, AMX): there the
quickstart trains and predicts faster at the same accuracy (bench/RESULTS.md, "bf16 on CPUs that
have it"). Elsewhere (AVX2 only, or AVX-512 without BF16) oneDNN emulates it, far slower than fp32,
so ``auto`` keeps fp32 there.
"""

from __future__ import annotations

from typing import Literal

import torch

Precision = Literal["fp32", "bf16", "fp16"]


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX-512 BF16 or AMX), by torch's own CPU probe."""
    probes = (getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
    return any(probe() for probe in probes if probe is not None)


def auto_precision(device: torch.device) -> Precision:
    """What ``precision: auto`` means on ``device``: bf16 where it is native (a CUDA GPU that
    supports it, a CPU with AVX-512 BF16 or AMX), else fp32 (fp16 needs loss scaling: asked for,
    never picked)."""
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if device.type == "cpu" and cpu_has_fast_bf16() else "fp32"


def agreed_precision(per_worker: list[Precision]) -> Precision:
    """One precision for all workers of a run from what ``auto`` picked on each: bf16 only if every
    worker picked it (a mixed cluster runs fp32 rather than a different numeric path per rank)."""
    return per_worker[0] if len(set(per_worker)) == 1 else "fp32"


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype for a resolved precision (None: fp32, autocast off)."""
    if precision == "auto":
        raise ValueError("precision 'auto' must be resolved for the device first (auto_precision)")
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)


def inference_dtype(trained: str, device: torch.device | str, *, gradients: bool = False) -> torch.dtype:
    """The weights' dtype a checkpoint predicts with on ``device``, for training's validation and
    test scores, ``Predictor``, the Serve replicas and batch inference alike.

    On a CUDA GPU that supports it, bf16 whatever the training precision (the GPU's tensor cores
    run it; not yet measured against fp32 on a GPU), else fp32. On a CPU, bf16 only if the
    checkpoint was trained in bf16 and the CPU runs bf16 natively, else fp32 (as accurate, and
    what a CPU without native bf16 runs fastest); ``gradients`` (attributions) keep fp32 on a CPU.
    Whole bf16 weights rather than autocast: autocast casts every weight again on every call,
    which made a single review 11.1 ms against 7.8 ms (2-core Xeon with AMX, bench/RESULTS.md)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16 if auto_precision(device) == "bf16" else torch.float32
    if trained == "bf16" and not gradients and auto_precision(device) == "bf16":
        return torch.bfloat16
    return torch.float32
