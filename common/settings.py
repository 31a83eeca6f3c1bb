"""Process configuration from the environment (pydantic-settings). Documented in the README."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from common import TASK_QUEUE_DEFAULT

ROOT = Path(__file__).resolve().parent.parent
SANDBOX_CATALOG = ROOT / "sandbox" / "catalog.yaml"


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
    # Paged when an approval step is still undecided one response time after the primary was paged.
    pagerduty_secondary_routing_key: SecretStr | None = Field(None, alias="ROLLBACK_PAGERDUTY_SECONDARY_ROUTING_KEY")
    pagerduty_url: str = Field("https://events.pagerduty.com/v2/enqueue", alias="ROLLBACK_PAGERDUTY_URL")
    # The alert receiver (receiver.py). Every alert request needs the token or the HMAC signature.
    receiver_host: str = Field("127.0.0.1", alias="ROLLBACK_RECEIVER_HOST")
    receiver_port: int = Field(8090, alias="ROLLBACK_RECEIVER_PORT")
    receiver_token: SecretStr | None = Field(None, alias="ROLLBACK_RECEIVER_TOKEN")
    receiver_hmac_secret: SecretStr | None = Field(None, alias="ROLLBACK_RECEIVER_HMAC_SECRET")
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

    @property
    def address(self) -> str:
        return self.temporal_address or f"127.0.0.1:{self.dev_server_port}"
