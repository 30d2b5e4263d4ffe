"""Write docs/configuration.md from the typed configs: every key and option, its type, default and description.

    .venv/bin/python scripts/config_reference.py            # rewrite docs/configuration.md
    .venv/bin/python scripts/config_reference.py --check    # exit 1 if it is out of date (tests/repo/test_docs.py)

The models are the one source: the training config's sections (``sentiment.config.Config``) and the
options of the commands that take theirs from a model (evaluate, predict, export, serve).
"""

from __future__ import annotations

import sys
import types
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "configuration.md"
sys.path.insert(0, str(ROOT))


def type_name(annotation: Any) -> str:
    """A short, readable type: ``int``, ``str | null``, ``best | last``, ``list[float]``."""
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return " \\| ".join(str(a) for a in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(type_name(a) for a in typing.get_args(annotation))
    if origin is typing.Annotated:
        return type_name(typing.get_args(annotation)[0])
    if annotation is type(None):
        return "null"
    if origin is not None:
        return f"{getattr(origin, '__name__', str(origin))}[{', '.join(type_name(a) for a in typing.get_args(annotation))}]"
    return getattr(annotation, "__name__", str(annotation))


def default_text(field: Any) -> str:
    """The field's default as YAML would spell it; "required" when it has none."""
    if field.default_factory is not None:
        value = field.default_factory()
    elif field.default is PydanticUndefined:
        return "required"
    else:
        value = field.default
    if hasattr(value, "get_secret_value"):
        value = "(secret)"
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else f"{value}"


def table(model: type[BaseModel], spell: Any) -> list[str]:
    """One row per field of ``model``: its spelling, type, default and description."""
    rows = ["| key | type | default | description |", "| --- | --- | --- | --- |"]
    for name, field in model.model_fields.items():
        description = (field.description or "").replace("|", "\\|").replace("\n", " ").replace("<", "&lt;").replace(">", "&gt;")
        rows.append(f"| `{spell(name)}` | {type_name(field.annotation)} | `{default_text(field)}` | {description} |")
    return rows


def reference() -> str:
    """The whole page."""
    from ray_jobs.evaluate import EvaluateConfig
    from ray_jobs.export import ExportConfig
    from ray_jobs.lr_find import LrFindCommand
    from ray_jobs.predict import PredictConfig
    from sentiment.cli import TrainingCommand
    from sentiment.config import Config
    from serve.schemas import ServeArgs
    from tune.cv import CvCommand
    from tune.sweep import SweepCommand

    lines = [
        "# Configuration reference",
        "",
        "Generated from the typed configs by `scripts/config_reference.py`; do not edit by hand.",
        "",
        "## Training config",
        "",
        "One config for `ray_jobs.train`, `ray_jobs.pretrain`, `ray_jobs.lr_find`, `tune.sweep` and `tune.cv`:",
        "a YAML file (`--config`) and dotted overrides (`train.lr=2e-5`, `model.label_names=[neg,pos]`).",
        "Unknown keys, wrong types and impossible values fail at load time naming the key.",
    ]
    for section, field in Config.model_fields.items():
        model = field.annotation
        lines += ["", f"### `{section}`", "", (model.__doc__ or "").strip().split("\n\n")[0].replace("\n", " "), ""]
        lines += table(model, lambda name, section=section: f"{section}.{name}")
    commands = [("ray_jobs.train", TrainingCommand), ("ray_jobs.pretrain", TrainingCommand), ("ray_jobs.lr_find", LrFindCommand),
                ("tune.sweep", SweepCommand), ("tune.cv", CvCommand), ("ray_jobs.evaluate", EvaluateConfig),
                ("ray_jobs.predict", PredictConfig), ("ray_jobs.export", ExportConfig)]
    lines += ["", "## Command options", "",
              "Each command's options come from its model. An option is `--kebab-case value` or `field=value`",
              "(`--max-samples 500` is `max_samples=500`); a boolean is `--flag` / `--no-flag`; the training",
              "commands also take the training config's dotted overrides as words (`train.lr=2e-5`)."]
    for command, model in commands:
        lines += ["", f"### `python -m {command}`", ""]
        lines += table(model, lambda name: "overrides ..." if name == "overrides" else f"--{name.replace('_', '-')}")
    lines += ["", "### `serve run serve.app:build_app`", "",
              "Arguments are `key=value` words after the import path (`checkpoint=best num_cpus=2`).", ""]
    lines += table(ServeArgs, lambda name: name)
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    """Rewrite the page, or with ``--check`` report whether it is current."""
    text = reference()
    if "--check" in argv:
        current = OUT.read_text() if OUT.exists() else ""
        if current != text:
            print(f"{OUT.relative_to(ROOT)} is out of date: run .venv/bin/python scripts/config_reference.py", file=sys.stderr)
            return 1
        return 0
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(text)
    print(f"wrote {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
