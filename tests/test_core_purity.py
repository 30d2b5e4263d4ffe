"""The core package imports no engine: Ray, DeepSpeed and W&B are blocked, the core still imports."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORE = sorted(p.stem for p in (ROOT / "sentiment").glob("*.py") if p.stem != "__init__")

PROBE = """
import sys
for name in ("ray", "deepspeed", "wandb"):
    sys.modules[name] = None  # any import of them now raises ImportError
import importlib
for mod in {mods!r}:
    importlib.import_module("sentiment." + mod)
print("ok", len({mods!r}))
"""


def test_core_imports_without_ray_deepspeed_or_wandb():
    assert {"config", "data", "model", "metrics", "layout", "predict", "batching"} <= set(CORE)
    out = subprocess.run([sys.executable, "-c", PROBE.format(mods=CORE)], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"ok {len(CORE)}"

