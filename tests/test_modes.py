"""Modes that cannot be confused: ONE function (common.settings.resolve_mode) decides sandbox or
production and the catalog for the worker, starter.py, receiver.py and the programmatic API; a Temporal
setting without ROLLBACK_AWS=real stops every entry point at once, saying what to set."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pydantic import SecretStr
from temporalio.client import TLSConfig

from common.api import Rollbacks
from common.settings import ModeError, Settings, resolve_mode
from common.temporal import tls_config
from sandbox.catalog import full_catalog_dict
from sandbox.runner import CATALOG_NAME

ROOT = Path(__file__).resolve().parent.parent


def settings(**env: str) -> Settings:
    return Settings(_env_file=None, **{"ROLLBACK_DATA_DIR": "/srv/rollbacks", **env})


def test_nothing_set_is_the_sandbox_with_the_catalog_the_sandbox_writes():
    mode = resolve_mode(settings())
    assert (mode.name, mode.sandbox, mode.dev_server) == ("sandbox", True, True)
    assert mode.catalog == Path("/srv/rollbacks") / CATALOG_NAME  # where Sandbox.start() writes it


@pytest.mark.parametrize("env,named", [
    ({"TEMPORAL_ADDRESS": "temporal.prod:7233"}, "TEMPORAL_ADDRESS is set"),
    ({"TEMPORAL_API_KEY": "k", "TEMPORAL_ADDRESS": "ns.tmprl.cloud:7233"}, "TEMPORAL_ADDRESS and TEMPORAL_API_KEY are set"),
    ({"TEMPORAL_TLS": "true"}, "TEMPORAL_TLS is set"),
    ({"TEMPORAL_ADDRESS": "temporal.prod:7233", "ROLLBACK_AWS": "sandbox"}, "but ROLLBACK_AWS is sandbox"),
])
def test_a_cluster_setting_without_real_aws_is_refused(env, named):
    with pytest.raises(ModeError) as excinfo:
        resolve_mode(settings(**env))
    assert named in str(excinfo.value)
    assert "set ROLLBACK_AWS=real and ROLLBACK_CATALOG=/path/to/catalog.yaml" in str(excinfo.value)


def test_production_needs_its_catalog_and_uses_it_everywhere():
    with pytest.raises(ModeError, match="ROLLBACK_AWS=real needs ROLLBACK_CATALOG=/path/to/catalog.yaml"):
        resolve_mode(settings(ROLLBACK_AWS="real", TEMPORAL_ADDRESS="temporal.prod:7233"))
    mode = resolve_mode(settings(ROLLBACK_AWS="real", TEMPORAL_ADDRESS="temporal.prod:7233",
                                 ROLLBACK_CATALOG="/etc/rollbacks/catalog.yaml"))
    assert (mode.name, mode.dev_server, str(mode.catalog)) == ("production", False, "/etc/rollbacks/catalog.yaml")
    local = resolve_mode(settings(ROLLBACK_AWS="real", ROLLBACK_CATALOG="/etc/rollbacks/catalog.yaml"))
    assert (local.sandbox, local.dev_server) == (False, True)  # real AWS, a throwaway local Temporal


def test_an_empty_secret_is_never_a_configured_one():
    s = settings(ROLLBACK_RECEIVER_HMAC_SECRET="  ")
    assert s.receiver_hmac_secret is None
    os.environ["ROLLBACK_RECEIVER_TOKEN"] = ""  # as compose's ${VAR:-} used to pass it
    try:
        assert Settings().receiver_token is None
    finally:
        del os.environ["ROLLBACK_RECEIVER_TOKEN"]
    assert settings(ROLLBACK_SLACK_WEBHOOK_URL=SecretStr(" ")).slack_webhook_url is None


def env_with(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEMPORAL_", "ROLLBACK_"))}
    return {**env, "ROLLBACK_LOG_FORMAT": "json", "ROLLBACK_METRICS_PORT": "0", "COLUMNS": "250", **extra}


def run(script: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, script, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60)


@pytest.mark.parametrize("script,args", [("worker.py", ()), ("receiver.py", ()),
                                         ("starter.py", ("status", "checkout"))])
def test_every_entry_point_refuses_a_cluster_without_real_aws(script, args, tmp_path):
    """Before: the worker started moto and served the cluster's task queue; the CLI read the sandbox's
    catalog ("service 'checkout' is not in the catalog (known: api)")."""
    result = run(script, *args, env=env_with(TEMPORAL_ADDRESS="127.0.0.1:1", ROLLBACK_DATA_DIR=str(tmp_path),
                                             ROLLBACK_RECEIVER_TOKEN="t"))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "TEMPORAL_ADDRESS is set, which points at a Temporal cluster, but ROLLBACK_AWS is unset" in result.stderr
    assert "set ROLLBACK_AWS=real and ROLLBACK_CATALOG=/path/to/catalog.yaml" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / CATALOG_NAME).exists()  # no sandbox was started


def test_in_the_sandbox_the_cli_and_the_api_read_the_catalog_the_worker_uses(tmp_path):
    """Before: the CLI and the receiver read sandbox/catalog.yaml (only `api`), the worker the generated one."""
    (tmp_path / CATALOG_NAME).write_text(yaml.safe_dump(full_catalog_dict("http://127.0.0.1:1", None) | {
        "services": {"api": {"ecs": {"cluster": "c", "service": "s"}}, "api-bg": {"ecs": {"cluster": "c", "service": "t"}}}}))
    env = env_with(ROLLBACK_DATA_DIR=str(tmp_path), ROLLBACK_DEV_SERVER_PORT="1")
    unknown = run("starter.py", "start", "nope", "--severity", "SEV-2", "--requested-by", "dana", "--reason", "x", env=env)
    assert unknown.returncode == 2 and "'nope' is not in the catalog" in unknown.stderr
    assert "services: api, api-bg" in unknown.stderr, unknown.stderr  # the worker's catalog, not the bundled one
    known = run("starter.py", "start", "api-bg", "--rollout", "50,100", "--severity", "SEV-2", "--requested-by", "dana",
                "--reason", "x", env=env)
    assert known.returncode == 3 and "cannot reach Temporal at 127.0.0.1:1" in known.stderr, known.stderr
    api = Rollbacks.from_settings(client=None, settings=settings(ROLLBACK_DATA_DIR=str(tmp_path)))  # type: ignore[arg-type]
    assert api.catalog_path == tmp_path / CATALOG_NAME


def test_temporal_tls_takes_a_private_ca_and_a_server_name(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_bytes(b"-----BEGIN CERTIFICATE-----\nprivate CA\n-----END CERTIFICATE-----\n")
    tls = tls_config(settings(TEMPORAL_TLS_CA=str(ca), TEMPORAL_TLS_SERVER_NAME="temporal.internal"))
    assert isinstance(tls, TLSConfig)
    assert (tls.server_root_ca_cert, tls.domain, tls.client_cert) == (ca.read_bytes(), "temporal.internal", None)
    assert tls_config(settings(TEMPORAL_API_KEY="k")) is True  # the system's CAs
    assert tls_config(settings()) is False
    with pytest.raises(ValueError, match="TEMPORAL_TLS_CERT and TEMPORAL_TLS_KEY go together"):
        tls_config(settings(TEMPORAL_TLS_CERT=str(ca)))


def test_doctor_says_what_is_missing_in_the_sandbox(tmp_path):
    result = run("starter.py", "doctor", env=env_with(ROLLBACK_DATA_DIR=str(tmp_path), ROLLBACK_DEV_SERVER_PORT="1"))
    assert result.returncode == 3, result.stdout + result.stderr
    assert result.stdout.startswith(f"mode: sandbox (catalog {tmp_path / CATALOG_NAME}, task queue rollbacks)")
    assert f"FAIL [catalog] {tmp_path / CATALOG_NAME}: the sandbox's catalog does not exist yet; the worker writes " \
           "it when it starts the sandbox: start it with 'make run' first" in result.stdout
    assert "FAIL [Temporal] cannot reach Temporal at 127.0.0.1:1" in result.stdout
    assert result.stdout.rstrip().endswith("2 problem(s)")
