"""``precision: auto``: bf16 exactly where the device multiplies it natively, one answer per run."""

from pathlib import Path

import pytest
import torch

from sentiment import precision
from sentiment.precision import agreed_precision, auto_precision, autocast_dtype, cpu_has_fast_bf16


def _cpu_flags() -> set[str]:
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        pytest.skip("no /proc/cpuinfo to check torch's CPU probe against")
    line = next(line for line in cpuinfo.read_text().splitlines() if line.startswith("flags"))
    return set(line.split(":", 1)[1].split())


def test_the_cpu_probe_agrees_with_the_kernels_flags():
    flags = _cpu_flags()
    assert cpu_has_fast_bf16() == bool({"avx512_bf16", "amx_bf16"} & flags)


@pytest.mark.parametrize("avx512_bf16, amx, expected", [(False, False, "fp32"), (True, False, "bf16"), (False, True, "bf16")])
def test_auto_on_a_cpu_follows_its_bf16_hardware(monkeypatch, avx512_bf16, amx, expected):
    monkeypatch.setattr(precision.torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(precision.torch.cpu, "_is_amx_tile_supported", lambda: amx)
    assert auto_precision(torch.device("cpu")) == expected


def test_auto_on_a_gpu_asks_cuda(monkeypatch):
    monkeypatch.setattr(precision.torch.cuda, "is_bf16_supported", lambda: False)
    assert auto_precision(torch.device("cuda")) == "fp32"  # a GPU without bf16 runs fp32, never fp16
    monkeypatch.setattr(precision.torch.cuda, "is_bf16_supported", lambda: True)
    assert auto_precision(torch.device("cuda")) == "bf16"


def test_a_mixed_cluster_agrees_on_fp32():
    assert agreed_precision(["bf16", "bf16"]) == "bf16"
    assert agreed_precision(["fp32", "fp32"]) == "fp32"
    assert agreed_precision(["bf16", "fp32", "bf16"]) == "fp32"


def test_autocast_dtypes():
    assert autocast_dtype("fp32") is None
    assert autocast_dtype("bf16") is torch.bfloat16 and autocast_dtype("fp16") is torch.float16
    with pytest.raises(ValueError, match="resolved"):
        autocast_dtype("auto")


@pytest.mark.parametrize("trained, device, native, gradients, expected", [
    ("bf16", "cpu", True, False, torch.bfloat16),  # trained and scored in bf16, the CPU runs it
    ("bf16", "cpu", False, False, torch.float32),  # emulated bf16 is slower than fp32
    ("fp32", "cpu", True, False, torch.float32),  # an fp32 run is served as it was scored
    ("bf16", "cpu", True, True, torch.float32),  # attributions' gradients in fp32 on a CPU
    ("fp32", "cuda", True, False, torch.bfloat16),  # a GPU with bf16 runs it, whatever the training
    ("fp32", "cuda", True, True, torch.bfloat16),
    ("bf16", "cuda", False, False, torch.float32),  # a GPU without bf16: fp32
])
def test_one_inference_dtype_for_scores_predictor_serve_and_batch(monkeypatch, trained, device, native, gradients, expected):
    monkeypatch.setattr(precision.torch.cpu, "_is_avx512_bf16_supported", lambda: native)
    monkeypatch.setattr(precision.torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(precision.torch.cuda, "is_bf16_supported", lambda: native)
    assert precision.inference_dtype(trained, device, gradients=gradients) is expected
