"""receiver.py: the alert receiver. Firing alerts become rollbacks through the catalog's
``alert_rules`` (runbook: Common Rollback Scenarios); ``make receiver`` runs it.

    POST /alerts/alertmanager   Prometheus Alertmanager webhook, payload version "4"
                                (Grafana's webhook contact point: the same shape, version "1")
    POST /alerts/generic        {"source": "ci", "status": "firing", "labels": {...}, "summary": "..."}
    POST /slack/interactions    Slack's Approve / Reject button callbacks (signed by Slack)
    GET  /healthz               200 when Temporal answers

Every alert request is authenticated: ``Authorization: Bearer <token>`` or ``X-Signature:
sha256=<hex HMAC-SHA256 of "<X-Signature-Timestamp>:<raw body>">`` with ``X-Signature-Timestamp``
(unix seconds) within 5 minutes of now, so a captured request cannot be replayed later. The
Alertmanager endpoint takes ROLLBACK_RECEIVER_TOKEN / ROLLBACK_RECEIVER_HMAC_SECRET; the generic
one takes each source's own credentials (ROLLBACK_RECEIVER_SOURCES) and only as that source, so
``synthetics`` can never speak as ``alertmanager``. An empty secret is no secret. Anything else:
401, nothing starts. A body over ROLLBACK_RECEIVER_MAX_BODY (256 KiB) is 413, bad or hostile JSON
(e.g. nested thousands deep) 400, an unknown or missing field 422: nothing starts. Resolved alerts
start nothing.

Slack callbacks are checked here (ROLLBACK_SLACK_SIGNING_SECRET, Slack's v0 scheme, 5-minute
window) and again by the worker, which alone decides whether the decision counts; the message is
then updated with the outcome through Slack's ``response_url``.

For each firing alert the first matching rule chooses the procedure and its input; the
rollback is started or, if one of that target is running, joined (signal-with-start of
``add_evidence`` on ``rollback-<kind>-<target>``), so an alert storm is one rollback whose
status lists every repeat as evidence. ``requested_by`` is ``<source>:<rule>``
(e.g. ``alertmanager:high-error-rate``): the policy's ``automation_may_proceed`` decides
whether it proceeds without waiting for people, and the start carries the receiver's proof of it
(signed with ROLLBACK_AUTOMATION_KEY, which the worker checks). The answer says, per alert, which
workflow was started or joined. The receiver only starts and signals: it answers in milliseconds.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import re
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import parse_qs

import structlog
import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from slack_sdk.signature import SignatureVerifier
from temporalio.api.workflowservice.v1 import GetSystemInfoRequest
from temporalio.client import Client
from temporalio.service import RPCError

from common.api import BadRequest, RollbackError, Rollbacks, read_catalog
from common.catalog import AlertRule, CatalogError
from common.identity import SLACK_WINDOW_SECONDS, SlackCallback, ago
from common.models import MAX_LABELS, DecisionRequest, Evidence, Label, LabelKey
from common.settings import SourceAuth, _unset_if_empty

log = structlog.get_logger("receiver")

MAX_BODY = 256 * 1024
CONCURRENCY = 16  # alerts of one payload started/joined at once
SOURCE_PATTERN = r"^[a-z0-9][a-z0-9._-]*$"
NO_AUTH = ("set ROLLBACK_RECEIVER_TOKEN (bearer token) or ROLLBACK_RECEIVER_HMAC_SECRET (HMAC-SHA256 "
           "signatures), or both, for Alertmanager/Grafana, and/or ROLLBACK_RECEIVER_SOURCES for the generic "
           "endpoint: the receiver never accepts unauthenticated alerts (an empty value counts as unset)")
WINDOW_SECONDS = 5 * 60  # a signed request older (or newer) than this is refused: no replays
RESERVED_SOURCES = ("alertmanager", "grafana", "auto-rollback")  # named by their own endpoints, never generic


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

def load_json(body: bytes | str) -> Any:
    """JSON, or Refused(400) saying what is wrong: also for hostile input (nesting thousands deep,
    numbers with thousands of digits) that would otherwise end as a 500."""
    try:
        return json.loads(body)
    except UnicodeDecodeError:
        raise Refused(400, "body is not UTF-8 text; send JSON") from None
    except json.JSONDecodeError as e:
        raise Refused(400, f"body is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except RecursionError:
        raise Refused(400, "body is nested too deeply to be an alert") from None
    except ValueError as e:  # e.g. an integer longer than Python converts
        raise Refused(400, f"body is not acceptable JSON: {e}") from None


class ReceiverConfig(BaseModel):
    task_queue: str
    catalog_path: Path
    token: SecretStr | None = None
    hmac_secret: SecretStr | None = None
    max_body: int = MAX_BODY
    sources: dict[str, SourceAuth] = Field(default_factory=dict, description="generic endpoint: source -> credentials")
    automation_key: SecretStr | None = None  # signs every start for the worker (policy.automation_may_proceed)
    slack_signing_secret: SecretStr | None = None
    slack_response_url_prefixes: list[str] = Field(default_factory=lambda: ["https://hooks.slack.com/"])

    @field_validator("token", "hmac_secret", "automation_key", "slack_signing_secret", mode="before")
    @classmethod
    def _empty_is_unset(cls, v: Any) -> Any:
        return _unset_if_empty(v)

    @field_validator("sources")
    @classmethod
    def _own_names(cls, v: dict[str, SourceAuth]) -> dict[str, SourceAuth]:
        for name in v:
            if name in RESERVED_SOURCES or not re.match(SOURCE_PATTERN, name):
                raise ValueError(f"ROLLBACK_RECEIVER_SOURCES: {name!r} cannot be a generic source (lower-case letters, "
                                 f"digits, .-_; not {', '.join(RESERVED_SOURCES)}, which have their own endpoints)")
        return v

    @property
    def any_auth(self) -> bool:
        return self.token is not None or self.hmac_secret is not None or bool(self.sources)


class Unauthorized(Exception):
    """Not authenticated; the message (never a secret) says what was wrong."""


class Refused(Exception):
    def __init__(self, status: int, error: str, problems: list[str] | None = None) -> None:
        super().__init__(error)
        self.status, self.error, self.problems = status, error, problems or []


class Receiver:
    def __init__(self, client: Client, config: ReceiverConfig) -> None:
        if not config.any_auth:
            raise ValueError(NO_AUTH)
        self.client, self.config = client, config
        self.api = Rollbacks(client, config.task_queue, config.catalog_path, automation_key=config.automation_key,
                             via="receiver")

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

    @staticmethod
    def authenticate(request: Request, body: bytes, token: SecretStr | None, secret: SecretStr | None) -> bool:
        """Bearer token or timestamped HMAC signature, compared in constant time. Never logs either.
        False: neither matches; Unauthorized: a signature outside the 5-minute window."""
        auth = request.headers.get("authorization", "")
        if token is not None and auth[:7].lower() == "bearer " and hmac.compare_digest(
                auth[7:].strip().encode(), token.get_secret_value().encode()):
            return True
        signature = request.headers.get("x-signature", "").strip()
        if secret is None or not signature:
            return False
        stamp = request.headers.get("x-signature-timestamp", "").strip()
        given = signature[7:] if signature[:7].lower() == "sha256=" else signature  # bare hex too (Grafana)
        expected = hmac.new(secret.get_secret_value().encode(), stamp.encode() + b":" + body,
                            hashlib.sha256).hexdigest()
        if not hmac.compare_digest(given.lower().encode(), expected.encode()):
            return False
        age = time.time() - int(stamp) if stamp.isdigit() else None
        if age is None or abs(age) > WINDOW_SECONDS:
            raise Unauthorized(f"X-Signature-Timestamp {'is missing' if age is None else 'is ' + ago(age)}: signed "
                               "requests are accepted for 5 minutes (a replay, or a clock far off)")
        return True

    def check_alertmanager(self, request: Request, body: bytes) -> None:
        if not self.authenticate(request, body, self.config.token, self.config.hmac_secret):
            raise Unauthorized()

    def check_source(self, request: Request, body: bytes) -> str:
        """The generic source whose own credentials this request carries."""
        for name, auth in self.config.sources.items():
            if self.authenticate(request, body, auth.token, auth.hmac_secret):
                return name
        raise Unauthorized()

    def unauthorized(self, generic: bool, why: str = "") -> JSONResponse:
        hmac_way = "X-Signature: sha256=<hex HMAC-SHA256 of '<X-Signature-Timestamp>:<raw body>'>"
        if generic:
            ways = ["Authorization: Bearer <the source's token>", f"{hmac_way} with the source's secret"] \
                if self.config.sources else []
            fix = "" if ways else " (none is configured: set ROLLBACK_RECEIVER_SOURCES)"
        else:
            ways = (["Authorization: Bearer <token>"] if self.config.token else []) + \
                   ([hmac_way] if self.config.hmac_secret else [])
            fix = "" if ways else " (none is configured: set ROLLBACK_RECEIVER_TOKEN or ROLLBACK_RECEIVER_HMAC_SECRET)"
        error = (f"unauthorized: {why}" if why else "unauthorized: send " + " or ".join(ways)) + fix
        return JSONResponse({"error": error, "started": 0}, status_code=401, headers={"WWW-Authenticate": "Bearer"})

    @staticmethod
    def parse(body: bytes, model: type[BaseModel], what: str) -> BaseModel:
        data = load_json(body)
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
        generic = model is GenericAlert
        try:
            body = await self.body(request)
            if generic:
                source = self.check_source(request, body)
            else:
                self.check_alertmanager(request, body)
            payload = self.parse(body, model, what)
            if generic and payload.source != source:  # type: ignore[attr-defined]
                raise Refused(403, f"these credentials are source {source!r}'s; this alert says source "
                                   f"{payload.source!r}: a source sends only as itself "  # type: ignore[attr-defined]
                                   "(ROLLBACK_RECEIVER_SOURCES)")
            rules = read_catalog(self.config.catalog_path, strict=True).alert_rules  # type: ignore[union-attr]
        except Unauthorized as e:
            log.warning("alert refused: not authenticated", path=request.url.path, why=str(e),
                        client=request.client.host if request.client else "")
            return self.unauthorized(generic, str(e))
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


class SlackAction(BaseModel):
    """What a Slack button click asks: who pressed what, on which rollback run."""

    user: str
    decision: Literal["approve", "reject"]
    workflow_id: str
    response_url: str = ""
    message: dict[str, Any] = Field(default_factory=dict)


def slack_action(form: str) -> SlackAction | None:
    """The button click in a block_actions payload; None for other interactions. Refused(400) if garbled."""
    try:
        payload = load_json(parse_qs(form).get("payload", [""])[0])
        if not isinstance(payload, dict) or payload.get("type") != "block_actions":
            return None
        action = payload["actions"][0]
        if action.get("action_id") not in ("approve", "reject"):
            return None
        return SlackAction(user=payload["user"]["id"], decision=action["action_id"],
                           workflow_id=str(action.get("value", "")).rsplit("/", 1)[0],
                           response_url=payload.get("response_url") or "", message=payload.get("message") or {})
    except (KeyError, IndexError, TypeError, AttributeError, ValidationError):
        raise Refused(400, "not a Slack block_actions payload with an Approve/Reject button") from None


class SlackApprovals:
    """``POST /slack/interactions``: Slack's signature checked (v0, 5-minute window), then the
    click becomes the ``decide`` update with the callback as its proof, which the worker checks
    again and alone decides on; Slack gets its answer at once, the message its outcome after."""

    def __init__(self, receiver: "Receiver") -> None:
        self.r = receiver
        self.tasks: set[asyncio.Task] = set()

    async def receive(self, request: Request) -> JSONResponse:
        secret = self.r.config.slack_signing_secret
        if secret is None:
            return JSONResponse({"error": "Slack approvals are not configured here: set ROLLBACK_SLACK_SIGNING_SECRET"},
                                status_code=404)
        try:
            body = await self.r.body(request)
            form = body.decode("utf-8")
            stamp = request.headers.get("x-slack-request-timestamp", "")
            signature = request.headers.get("x-slack-signature", "")
            age = time.time() - int(stamp) if stamp.isdigit() else None
            if age is None or abs(age) > SLACK_WINDOW_SECONDS:
                raise Unauthorized("X-Slack-Request-Timestamp " + ("is missing" if age is None else f"is {ago(age)}")
                                   + ": Slack requests are accepted for 5 minutes (a replay?)")
            if not SignatureVerifier(secret.get_secret_value()).is_valid(form, stamp, signature):
                raise Unauthorized("X-Slack-Signature does not match the body (not signed by our Slack app)")
            click = slack_action(form)
        except UnicodeDecodeError:
            return JSONResponse({"error": "body is not UTF-8 text"}, status_code=400)
        except Unauthorized as e:
            log.warning("Slack callback refused", why=str(e))
            return JSONResponse({"error": f"unauthorized: {e}"}, status_code=401)
        except Refused as e:
            return JSONResponse({"error": e.error}, status_code=e.status)
        if click is None:
            return JSONResponse({}, status_code=200)  # another kind of interaction: nothing to do
        task = asyncio.create_task(self.decide(click, SlackCallback(body=form, timestamp=stamp, signature=signature)))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return JSONResponse({}, status_code=200)  # Slack wants an answer within 3 s

    async def decide(self, click: SlackAction, proof: SlackCallback) -> None:
        catalog = read_catalog(self.r.config.catalog_path)
        person = catalog.people.by_slack_id(click.user) if catalog else None
        req = DecisionRequest(decision=click.decision, approver=person or f"slack:{click.user}", slack=proof)
        handle = self.r.client.get_workflow_handle(click.workflow_id)
        try:
            outcome = await self.r.api.decide_on(handle, req)
            counted, text, done = outcome.counted, outcome.message, outcome.approvals.satisfied or \
                outcome.approvals.rejected_by is not None
        except RollbackError as e:
            counted, text, done = False, str(e), False
        except RPCError as e:
            counted, text, done = False, f"Temporal did not take it: {e.message}", False
        log.info("Slack decision", workflow_id=click.workflow_id, decision=click.decision, person=req.approver,
                 counted=counted, message=text)
        await self.answer(click, counted, text, done)

    async def answer(self, click: SlackAction, counted: bool, text: str, done: bool) -> None:
        """The outcome on the message (counted), or to the presser alone (not counted)."""
        url = click.response_url
        if not any(url.startswith(p) for p in self.r.config.slack_response_url_prefixes):
            log.warning("Slack response_url not answered: not under ROLLBACK_SLACK_RESPONSE_URL_PREFIXES")
            return
        if counted:
            blocks = [b for b in click.message.get("blocks", []) if not (done and b.get("type") == "actions")]
            line = f"*{text}* (verified: Slack user {click.user})"
            body = {"replace_original": True, "text": f"{click.message.get('text', '')}\n{line}",
                    "blocks": blocks + [{"type": "context", "elements": [{"type": "mrkdwn", "text": line}]}]}
        else:
            body = {"replace_original": False, "response_type": "ephemeral", "text": f"NOT counted: {text}"}
        try:
            async with httpx.AsyncClient(timeout=10) as http:
                await http.post(url, json=body)
        except httpx.HTTPError as e:
            log.warning("could not update the Slack message", error=type(e).__name__)


def create_app(client: Client, config: ReceiverConfig) -> FastAPI:
    receiver = Receiver(client, config)
    app = FastAPI(title="rollback alert receiver", docs_url=None, redoc_url=None, openapi_url=None)

    @app.post("/alerts/alertmanager")
    async def alertmanager(request: Request) -> JSONResponse:
        return await receiver.receive(request, AlertmanagerPayload, "Alertmanager payload (version 4)")

    @app.post("/alerts/generic")
    async def generic(request: Request) -> JSONResponse:
        return await receiver.receive(request, GenericAlert, "generic alert")

    slack = SlackApprovals(receiver)

    @app.post("/slack/interactions")
    async def slack_interactions(request: Request) -> JSONResponse:
        return await slack.receive(request)

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        try:
            await client.workflow_service.get_system_info(GetSystemInfoRequest(), timeout=timedelta(seconds=2))
        except RPCError as e:
            return JSONResponse({"status": "unavailable", "temporal": f"unreachable: {e.message}"}, status_code=503)
        return JSONResponse({"status": "ok", "temporal": "reachable", "task_queue": config.task_queue})

    app.state.receiver, app.state.slack = receiver, slack
    return app


# How long an idle kept-alive connection stays open: longer than the clients' and proxies' own idle
# timeouts (an AWS load balancer's default is 60 s), so they close it, not us. With uvicorn's default of
# 5 s, a request sent on a connection just as we closed it failed with a reset (seen as httpx.ReadError on
# an Alertmanager repeat 5 s after the first post; behind a load balancer, as 502s).
KEEP_ALIVE_SECONDS = 75


def server_config(app: FastAPI, host: str, port: int, **kw: Any) -> Any:
    import uvicorn

    return uvicorn.Config(app, host=host, port=port, log_config=None, access_log=False,
                          timeout_keep_alive=KEEP_ALIVE_SECONDS, **kw)


async def serve_on_a_free_port(app: FastAPI) -> tuple[str, Any, "asyncio.Task[None]"]:
    """The app served by uvicorn in this event loop on a free 127.0.0.1 port (the tests and the bench):
    its base URL, the server (set ``should_exit`` to stop it) and the task to await after that."""
    import uvicorn

    server = uvicorn.Server(server_config(app, "127.0.0.1", 0, lifespan="off"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()  # it could not start: say why
        await asyncio.sleep(0.02)
    return f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}", server, task


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
                            max_body=settings.receiver_max_body, sources=settings.receiver_sources,
                            automation_key=settings.automation_secret(),
                            slack_signing_secret=settings.slack_signing_secret,
                            slack_response_url_prefixes=settings.slack_response_url_prefixes)
    app = create_app(client, config)
    auth = " and ".join(n for n, v in (("bearer token", config.token), ("HMAC signature", config.hmac_secret)) if v)
    if config.automation_key is None:
        log.warning("ROLLBACK_AUTOMATION_KEY is not set: the rollbacks this receiver starts cannot prove they are "
                    "automation, so they wait for approvals like anyone's")
    log.info("receiver listening", url=f"http://{settings.receiver_host}:{settings.receiver_port}",
             task_queue=settings.task_queue, catalog=str(catalog_path), auth=auth or "none (generic sources only)",
             generic_sources=sorted(config.sources), slack=config.slack_signing_secret is not None,
             max_body=config.max_body)
    server = uvicorn.Server(server_config(app, settings.receiver_host, settings.receiver_port))
    await server.serve()
    return 0


if __name__ == "__main__":
    code = asyncio.run(main())
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # as starter.py: skip the SDK's interpreter-teardown crash (temporalio/sdk-python#300)
