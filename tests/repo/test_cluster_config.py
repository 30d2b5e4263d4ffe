"""cluster.yaml passes the Ray cluster launcher's own schema validation."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[2]


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


GCS_SECRETS = ("GCS_REDIS_ADDRESS", "RAY_REDIS_PASSWORD")


@pytest.mark.parametrize(("key", "secrets"), [("head_start_ray_commands", SECRETS + ("RAY_TOKEN",) + GCS_SECRETS),
                                              ("worker_start_ray_commands", SECRETS + ("RAY_TOKEN",))])
def test_every_ray_start_inherits_the_secrets_from_secrets_manager(key, secrets):
    """Workers get the keys from the raylet's environment, never from a job's runtime env."""
    (start,) = [c for c in _load()[key] if "ray start" in c]
    steps = [s.strip() for s in start.split("&&")]
    assert steps[-1].startswith("ray start")
    fetched = {m.group(1) for s in steps if (m := FROM_SECRETS_MANAGER.match(s))}
    assert fetched == set(secrets) and f"export {' '.join(SECRETS)}" in steps


def _start(tmp_path, secrets: dict[str, str], key: str = "head_start_ray_commands") -> tuple[list[str], dict[str, str]] | None:
    """Run a node's start command (``key``) with stand-ins for ``aws`` (answering ``secrets``) and
    ``ray`` (recording its arguments and environment); returns both, or None when Ray never started."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (tmp_path / "secrets.json").write_text(json.dumps(secrets))
    (bin_dir / "aws").write_text(f"""#!{sys.executable}
import json, sys
secrets = json.load(open({str(tmp_path / "secrets.json")!r}))
name = sys.argv[sys.argv.index("--secret-id") + 1]
if name not in secrets:
    sys.exit("ResourceNotFoundException: " + name)
print(secrets[name])
""")
    (bin_dir / "ray").write_text(f"""#!{sys.executable}
import json, os, sys
json.dump({{"argv": sys.argv[1:], "env": dict(os.environ)}}, open({str(tmp_path / "ray.json")!r}, "w"))
""")
    for tool in ("aws", "ray"):
        (bin_dir / tool).chmod(0o755)
    (start,) = [c for c in _load()[key] if "ray start" in c]
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path), "RAY_HEAD_IP": "10.0.0.1"}
    subprocess.run(["bash", "-c", start], env=env, capture_output=True, timeout=30)
    if not (tmp_path / "ray.json").exists():
        return None
    seen = json.loads((tmp_path / "ray.json").read_text())
    return seen["argv"], seen["env"]


def test_the_head_keeps_its_gcs_in_redis_only_when_the_secret_exists(tmp_path):
    keys = {"bert-sentiment/wandb-api-key": "w", "bert-sentiment/serve-api-key": "s", "bert-sentiment/ray-auth-token": "t"}
    argv, env = _start(tmp_path, keys)
    assert argv[:1] == ["start"] and not any("redis" in a for a in argv) and "RAY_REDIS_ADDRESS" not in env
    assert env["WANDB_API_KEY"] == "w" and env["SENTIMENT_API_KEY"] == "s"

    gcs = {"bert-sentiment/gcs-redis-address": "rediss://gcs.example:6379", "bert-sentiment/gcs-redis-password": "pw 1"}
    argv, env = _start(tmp_path, {**keys, **gcs})
    assert env["RAY_REDIS_ADDRESS"] == "rediss://gcs.example:6379" and "--redis-password=pw 1" in argv
    assert env["RAY_external_storage_namespace"] == "bert-sentiment" and "--head" in argv
    assert "RAY_REDIS_PASSWORD" not in env  # not exported: jobs and workers never inherit it


NODE_STARTS = ("head_start_ray_commands", "worker_start_ray_commands")


@pytest.mark.parametrize("key", NODE_STARTS)
def test_every_node_starts_ray_with_the_clusters_token(tmp_path, key):
    """Token auth on every node with the token from Secrets Manager, in a file only its owner reads;
    without that secret the node does not start Ray at all (a plain `ray start` would start it open)."""
    keys = {"bert-sentiment/wandb-api-key": "w", "bert-sentiment/serve-api-key": "s", "bert-sentiment/ray-auth-token": "tok-1"}
    argv, env = _start(tmp_path, keys, key)
    token = tmp_path / ".ray" / "auth_token"
    assert env["RAY_AUTH_MODE"] == "token" and token.read_text() == "tok-1" and token.stat().st_mode & 0o777 == 0o600
    assert "RAY_AUTH_TOKEN" not in env and "RAY_TOKEN" not in env  # in a file, not in every job's environment
    del keys["bert-sentiment/ray-auth-token"]
    (tmp_path / "ray.json").unlink()
    assert _start(tmp_path, keys, key) is None


def test_token_authentication_stays_on_for_the_cluster():
    """Nothing in the cluster's commands turns Ray's token auth off."""
    cfg = _load()
    commands = [c for key in ("setup_commands", "head_setup_commands", "worker_setup_commands", *NODE_STARTS) for c in cfg.get(key, [])]
    assert not any(re.search(r"RAY_AUTH_MODE\s*=\s*(disabled|none)", c, re.IGNORECASE) for c in commands)
    assert "RAY_AUTH_MODE" not in str(cfg.get("head_node_type", "")) + str(cfg.get("provider", {}))
