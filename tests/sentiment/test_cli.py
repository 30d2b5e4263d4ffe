"""Command lines from typed configs: options, ``field=value`` words and one-line errors, for every
command that takes its options from a model."""

from __future__ import annotations

import pytest

from ray_jobs.evaluate import EvaluateConfig
from ray_jobs.evaluate import parse_args as evaluate_args
from ray_jobs.export import ExportConfig
from ray_jobs.export import parse_args as export_args
from ray_jobs.lr_find import LrFindCommand
from ray_jobs.predict import PredictConfig
from ray_jobs.predict import parse_args as predict_args
from sentiment.cli import TrainingCommand, option_words, parse_command
from tune.cv import CvCommand
from tune.sweep import SweepCommand

COMMANDS = [(EvaluateConfig, evaluate_args, ["--checkpoint", "best"]),
            (PredictConfig, predict_args, ["--checkpoint", "best", "--input", "in.csv", "--output", "out.parquet"]),
            (ExportConfig, export_args, ["--checkpoint", "best"])]
TRAINING = [TrainingCommand, LrFindCommand, SweepCommand, CvCommand]


@pytest.mark.parametrize(("model", "parse", "required"), COMMANDS)
def test_the_defaults_are_the_models_and_every_field_is_an_option(model, parse, required, capsys):
    parsed = parse(required)
    assert parsed.model_dump(exclude={"checkpoint", "input", "output"}) == \
        {k: f.default for k, f in model.model_fields.items() if k not in ("checkpoint", "input", "output")}
    with pytest.raises(SystemExit) as done:
        parse(["--help"])
    assert done.value.code == 0
    shown = capsys.readouterr().out
    for name, field in model.model_fields.items():
        assert f"--{name.replace('_', '-')}" in shown
        assert field.description, f"{model.__name__}.{name} has no description for its --help"


def test_field_words_and_options_are_the_same_command():
    words = evaluate_args(["checkpoint=runs/r1", "max_samples=500", "split=validation", "--calibrate", "long-reviews=chunks"])
    options = evaluate_args(["--checkpoint", "runs/r1", "--max-samples", "500", "--split", "validation", "--calibrate",
                             "--long-reviews", "chunks"])
    assert words == options and words.max_samples == 500 and words.calibrate and words.long_reviews == "chunks"
    assert option_words(EvaluateConfig, ["train.lr=1", "nosuch=2", "--data", "a=b"]) == (["train.lr=1", "nosuch=2", "--data", "a=b"], [])


@pytest.mark.parametrize(("argv", "message"), [
    (["--checkpoint", "best", "--max-samples", "0"], "error: --max-samples: Input should be greater than or equal to 1"),
    (["checkpoint=best", "split=train"], "error: --split: Input should be 'test' or 'validation'"),
    (["--max-samples", "3"], "error: the following arguments are required: --checkpoint"),
    (["--checkpoint", "best", "--nosuch", "1"], "error: unrecognized arguments: --nosuch 1"),
])
def test_a_bad_command_line_exits_2_with_one_line_naming_the_option(argv, message, capsys):
    with pytest.raises(SystemExit) as done:
        parse_command(EvaluateConfig, argv, prog="python -m ray_jobs.evaluate", description="evaluate")
    assert done.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"python -m ray_jobs.evaluate: {message}"


@pytest.mark.parametrize("model", TRAINING)
def test_training_commands_take_a_config_overrides_and_their_own_options(model):
    required = ["--folds", "3"] if model is CvCommand else []
    lists = 'model.label_names=["bad", "good"]'  # commas and JSON reach load_config verbatim
    parsed = parse_command(model, ["train.lr=2e-5", *required, "--config", "configs/smoke.yaml", lists, "run.name=x"], "p", "d")
    assert parsed.config == "configs/smoke.yaml" and parsed.overrides == ["train.lr=2e-5", lists, "run.name=x"]
    assert all(field.description for field in model.model_fields.values())
