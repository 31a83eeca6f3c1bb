"""Process configuration from the environment (pydantic-settings). Documented in the README."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from common import TASK_QUEUE_DEFAULT

ROOT = Path(__file__).resolve().parent.parent
SANDBOX_CATALOG = ROOT / "sandbox" / "catalog.yaml"


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
    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    # Temporal. Without an address the worker starts the embedded dev server.
    temporal_address: str | None = Field(None, alias="TEMPORAL_ADDRESS")
    temporal_namespace: str = Field("default", alias="TEMPORAL_NAMESPACE")
    temporal_tls: bool = Field(False, alias="TEMPORAL_TLS")
    temporal_tls_cert: Path | None = Field(None, alias="TEMPORAL_TLS_CERT")
    temporal_tls_key: Path | None = Field(None, alias="TEMPORAL_TLS_KEY")
    temporal_api_key: SecretStr | None = Field(None, alias="TEMPORAL_API_KEY")
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

    catalog: Path | None = Field(None, alias="ROLLBACK_CATALOG")

    metrics_port: int = Field(9464, alias="ROLLBACK_METRICS_PORT", description="0 turns it off")
    slack_webhook_url: SecretStr | None = Field(None, alias="ROLLBACK_SLACK_WEBHOOK_URL")
    # Post-rollback actions (runbook): status page and incident ticket; unset = not configured.
    statuspage_url: str | None = Field(None, alias="ROLLBACK_STATUSPAGE_URL")
    statuspage_token: SecretStr | None = Field(None, alias="ROLLBACK_STATUSPAGE_TOKEN")
    ticket_url: str | None = Field(None, alias="ROLLBACK_TICKET_URL")
    ticket_token: SecretStr | None = Field(None, alias="ROLLBACK_TICKET_TOKEN")
    pagerduty_routing_key: SecretStr | None = Field(None, alias="ROLLBACK_PAGERDUTY_ROUTING_KEY")
    pagerduty_url: str = Field("https://events.pagerduty.com/v2/enqueue", alias="ROLLBACK_PAGERDUTY_URL")
    # The alert receiver (receiver.py). Every alert request needs the token or the HMAC signature.
    receiver_host: str = Field("127.0.0.1", alias="ROLLBACK_RECEIVER_HOST")
    receiver_port: int = Field(8090, alias="ROLLBACK_RECEIVER_PORT")
    receiver_token: Secret = Field(None, alias="ROLLBACK_RECEIVER_TOKEN")
    receiver_hmac_secret: Secret = Field(None, alias="ROLLBACK_RECEIVER_HMAC_SECRET")
    # /alerts/generic: each source with its own credentials, so one cannot speak as another (JSON:
    # {"synthetics": {"token": "..."}, "ci": {"hmac_secret": "..."}}).
    receiver_sources: dict[str, SourceAuth] = Field(default_factory=dict, alias="ROLLBACK_RECEIVER_SOURCES")
    # Identity (docs/identity.md). The worker checks Slack callbacks with the signing secret, and the
    # starts the receiver and the auto-rollback check sign with the automation key (both hold it).
    slack_signing_secret: Secret = Field(None, alias="ROLLBACK_SLACK_SIGNING_SECRET")
    slack_response_url_prefixes: list[str] = Field(default_factory=lambda: ["https://hooks.slack.com/"],
                                                   alias="ROLLBACK_SLACK_RESPONSE_URL_PREFIXES")
    automation_key: Secret = Field(None, alias="ROLLBACK_AUTOMATION_KEY")
    # starter.py's proof of who you are: a token, a file holding one, or a command printing one
    # (e.g. "gcloud auth print-identity-token --audiences=rollbacks"); else 'starter.py login' (sandbox).
    id_token: Secret = Field(None, alias="ROLLBACK_ID_TOKEN")
    id_token_file: Path | None = Field(None, alias="ROLLBACK_ID_TOKEN_FILE")
    id_token_command: str | None = Field(None, alias="ROLLBACK_ID_TOKEN_COMMAND")
    receiver_max_body: int = Field(256 * 1024, gt=0, alias="ROLLBACK_RECEIVER_MAX_BODY")
    log_format: Literal["auto", "json", "console"] = Field("auto", alias="ROLLBACK_LOG_FORMAT")
    log_level: str = Field("INFO", alias="ROLLBACK_LOG_LEVEL")

    @property
    def catalog_path(self) -> Path:
        if self.catalog:
            return self.catalog
        if self.aws == "sandbox":
            return SANDBOX_CATALOG
        raise ValueError("ROLLBACK_CATALOG must point at your catalog.yaml when ROLLBACK_AWS=real")

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
