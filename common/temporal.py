"""Connecting to Temporal the same way everywhere (worker, CLI, tests, hooks)."""

from __future__ import annotations

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest, ListSearchAttributesRequest
from temporalio.client import Client, TLSConfig
from temporalio.common import SearchAttributeKey
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig

from common import SEARCH_ATTRIBUTES
from common.settings import Settings

KIND = SearchAttributeKey.for_keyword("RollbackKind")
TARGET = SearchAttributeKey.for_keyword("RollbackTarget")
SEVERITY = SearchAttributeKey.for_keyword("RollbackSeverity")
PHASE = SearchAttributeKey.for_keyword("RollbackPhase")


async def connect(settings: Settings, *, metrics_port: int | None = None) -> Client:
    tls: TLSConfig | bool = False
    if settings.temporal_tls_cert and settings.temporal_tls_key:
        tls = TLSConfig(
            client_cert=settings.temporal_tls_cert.read_bytes(),
            client_private_key=settings.temporal_tls_key.read_bytes(),
        )
    elif settings.temporal_tls or settings.temporal_api_key:
        tls = True
    runtime = None
    if metrics_port:
        runtime = Runtime(
            telemetry=TelemetryConfig(metrics=PrometheusConfig(bind_address=f"0.0.0.0:{metrics_port}"))
        )
    return await Client.connect(
        settings.address,
        namespace=settings.temporal_namespace,
        tls=tls,
        api_key=settings.temporal_api_key.get_secret_value() if settings.temporal_api_key else None,
        data_converter=pydantic_data_converter,
        runtime=runtime,
    )


async def ensure_search_attributes(client: Client, namespace: str) -> None:
    """Register our Keyword search attributes if the server does not know them yet."""
    have = await client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace=namespace)
    )
    missing = [n for n in SEARCH_ATTRIBUTES if n not in have.custom_attributes]
    if missing:
        await client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(
                namespace=namespace,
                search_attributes={n: IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD for n in missing},
            )
        )
