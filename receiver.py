"""receiver.py: the alert receiver. Firing alerts become rollbacks through the catalog's
``alert_rules`` (runbook: Common Rollback Scenarios); ``make receiver`` runs it.

    POST /alerts/alertmanager   Prometheus Alertmanager webhook, payload version "4"
                                (Grafana's webhook contact point: the same shape, version "1")
    POST /alerts/generic        {"source": "ci", "status": "firing", "labels": {...}, "summary": "..."}
    GET  /healthz               200 when Temporal answers

Every alert request is authenticated: ``Authorization: Bearer <ROLLBACK_RECEIVER_TOKEN>`` or
``X-Signature: sha256=<hex HMAC-SHA256 of the raw body with ROLLBACK_RECEIVER_HMAC_SECRET>``
(whichever are configured; at least one must be). Anything else: 401, nothing starts.
A body over ROLLBACK_RECEIVER_MAX_BODY (256 KiB) is 413, bad JSON 400, an unknown or missing
field 422: nothing starts. Resolved alerts start nothing.

For each firing alert the first matching rule chooses the procedure and its input; the
rollback is started or, if one of that target is running, joined (signal-with-start of
``add_evidence`` on ``rollback-<kind>-<target>``), so an alert storm is one rollback whose
status lists every repeat as evidence. ``requested_by`` is ``<source>:<rule>``
(e.g. ``alertmanager:high-error-rate``): the policy's ``automation_may_proceed`` decides
whether it proceeds without waiting for people. The answer says, per alert, which workflow
was started or joined. The receiver only starts and signals: it answers in milliseconds.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import re
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Annotated, Any, Literal

import structlog
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from temporalio.api.workflowservice.v1 import GetSystemInfoRequest
from temporalio.client import Client
from temporalio.service import RPCError

from common.api import BadRequest, Rollbacks, read_catalog
from common.catalog import AlertRule, CatalogError
from common.models import MAX_LABELS, Evidence, Label, LabelKey

log = structlog.get_logger("receiver")

MAX_BODY = 256 * 1024
CONCURRENCY = 16  # alerts of one payload started/joined at once
SOURCE_PATTERN = r"^[a-z0-9][a-z0-9._-]*$"
NO_AUTH = ("set ROLLBACK_RECEIVER_TOKEN (bearer token) or ROLLBACK_RECEIVER_HMAC_SECRET (HMAC-SHA256 "
           "signatures), or both: the receiver never accepts unauthenticated alerts")


# --- payloads ---------------------------------------------------------------------------

class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# Labels become a rollback's evidence: bounded like Evidence's (common/models.py), so a huge label is
# a clear 422 here, never a status that outgrows Temporal's limits.
Labels = Annotated[dict[LabelKey, Label], Field(max_length=MAX_LABELS)]


class AlertmanagerAlert(Strict):
    """One alert of an Alertmanager webhook (v4); the last fields are Grafana's additions."""

    status: Literal["firing", "resolved"]
    labels: Labels
    annotations: dict[str, str] = Field(default_factory=dict)
    startsAt: datetime | None = None
    endsAt: datetime | None = None
    generatorURL: str = ""
    fingerprint: str = ""
    # Grafana
    values: dict[str, float | None] | None = None
    valueString: str = ""
    silenceURL: str = ""
    dashboardURL: str = ""
    panelURL: str = ""
    imageURL: str = ""


class AlertmanagerPayload(Strict):
    """https://prometheus.io/docs/alerting/latest/configuration/#webhook_config (version 4)."""

    version: Literal["4", "1"] = Field(description='"4": Alertmanager; "1": Grafana (with orgId)')
    groupKey: str
    truncatedAlerts: int = 0
    status: Literal["firing", "resolved"]
    receiver: str
    groupLabels: dict[str, str] = Field(default_factory=dict)
    commonLabels: Labels = Field(default_factory=dict)
    commonAnnotations: dict[str, str] = Field(default_factory=dict)
    externalURL: str = ""
    alerts: list[AlertmanagerAlert]
    # Grafana
    orgId: int | None = None
    title: str = ""
    state: str = ""
    message: str = ""

    @model_validator(mode="after")
    def _known_version(self) -> "AlertmanagerPayload":
        if self.version == "1" and self.orgId is None:
            raise ValueError('version "1" is Grafana\'s webhook (it sends orgId); Alertmanager sends version "4"')
        return self

    @property
    def source(self) -> str:
        return "grafana" if self.orgId is not None else "alertmanager"


class GenericAlert(Strict):
    """The generic payload: one alert from any tool that can POST JSON."""

    source: str = Field(pattern=SOURCE_PATTERN, max_length=64,
                        description="who sends it, e.g. 'ci' or 'synthetics'; requested_by is '<source>:<rule>'")
    status: Literal["firing", "resolved"]
    labels: Labels = Field(description="matched by the catalog's alert_rules, e.g. alertname, service")
    summary: str = Field("", max_length=2000)
    starts_at: datetime | None = Field(None, description="when the condition began (default: now)")


class Alert(BaseModel):
    """An alert, whatever payload it came in."""

    source: str
    status: str
    labels: dict[str, str]
    annotations: dict[str, str] = Field(default_factory=dict)
    summary: str = ""
    starts_at: datetime | None = None
    fingerprint: str = ""

    @property
    def name(self) -> str:
        return self.labels.get("alertname", "")


def from_alertmanager(p: AlertmanagerPayload) -> list[Alert]:
    out = []
    for a in p.alerts:
        annotations = {**p.commonAnnotations, **a.annotations}
        summary = annotations.get("summary") or annotations.get("description") or p.title or ""
        starts = a.startsAt if a.startsAt and a.startsAt.year > 1 else None
        out.append(Alert(source=p.source, status=a.status, labels={**p.commonLabels, **a.labels},
                         annotations=annotations, summary=summary, starts_at=starts, fingerprint=a.fingerprint))
    return out


def from_generic(g: GenericAlert) -> list[Alert]:
    return [Alert(source=g.source, status=g.status, labels=g.labels, summary=g.summary, starts_at=g.starts_at)]


# --- rules ------------------------------------------------------------------------------

PLACEHOLDER = re.compile(r"\{([a-z_]+)(?:\.([A-Za-z0-9_]+))?(?:\|([^{}]*))?\}")


def fill(template: Any, alert: Alert, rule: AlertRule, where: str) -> Any:
    """The rule's template with the alert's values; BadRequest naming a missing label."""
    if isinstance(template, dict):
        return {k: fill(v, alert, rule, f"{where}.{k}") for k, v in template.items()}
    if isinstance(template, list):
        return [fill(v, alert, rule, f"{where}[{i}]") for i, v in enumerate(template)]
    if not isinstance(template, str):
        return template
    plain = {"alertname": alert.name, "summary": alert.summary, "source": alert.source, "rule": rule.name}

    def one(m: re.Match) -> str:
        scope, name, fallback = m.group(1), m.group(2), m.group(3)
        if scope in ("labels", "annotations") and name:
            value = getattr(alert, scope).get(name) or fallback
            if value is None:
                raise BadRequest(
                    f"alert rule {rule.name!r} fills {where} from {scope[:-1]} {name!r}, which this alert lacks "
                    f"(its labels: {', '.join(f'{k}={v}' for k, v in sorted(alert.labels.items())) or 'none'}); "
                    f"add the {scope[:-1]} to the alert or a fallback to the rule: {{{scope}.{name}|...}}",
                    [(where, f"missing {scope[:-1]} {name}")])
            return value
        if scope in plain and not name:
            return plain[scope] or (fallback or "")
        raise BadRequest(f"alert rule {rule.name!r}: {where} has an unknown placeholder {m.group(0)!r} "
                         "(known: {labels.NAME}, {annotations.NAME}, {alertname}, {summary}, {source}, {rule})",
                         [(where, "unknown placeholder")])

    return PLACEHOLDER.sub(one, template)


class Outcome(BaseModel):
    alert: str
    fingerprint: str = ""
    outcome: Literal["started", "joined", "handled", "declined", "resolved", "no_rule", "invalid", "error"]
    message: str
    rule: str = ""
    kind: str = ""
    target: str = ""
    workflow_id: str = ""
    run_id: str = ""


# --- the service ------------------------------------------------------------------------

class ReceiverConfig(BaseModel):
    task_queue: str
    catalog_path: Path
    token: SecretStr | None = None
    hmac_secret: SecretStr | None = None
    max_body: int = MAX_BODY


class Unauthorized(Exception):
    pass


class Refused(Exception):
    def __init__(self, status: int, error: str, problems: list[str] | None = None) -> None:
        super().__init__(error)
        self.status, self.error, self.problems = status, error, problems or []


class Receiver:
    def __init__(self, client: Client, config: ReceiverConfig) -> None:
        if config.token is None and config.hmac_secret is None:
            raise ValueError(NO_AUTH)
        self.client, self.config = client, config
        self.api = Rollbacks(client, config.task_queue, config.catalog_path)

    # --- checks, in order: size, authentication, JSON, schema ---

    async def body(self, request: Request) -> bytes:
        limit = self.config.max_body
        length = request.headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                raise Refused(400, f"Content-Length {length!r} is not a number")
            if int(length) > limit:
                raise Refused(413, f"body is {int(length)} bytes; the limit is {limit} bytes "
                                   "(ROLLBACK_RECEIVER_MAX_BODY): send fewer alerts per request")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise Refused(413, f"body is over {limit} bytes, the limit (ROLLBACK_RECEIVER_MAX_BODY): "
                                   "send fewer alerts per request")
            chunks.append(chunk)
        return b"".join(chunks)

    def authenticate(self, request: Request, body: bytes) -> None:
        """Bearer token or HMAC signature, compared in constant time. Never logs either."""
        token, secret = self.config.token, self.config.hmac_secret
        auth = request.headers.get("authorization", "")
        if token is not None and auth[:7].lower() == "bearer " and hmac.compare_digest(
                auth[7:].strip().encode(), token.get_secret_value().encode()):
            return
        signature = request.headers.get("x-signature", "").strip()
        if secret is not None and signature:
            given = signature[7:] if signature[:7].lower() == "sha256=" else signature  # bare hex too (Grafana)
            expected = hmac.new(secret.get_secret_value().encode(), body, hashlib.sha256).hexdigest()
            if hmac.compare_digest(given.lower().encode(), expected.encode()):
                return
        raise Unauthorized()

    def unauthorized(self) -> JSONResponse:
        ways = ([("Authorization: Bearer <token>")] if self.config.token else []) + \
               (["X-Signature: sha256=<hex HMAC-SHA256 of the raw body>"] if self.config.hmac_secret else [])
        return JSONResponse({"error": "unauthorized: send " + " or ".join(ways), "started": 0}, status_code=401,
                            headers={"WWW-Authenticate": "Bearer"} if self.config.token else None)

    @staticmethod
    def parse(body: bytes, model: type[BaseModel], what: str) -> BaseModel:
        try:
            data = json.loads(body)
        except UnicodeDecodeError:
            raise Refused(400, "body is not UTF-8 text; send JSON") from None
        except json.JSONDecodeError as e:
            raise Refused(400, f"body is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
        try:
            return model.model_validate(data)
        except ValidationError as e:
            problems = [f"{'.'.join(str(p) for p in x['loc']) or 'body'}: {x['msg'].removeprefix('Value error, ')}"
                        for x in e.errors()]
            raise Refused(422, f"invalid {what}: " + "; ".join(problems), problems) from None

    # --- alerts to rollbacks ---

    async def act(self, alert: Alert, rules: list[AlertRule]) -> Outcome:
        base = dict(alert=alert.name, fingerprint=alert.fingerprint)
        if alert.status != "firing":
            return Outcome(**base, outcome="resolved", message="resolved: a resolved alert starts nothing")
        rule = next((r for r in rules if r.matches(alert.labels)), None)
        if rule is None:
            return Outcome(**base, outcome="no_rule",
                           message="no alert rule in the catalog matches this alert's labels: nothing started")
        base.update(rule=rule.name, kind=rule.kind)
        try:
            fields = fill(rule.input, alert, rule, "input")
            fields.update(severity=rule.severity.of(alert.labels), requested_by=f"{alert.source}:{rule.name}",
                          reason=fill(rule.reason, alert, rule, "reason")[:500] or f"{alert.source} alert")
            evidence = Evidence(source=alert.source, summary=alert.summary[:500], labels=alert.labels,
                                at=alert.starts_at or datetime.now(timezone.utc))
            started = await self.api.start_or_join(rule.kind, fields, evidence, not_before=alert.starts_at)
        except BadRequest as e:
            return Outcome(**base, outcome="invalid", message=str(e))
        except Exception as e:  # Temporal unreachable or refusing: the sender should retry (503)
            log.error("could not start or join a rollback", alert=alert.name, rule=rule.name, error=str(e),
                      exc_info=not isinstance(e, RPCError))
            return Outcome(**base, outcome="error", message=f"Temporal did not take it: {e}; retry")
        return Outcome(**base, outcome=started.outcome, message=started.message, target=started.target,
                       workflow_id=started.workflow_id, run_id=started.run_id)

    async def receive(self, request: Request, model: type[BaseModel], what: str) -> JSONResponse:
        try:
            body = await self.body(request)
            self.authenticate(request, body)
            payload = self.parse(body, model, what)
            rules = read_catalog(self.config.catalog_path, strict=True).alert_rules  # type: ignore[union-attr]
        except Unauthorized:
            log.warning("alert refused: not authenticated", path=request.url.path,
                        client=request.client.host if request.client else "")
            return self.unauthorized()
        except Refused as e:
            log.warning("alert refused", path=request.url.path, status=e.status, error=e.error)
            return JSONResponse({"error": e.error, "problems": e.problems, "started": 0}, status_code=e.status)
        except CatalogError as e:
            log.error("catalog unreadable", error=str(e))
            return JSONResponse({"error": f"the receiver's catalog is unreadable: {e}", "started": 0},
                                status_code=503)
        alerts = from_alertmanager(payload) if isinstance(payload, AlertmanagerPayload) else \
            from_generic(payload)  # type: ignore[arg-type]
        gate = asyncio.Semaphore(CONCURRENCY)

        async def one(a: Alert) -> Outcome:
            async with gate:
                return await self.act(a, rules)

        results = await asyncio.gather(*(one(a) for a in alerts))
        counts = {k: sum(1 for r in results if r.outcome == k) for k in
                  ("started", "joined", "handled", "declined", "resolved", "no_rule", "invalid", "error")}
        status = 503 if counts["error"] else \
            422 if counts["invalid"] and not (counts["started"] or counts["joined"]) else 200
        log.info("alerts received", path=request.url.path, status=status, alerts=len(results),
                 **{k: v for k, v in counts.items() if v},
                 workflows=sorted({r.workflow_id for r in results if r.workflow_id}))
        return JSONResponse({"received": len(results), **counts,
                             "results": [r.model_dump() for r in results]}, status_code=status)


def create_app(client: Client, config: ReceiverConfig) -> FastAPI:
    receiver = Receiver(client, config)
    app = FastAPI(title="rollback alert receiver", docs_url=None, redoc_url=None, openapi_url=None)

    @app.post("/alerts/alertmanager")
    async def alertmanager(request: Request) -> JSONResponse:
        return await receiver.receive(request, AlertmanagerPayload, "Alertmanager payload (version 4)")

    @app.post("/alerts/generic")
    async def generic(request: Request) -> JSONResponse:
        return await receiver.receive(request, GenericAlert, "generic alert")

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        try:
            await client.workflow_service.get_system_info(GetSystemInfoRequest(), timeout=timedelta(seconds=2))
        except RPCError as e:
            return JSONResponse({"status": "unavailable", "temporal": f"unreachable: {e.message}"}, status_code=503)
        return JSONResponse({"status": "ok", "temporal": "reachable", "task_queue": config.task_queue})

    app.state.receiver = receiver
    return app


async def main() -> int:
    import uvicorn

    from common.logging import configure
    from common.preflight import preflight
    from common.settings import ModeError, Settings, describe_settings_error, resolve_mode

    try:
        settings = Settings()
        mode = resolve_mode(settings)  # the same catalog as the worker's, in every mode
    except (ValidationError, ModeError) as e:
        print(f"the alert receiver cannot start: "
              f"{describe_settings_error(e) if isinstance(e, ValidationError) else e}", file=sys.stderr)
        return 2
    configure(settings.log_format, settings.log_level)
    # Authentication, secrets, catalog (alert rules included), Temporal, namespace, search attributes.
    report = await preflight(settings, mode, "receiver")
    if not report.ok:
        print(report.render("the alert receiver"), file=sys.stderr)
        return report.exit_code
    catalog_path, client = mode.catalog, report.client
    assert client is not None
    config = ReceiverConfig(task_queue=settings.task_queue, catalog_path=catalog_path,
                            token=settings.receiver_token, hmac_secret=settings.receiver_hmac_secret,
                            max_body=settings.receiver_max_body)
    app = create_app(client, config)
    auth = " and ".join(n for n, v in (("bearer token", config.token), ("HMAC signature", config.hmac_secret)) if v)
    log.info("receiver listening", url=f"http://{settings.receiver_host}:{settings.receiver_port}",
             task_queue=settings.task_queue, catalog=str(catalog_path), auth=auth,
             max_body=config.max_body)
    server = uvicorn.Server(uvicorn.Config(app, host=settings.receiver_host, port=settings.receiver_port,
                                           log_config=None, access_log=False))
    await server.serve()
    return 0


if __name__ == "__main__":
    code = asyncio.run(main())
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # as starter.py: skip the SDK's interpreter-teardown crash (temporalio/sdk-python#300)
