"""cluster.yaml passes the Ray cluster launcher's own schema validation."""

import re
from pathlib import Path

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


SECRETS = ("WANDB_API_KEY", "SENTIMENT_API_KEY")
FROM_SECRETS_MANAGER = re.compile(r'^(\w+)="\$\(aws secretsmanager get-secret-value --secret-id [\w/-]+ [^)]*\)"$')


def test_no_credentials_in_the_file():
    text = (ROOT / "cluster.yaml").read_text()
    assert not any(s in text.lower() for s in ("aws_secret", "aws_access_key", "ssh_private_key"))
    # The keys are named only where they are fetched from AWS Secrets Manager or exported.
    for match in re.finditer(r"(\w*API_KEY)=(\S+)", text):
        assert FROM_SECRETS_MANAGER.match(match.group(0) + text[match.end():].split("\n")[0]), match.group(0)


@pytest.mark.parametrize("key", ["head_start_ray_commands", "worker_start_ray_commands"])
def test_every_ray_start_inherits_the_secrets_from_secrets_manager(key):
    """Workers get the keys from the raylet's environment, never from a job's runtime env."""
    (start,) = [c for c in _load()[key] if "ray start" in c]
    steps = [s.strip() for s in start.split("&&")]
    assert steps[-1].startswith("ray start")
    fetched = {m.group(1) for s in steps if (m := FROM_SECRETS_MANAGER.match(s))}
    assert fetched == set(SECRETS) and f"export {' '.join(SECRETS)}" in steps


def test_token_authentication_stays_on_for_the_cluster():
    """Nothing in the cluster's commands turns Ray's token auth off (`ray start --head` turns it on)."""
    cfg = _load()
    commands = [c for key in ("setup_commands", "head_setup_commands", "worker_setup_commands",
                              "head_start_ray_commands", "worker_start_ray_commands") for c in cfg.get(key, [])]
    assert any("ray start --head" in c for c in commands)
    assert not any(re.search(r"RAY_AUTH_MODE\s*=\s*(disabled|none)", c, re.IGNORECASE) for c in commands)
    assert "RAY_AUTH_MODE" not in str(cfg.get("head_node_type", "")) + str(cfg.get("provider", {}))
