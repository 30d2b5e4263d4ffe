"""cluster.yaml passes the Ray cluster launcher's own schema validation."""

from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parent.parent


def _load():
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def test_cluster_yaml_validates_against_rays_schema():
    cfg = _load()
    validate_config(prepare_config(cfg))
    assert cfg["available_node_types"]["gpu_worker"]["min_workers"] == 0
    assert "idle_timeout_minutes" in cfg


def test_the_schema_check_would_catch_a_mistake():
    cfg = _load()
    cfg["available_node_types"]["gpu_worker"]["min_workerz"] = 1
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(cfg))


def test_no_credentials_in_the_file():
    text = (ROOT / "cluster.yaml").read_text().lower()
    assert not any(s in text for s in ("aws_secret", "aws_access_key", "wandb_api_key", "ssh_private_key"))
