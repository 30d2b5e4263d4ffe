"""The core package imports no engine (Ray, DeepSpeed and W&B blocked, the core still imports), and
no optional heavy library (Captum, ONNX Runtime) until a function that needs it runs."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CORE = sorted(p.stem for p in (ROOT / "sentiment").glob("*.py") if p.stem != "__init__")

PROBE = """
import sys
for name in {blocked!r}:
    sys.modules[name] = None  # any import of them now raises ImportError
import importlib
for mod in {mods!r}:
    importlib.import_module("sentiment." + mod)
print("ok", len({mods!r}))
"""


def imports_with_blocked(blocked: tuple[str, ...]) -> subprocess.CompletedProcess[str]:
    """Import every core module in a fresh interpreter where importing any of ``blocked`` fails."""
    probe = PROBE.format(mods=CORE, blocked=blocked)
    return subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True)


def test_core_imports_without_ray_deepspeed_or_wandb():
    assert {"config", "data", "model", "metrics", "layout", "predict", "batching"} <= set(CORE)
    out = imports_with_blocked(("ray", "deepspeed", "wandb"))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"ok {len(CORE)}"


def test_captum_and_onnxruntime_are_imported_only_where_used():
    assert {"attribution", "report", "backends", "export"} <= set(CORE)
    out = imports_with_blocked(("captum", "onnxruntime"))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"ok {len(CORE)}"

