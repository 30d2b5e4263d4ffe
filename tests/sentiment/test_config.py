import re
import shlex
from importlib.util import find_spec
from pathlib import Path

import pytest

from sentiment.config import ConfigError, config_from_dict, load_config, parse_overrides, refuse_credentials
from sentiment.model import check_against_model

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_are_valid():
    cfg = load_config()
    assert cfg.model.num_labels == 2 and cfg.data.truncation == "head_tail"


def test_overrides_parse_types_and_nest():
    assert parse_overrides(["train.lr=2e-5", "train.epochs=3", "data.length_grouping=false", "train.class_weights=[1, 2]"]) == {
        "train": {"lr": 2e-5, "epochs": 3, "class_weights": [1, 2]},
        "data": {"length_grouping": False},
    }


def test_override_wins_over_file(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  lr: 0.001\n  epochs: 5\n")
    cfg = load_config(f, ["train.lr=3e-5"])
    assert cfg.train.lr == 3e-5 and cfg.train.epochs == 5


@pytest.mark.parametrize(
    "override, key",
    [
        ("train.lrr=1e-4", "train.lrr"),
        ("nosuch.key=1", "nosuch"),
        ("train.lr=0", "train.lr"),
        ("train.lr=-1e-5", "train.lr"),
        ("train.epochs=two", "train.epochs"),
        ("model.num_labels=1", "model.num_labels"),
        ("data.truncation=middle", "data.truncation"),
        ("deepspeed.zero_stage=4", "deepspeed.zero_stage"),
        ("data.validation_fraction=1.5", "data.validation_fraction"),
        ("model.label_names=[a,b,c]", "model.label_names"),
        ("train.precision=fp16", "train.precision=fp16"),
        ("train.precision=fp8", "train.precision"),
        ("run.metric=val_auc", "run.metric"),
        ("deepspeed.offload_param=true", "deepspeed.offload_param"),
    ],
)
def test_bad_values_fail_naming_the_key(override, key):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert key in str(err.value)


def test_malformed_override_is_rejected():
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(None, ["train.lr"])


def test_missing_and_non_mapping_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "list.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)


def test_max_seq_length_above_model_limit(tiny_model_dir):
    cfg = load_config(None, [f"model.name_or_path={tiny_model_dir}", "data.max_seq_length=256"])
    with pytest.raises(ConfigError, match="data.max_seq_length=256 exceeds the model's position limit 128"):
        check_against_model(cfg)
    check_against_model(load_config(None, [f"model.name_or_path={tiny_model_dir}", "data.max_seq_length=128"]))


def test_unreachable_model_names_the_key():
    cfg = load_config(None, ["model.name_or_path=no-such-org/no-such-model"])
    with pytest.raises(ConfigError, match="model.name_or_path"):
        check_against_model(cfg)


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_config_file_loads_and_starts_with_its_command(path):
    first = path.read_text().splitlines()[0]
    assert first.startswith("# ") and ("python -m" in first or "serve " in first or "ray " in first), first
    if path.name.startswith("serve"):
        return  # a Ray Serve config, not a training config (tests/serve/test_app.py validates it)
    command = shlex.split(first[2:].split("   ")[0])
    module, (flag, named, *overrides) = command[command.index("-m") + 1], command[command.index("-m") + 2:]
    assert find_spec(module) is not None and (flag, named) == ("--config", f"configs/{path.name}"), first
    cfg = load_config(path, overrides)  # the command as its first line gives it
    assert config_from_dict(cfg.model_dump(mode="json"), path.name) == cfg  # as a checkpoint's train_config.json stores it


def test_unknown_storage_filesystem_fails_before_training():
    from ray_jobs.launcher import check_storage

    with pytest.raises(ConfigError, match="run.storage_path='nosuchfs://bucket/runs' cannot be used"):
        check_storage(load_config(None, ["run.storage_path=nosuchfs://bucket/runs"]))
    check_storage(load_config(None, ["run.storage_path=/tmp"]))


SECRET = "wJalrXUtnFEMI-K7MDENG"


@pytest.mark.parametrize("key, uri", [
    ("run.storage_path", f"s3://AKIAEXAMPLE:{SECRET}@bucket/runs"),
    ("run.resume_from", f"gs://user:{SECRET}@bucket/run/epoch_001"),
    ("data.path", f"s3://bucket/imdb?secret_key={SECRET}&region=us-east-1"),
    ("train.teacher", f"s3://bucket/teacher?endpoint_override=127.0.0.1:9000&session_token={SECRET}"),
    ("model.name_or_path", f"https://me:{SECRET}@example.org/model"),
    ("tracking.dir", f"hdfs://me:{SECRET}@namenode/wandb"),
])
def test_a_uri_holding_credentials_is_refused_naming_the_key_not_the_secret(tmp_path, key, uri):
    config = tmp_path / "config.yaml"
    section, field = key.split(".")
    config.write_text(f"{section}:\n  {field}: '{uri}'\n")
    for load in (lambda: load_config(config), lambda: load_config(None, [f"{key}={uri}"])):
        with pytest.raises(ConfigError) as err:
            load()
        assert f"{key}: " in str(err.value) and "holds credentials" in str(err.value)
        assert "environment" in str(err.value) and SECRET not in str(err.value)


def test_uris_without_credentials_are_kept_as_given():
    uri = "s3://bucket/runs?endpoint_override=127.0.0.1:9000&scheme=http"
    assert load_config(None, [f"run.storage_path={uri}"]).run.storage_path == uri
    assert refuse_credentials("s3://AKIAEXAMPLE@bucket/x", "storage_path") == "s3://AKIAEXAMPLE@bucket/x"  # a key id, no secret
    assert refuse_credentials("runs/user:pass@x", "storage_path") == "runs/user:pass@x"  # a local path
    with pytest.raises(ValueError, match=r"^storage_path: s3://AKIAEXAMPLE:\*\*\*@bucket/x holds credentials"):
        refuse_credentials(f"s3://AKIAEXAMPLE:{SECRET}@bucket/x", "storage_path")


def test_every_command_names_its_output_by_run_name_else_command_and_timestamp():
    from sentiment.config import output_name

    assert output_name(load_config(None, ["run.name=mine"]), "lr-find") == "mine"
    assert re.fullmatch(r"cv-\d{8}-\d{6}", output_name(load_config(None, []), "cv"))


@pytest.mark.parametrize("overrides, message", [
    (["model.thresholds=0.3"], "model.thresholds applies to model.problem_type=multi_label only"),
    (["model.problem_type=multi_label", "model.thresholds=[0.3, 0.4, 0.5]"], "model.thresholds has 3 values for 2 labels"),
    (["model.problem_type=multi_label", "model.thresholds=1.0"], "must lie strictly between 0 and 1"),
    (["run.metric=val_micro_f1"], "run.metric 'val_micro_f1' is not one of"),
    (["model.problem_type=multi_label", "train.teacher=/somewhere"], "distillation trains single_label models only"),
])
def test_multi_label_settings_are_checked(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(None, overrides)


def test_a_multi_label_config_ranks_by_its_own_metrics():
    cfg = load_config(None, ["model.problem_type=multi_label", "run.metric=val_hamming_loss", "run.mode=min",
                             "model.thresholds=[0.4, 0.6]"])
    assert cfg.model.multi_label and cfg.model.thresholds == [0.4, 0.6]
    assert not load_config(None, []).model.multi_label
