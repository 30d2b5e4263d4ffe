"""Command lines from typed configs: a command's options are its pydantic model's fields.

:func:`parse_command` hands the model to pydantic-settings' CLI (as ``HfArgumentParser`` does for
dataclasses): one ``--kebab-case`` option per field, its help the field's description, choices from
a ``Literal``, ``--flag`` / ``--no-flag`` for a boolean, required when the field has no default.
Every command also takes ``field=value`` words, the override grammar of the training commands
(``ray_jobs.train``'s ``section.key=value``), so ``max_samples=500`` and ``--max-samples 500`` are
the same; in the training commands every other bare word is a dotted override, passed on verbatim.
A value the model refuses exits 2 with one ``error:`` line naming the option.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, TypeVar, cast

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_settings import CliApp, CliSettingsSource, CliSuppress

M = TypeVar("M", bound=BaseModel)


class TrainingCommand(BaseModel):
    """The options every command on the training config takes: a YAML file and dotted overrides
    (``ray_jobs.train``, ``ray_jobs.pretrain``; ``ray_jobs.lr_find``, ``tune.sweep`` and ``tune.cv``
    add their own)."""

    model_config = ConfigDict(extra="forbid")

    config: str | None = Field(None, description="YAML config file (defaults apply when omitted).")
    overrides: CliSuppress[list[str]] = Field(
        default_factory=list, description="section.key=value overrides, e.g. train.lr=2e-5 run.name=mine (the words "
        "that are no option or option value, passed on verbatim).")


def option_words(model: type[BaseModel], argv: list[str]) -> tuple[list[str], list[str]]:
    """``argv`` split into option words and, for a model with ``overrides``, the override words.

    A ``field=value`` word (a field of ``model``, ``-`` or ``_`` alike) becomes ``--field value``.
    Any other bare word that is not an option's value is an override, kept verbatim (pydantic's
    CLI would split a list value at its commas). Without an ``overrides`` field every word is an
    option word, and argparse names the stray ones.
    """
    words: list[str] = []
    overrides: list[str] = []
    takes_value = False
    for word in argv:
        key, eq, value = word.partition("=")
        if takes_value:
            words.append(word)
            takes_value = False
        elif word.startswith("-"):
            words.append(word)
            field = model.model_fields.get(key.lstrip("-").replace("-", "_"))
            takes_value = not eq and field is not None and field.annotation is not bool
        elif eq and key.replace("-", "_") in model.model_fields:
            words += [f"--{key.replace('_', '-')}", value]
        elif "overrides" in model.model_fields:
            overrides.append(word)
        else:
            words.append(word)
    return words, overrides


def parse_command(model: type[M], argv: list[str] | None, prog: str, description: str) -> M:
    """The command line ``argv`` (default: ``sys.argv[1:]``) as a validated ``model``.

    Raises:
        SystemExit: 2 with one ``error:`` line for an unknown option, a missing required one or a
            value the model refuses; 0 after ``--help``.
    """
    parser = argparse.ArgumentParser(prog=prog, description=description)
    source: CliSettingsSource[Any] = CliSettingsSource(
        cast(Any, model), root_parser=parser, cli_kebab_case=True, cli_implicit_flags=True, cli_enforce_required=True,
        cli_use_class_docs_for_groups=False,
    )
    if "overrides" in model.model_fields:
        parser.add_argument("overrides", nargs="*", metavar="section.key=value",
                            help=model.model_fields["overrides"].description)
    words, overrides = option_words(model, list(sys.argv[1:] if argv is None else argv))
    try:
        parsed = CliApp.run(model, cli_args=words, cli_settings_source=source)
        return parsed.model_copy(update={"overrides": overrides}) if overrides else parsed
    except ValidationError as err:
        problems = "; ".join(f"--{'.'.join(map(str, e['loc'])).replace('_', '-')}: {e['msg']}" for e in err.errors())
        parser.error(problems)
