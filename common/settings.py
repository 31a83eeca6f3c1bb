"""Process configuration from the environment (pydantic-settings). Documented in the README
and docs/production.md.

``resolve_mode`` is the ONE place that decides, for the worker, the CLI, the receiver and the
programmatic API alike, whether this is the local sandbox or production and which catalog to read.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from common import TASK_QUEUE_DEFAULT

ROOT = Path(__file__).resolve().parent.parent
SANDBOX_CATALOG_NAME = "sandbox-catalog.yaml"  # written into the data dir by the sandbox at each start


def _unset_if_empty(v: Any) -> Any:
    """A secret set to "" (e.g. an empty variable in a compose file) is NOT set: never an empty key."""
    if isinstance(v, SecretStr):
        v = v.get_secret_value()
    return None if isinstance(v, str) and not v.strip() else v


Secret = Annotated[SecretStr | None, BeforeValidator(_unset_if_empty)]


class SourceAuth(BaseModel):
    """How one generic alert source proves it is itself (ROLLBACK_RECEIVER_SOURCES)."""

    token: Secret = None
    hmac_secret: Secret = None

    @model_validator(mode="after")
    def _one(self) -> "SourceAuth":
        if self.token is None and self.hmac_secret is None:
            raise ValueError("give the source a token or an hmac_secret (non-empty)")
        return self


class Settings(BaseSettings):
    # env_ignore_empty: ``VAR=`` (as compose and .env files write "not given") counts as unset, so an
    # empty secret is never a key that "is configured" (an empty HMAC key signs anything).
    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True, env_ignore_empty=True)

    # Temporal. Without an address the worker starts the embedded dev server.
    temporal_address: str | None = Field(None, alias="TEMPORAL_ADDRESS")
    temporal_namespace: str = Field("default", alias="TEMPORAL_NAMESPACE")
    temporal_tls: bool = Field(False, alias="TEMPORAL_TLS")
    temporal_tls_cert: Path | None = Field(None, alias="TEMPORAL_TLS_CERT")
    temporal_tls_key: Path | None = Field(None, alias="TEMPORAL_TLS_KEY")
    temporal_api_key: SecretStr | None = Field(None, alias="TEMPORAL_API_KEY")
    # A private CA (PEM) that signed the cluster's certificate, and the name in that certificate
    # when it differs from TEMPORAL_ADDRESS's host (e.g. connecting through an IP or a tunnel).
    temporal_tls_ca: Path | None = Field(None, alias="TEMPORAL_TLS_CA")
    temporal_tls_server_name: str | None = Field(None, alias="TEMPORAL_TLS_SERVER_NAME")
    task_queue: str = Field(TASK_QUEUE_DEFAULT, alias="ROLLBACK_TASK_QUEUE")

    # Embedded dev server (only when TEMPORAL_ADDRESS is unset).
    dev_server_port: int = Field(7233, alias="ROLLBACK_DEV_SERVER_PORT")
    dev_ui_port: int = Field(8233, alias="ROLLBACK_DEV_UI_PORT")
    data_dir: Path = Field(ROOT / ".data", alias="ROLLBACK_DATA_DIR")

    # AWS: "sandbox" runs moto + local endpoints; "real" uses boto3's standard chain
    # (AWS_PROFILE / AWS_REGION / AWS_ENDPOINT_URL ...).
    aws: Literal["sandbox", "real"] = Field("sandbox", alias="ROLLBACK_AWS")
    sandbox_port: int = Field(4566, alias="ROLLBACK_SANDBOX_PORT")
    sandbox_http_port: int = Field(8080, alias="ROLLBACK_SANDBOX_HTTP_PORT")
    # The sandbox's Prometheus (a real p95, sandbox/prometheus.py) where Debian's prometheus is installed.
    sandbox_prometheus_port: int | Literal["off"] = Field(9090, alias="ROLLBACK_SANDBOX_PROMETHEUS_PORT",
                                                          description="0: any free port; off: CloudWatch only")

    catalog: Path | None = Field(None, alias="ROLLBACK_CATALOG")

    metrics_port: int = Field(9464, alias="ROLLBACK_METRICS_PORT", description="0 turns it off")
    metrics_host: str = Field("127.0.0.1", alias="ROLLBACK_METRICS_HOST",
                              description="where /metrics listens; 0.0.0.0 for a scraper elsewhere (compose)")
    slack_webhook_url: SecretStr | None = Field(None, alias="ROLLBACK_SLACK_WEBHOOK_URL")
    # Links in notifications: the rollback's Web UI page (default: the embedded dev server's UI) and
    # the Grafana dashboard of docs/grafana-dashboard.json, once imported.
    web_ui_url: str | None = Field(None, alias="ROLLBACK_WEB_UI_URL")
    dashboard_url: str | None = Field(None, alias="ROLLBACK_DASHBOARD_URL")
    # Post-rollback actions (runbook): status page and incident ticket; unset = not configured.
    statuspage_url: str | None = Field(None, alias="ROLLBACK_STATUSPAGE_URL")
    statuspage_token: SecretStr | None = Field(None, alias="ROLLBACK_STATUSPAGE_TOKEN")
    ticket_url: str | None = Field(None, alias="ROLLBACK_TICKET_URL")
    ticket_token: SecretStr | None = Field(None, alias="ROLLBACK_TICKET_TOKEN")
    pagerduty_routing_key: SecretStr | None = Field(None, alias="ROLLBACK_PAGERDUTY_ROUTING_KEY")
    # Paged when an approval step is still undecided one response time after the primary was paged.
    pagerduty_secondary_routing_key: SecretStr | None = Field(None, alias="ROLLBACK_PAGERDUTY_SECONDARY_ROUTING_KEY")
    pagerduty_url: str = Field("https://events.pagerduty.com/v2/enqueue", alias="ROLLBACK_PAGERDUTY_URL")
    # The alert receiver (receiver.py). Every alert request needs the token or the HMAC signature.
    receiver_host: str = Field("127.0.0.1", alias="ROLLBACK_RECEIVER_HOST")
    receiver_port: int = Field(8090, alias="ROLLBACK_RECEIVER_PORT")
    receiver_token: SecretStr | None = Field(None, alias="ROLLBACK_RECEIVER_TOKEN")
    receiver_hmac_secret: SecretStr | None = Field(None, alias="ROLLBACK_RECEIVER_HMAC_SECRET")
    # /alerts/generic: each source with its own credentials, so one cannot speak as another (JSON:
    # {"synthetics": {"token": "..."}, "ci": {"hmac_secret": "..."}}).
    receiver_sources: dict[str, SourceAuth] = Field(default_factory=dict, alias="ROLLBACK_RECEIVER_SOURCES")
    # Identity (docs/identity.md). The worker checks Slack callbacks with the signing secret, and the
    # starts the receiver and the auto-rollback check sign with the automation key (both hold it).
    slack_signing_secret: SecretStr | None = Field(None, alias="ROLLBACK_SLACK_SIGNING_SECRET")
    slack_response_url_prefixes: list[str] = Field(default_factory=lambda: ["https://hooks.slack.com/"],
                                                   alias="ROLLBACK_SLACK_RESPONSE_URL_PREFIXES")
    automation_key: SecretStr | None = Field(None, alias="ROLLBACK_AUTOMATION_KEY")
    # starter.py's proof of who you are: a token, a file holding one, or a command printing one
    # (e.g. "gcloud auth print-identity-token --audiences=rollbacks"); else 'starter.py login' (sandbox).
    id_token: SecretStr | None = Field(None, alias="ROLLBACK_ID_TOKEN")
    id_token_file: Path | None = Field(None, alias="ROLLBACK_ID_TOKEN_FILE")
    id_token_command: str | None = Field(None, alias="ROLLBACK_ID_TOKEN_COMMAND")
    receiver_max_body: int = Field(256 * 1024, gt=0, alias="ROLLBACK_RECEIVER_MAX_BODY")
    log_format: Literal["auto", "json", "console"] = Field("auto", alias="ROLLBACK_LOG_FORMAT")
    log_level: str = Field("INFO", alias="ROLLBACK_LOG_LEVEL")

    @field_validator("temporal_api_key", "slack_webhook_url", "statuspage_token", "ticket_token",
                     "pagerduty_routing_key", "receiver_token", "receiver_hmac_secret", "slack_signing_secret",
                     "automation_key", "id_token", mode="before")
    @classmethod
    def _blank_secret_is_unset(cls, v: object) -> object:
        """A secret of only spaces counts as not set too (never a key); the preflight reports any
        secret set to nothing, so a deployment does not start believing it is configured."""
        text = v.get_secret_value() if isinstance(v, SecretStr) else v
        return None if isinstance(text, str) and not text.strip() else v

    @property
    def ui_url(self) -> str | None:
        return self.web_ui_url or (None if self.temporal_address else f"http://127.0.0.1:{self.dev_ui_port}")

    @model_validator(mode="after")
    def _long_enough(self) -> "Settings":
        key = self.automation_key
        if key is not None and len(key.get_secret_value()) < 32:
            raise ValueError("ROLLBACK_AUTOMATION_KEY is shorter than 32 characters: anyone could guess it; make one "
                             "with: python -c 'import secrets; print(secrets.token_hex(32))'")
        return self

    def automation_secret(self) -> SecretStr | None:
        """ROLLBACK_AUTOMATION_KEY; in the sandbox without it, a key made once under the data dir, so
        `make run` and `make receiver` share it."""
        if self.automation_key is not None or self.aws != "sandbox":
            return self.automation_key
        path = self.data_dir / "automation.key"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as f:
                    f.write(secrets.token_hex(32))
            except FileExistsError:
                pass  # the other process made it first
        return SecretStr(path.read_text().strip())

    @property
    def address(self) -> str:
        return self.temporal_address or f"127.0.0.1:{self.dev_server_port}"


def describe_settings_error(e: ValidationError) -> str:
    """Each bad variable with the problem; secrets' values are never repeated."""
    secret = {f.alias for f in Settings.model_fields.values() if "SecretStr" in str(f.annotation)}
    lines = []
    for x in e.errors():
        name = ".".join(str(p) for p in x["loc"])
        given = "" if name in secret else f" (given {x['input']!r})"
        lines.append(f"{name}: {x['msg']}{given}")
    return "bad setting in the environment: " + "; ".join(lines) + " (docs/production.md lists them)"


# Settings that point at a Temporal cluster: with any of them, this is not the sandbox.
PRODUCTION_SETTINGS = {"TEMPORAL_ADDRESS": "temporal_address", "TEMPORAL_API_KEY": "temporal_api_key",
                       "TEMPORAL_TLS": "temporal_tls", "TEMPORAL_TLS_CERT": "temporal_tls_cert",
                       "TEMPORAL_TLS_KEY": "temporal_tls_key", "TEMPORAL_TLS_CA": "temporal_tls_ca",
                       "TEMPORAL_TLS_SERVER_NAME": "temporal_tls_server_name"}


class ModeError(ValueError):
    """The settings mix the sandbox and production; the message says what to set."""


@dataclass(frozen=True)
class Mode:
    """Where this process's rollbacks act, and the catalog every entry point must read."""

    sandbox: bool  # AWS is the local sandbox (moto), started by the worker
    dev_server: bool  # Temporal is the embedded dev server (no TEMPORAL_ADDRESS)
    catalog: Path

    @property
    def name(self) -> str:
        return "sandbox" if self.sandbox else "production"


def resolve_mode(settings: Settings) -> Mode:
    """The one rule for the worker, starter.py, receiver.py and ``common.api`` alike.

    - The sandbox runs only when nothing points elsewhere: a Temporal setting (TEMPORAL_ADDRESS,
      TLS, API key) without ``ROLLBACK_AWS=real`` is an error, because the worker would otherwise
      serve a real cluster's task queue and schedule with a fake AWS.
    - Sandbox: the catalog is the one the sandbox writes at each worker start
      (``<ROLLBACK_DATA_DIR>/sandbox-catalog.yaml``; ROLLBACK_CATALOG may name another).
    - Production (``ROLLBACK_AWS=real``): ROLLBACK_CATALOG is required.
    """
    if settings.aws == "sandbox":
        pointing = [env for env, field in PRODUCTION_SETTINGS.items() if getattr(settings, field)]
        if pointing:
            raise ModeError(
                f"{' and '.join(pointing)} {'is' if len(pointing) == 1 else 'are'} set, which points at a Temporal "
                f"cluster, but ROLLBACK_AWS is {'unset' if 'aws' not in settings.model_fields_set else 'sandbox'}, "
                "which means the local AWS sandbox: this would serve the cluster's rollbacks against a fake AWS. "
                "To run against your cluster and real AWS, set ROLLBACK_AWS=real and ROLLBACK_CATALOG=/path/to/"
                f"catalog.yaml (see docs/production.md); for the local sandbox, unset {', '.join(pointing)}.")
        return Mode(sandbox=True, dev_server=True,
                    catalog=settings.catalog or settings.data_dir / SANDBOX_CATALOG_NAME)
    if not settings.catalog:
        raise ModeError("ROLLBACK_AWS=real needs ROLLBACK_CATALOG=/path/to/catalog.yaml: the services, people "
                        "and policy this deployment may roll back (reference: docs/catalog.md).")
    return Mode(sandbox=False, dev_server=not settings.temporal_address, catalog=settings.catalog)
