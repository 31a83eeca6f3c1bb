"""Connecting to Temporal the same way everywhere (worker, CLI, tests, hooks)."""

from __future__ import annotations

from temporalio.client import Client, TLSConfig
from temporalio.common import SearchAttributeKey
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig

from common.settings import Settings

KIND = SearchAttributeKey.for_keyword("RollbackKind")
TARGET = SearchAttributeKey.for_keyword("RollbackTarget")
SEVERITY = SearchAttributeKey.for_keyword("RollbackSeverity")
PHASE = SearchAttributeKey.for_keyword("RollbackPhase")


def tls_config(settings: Settings) -> TLSConfig | bool:
    """TLS from the settings: mTLS with cert + key, a private CA and the server's name, or plain TLS
    (implied by an API key). Unreadable files raise OSError naming the file."""
    s = settings
    if not (s.temporal_tls or s.temporal_api_key or s.temporal_tls_cert or s.temporal_tls_key
            or s.temporal_tls_ca or s.temporal_tls_server_name):
        return False
    if bool(s.temporal_tls_cert) != bool(s.temporal_tls_key):
        raise ValueError("TEMPORAL_TLS_CERT and TEMPORAL_TLS_KEY go together (mTLS): set both, or neither")
    if not (s.temporal_tls_cert or s.temporal_tls_ca or s.temporal_tls_server_name):
        return True  # the system's CAs, the address's host name
    return TLSConfig(
        client_cert=s.temporal_tls_cert.read_bytes() if s.temporal_tls_cert else None,
        client_private_key=s.temporal_tls_key.read_bytes() if s.temporal_tls_key else None,
        server_root_ca_cert=s.temporal_tls_ca.read_bytes() if s.temporal_tls_ca else None,
        domain=s.temporal_tls_server_name,
    )


async def connect(settings: Settings, *, metrics_port: int | None = None) -> Client:
    tls = tls_config(settings)
    runtime = None
    if metrics_port:
        runtime = Runtime(
            telemetry=TelemetryConfig(metrics=PrometheusConfig(bind_address=f"{settings.metrics_host}:{metrics_port}"))
        )
    return await Client.connect(
        settings.address,
        namespace=settings.temporal_namespace,
        tls=tls,
        api_key=settings.temporal_api_key.get_secret_value() if settings.temporal_api_key else None,
        data_converter=pydantic_data_converter,
        runtime=runtime,
    )
