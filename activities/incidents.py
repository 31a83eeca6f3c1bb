"""The runbook's Post-Rollback Actions towards outside systems: the status page
(Statuspage-style API), the incident ticket (a generic HTTP endpoint, or a PagerDuty Events v2
``change`` event: a record, never a page; the short- and long-term follow-ups as reminders), and
the pages of an approval step that passed its response time (PagerDuty Events v2 ``trigger`` /
``resolve``). Tokens never leave here.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Literal

import httpx
from pydantic import BaseModel, SecretStr
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.http_client import shared_sync

# Runbook: Post-Rollback Actions, "Short-term (< 24 hours)" and "Long-term (< 1 week)".
FOLLOW_UPS = [
    ("Root cause analysis", timedelta(hours=24)),
    ("Document lessons learned", timedelta(hours=24)),
    ("Update deployment checklist", timedelta(hours=24)),
    ("Schedule post-mortem meeting", timedelta(hours=24)),
    ("Conduct post-mortem", timedelta(days=7)),
    ("Create action items to prevent recurrence", timedelta(days=7)),
    ("Update runbooks and documentation", timedelta(days=7)),
    ("Improve monitoring and alerting", timedelta(days=7)),
    ("Add new tests to catch issue earlier", timedelta(days=7)),
]


class IncidentNote(BaseModel):
    workflow_id: str
    title: str  # e.g. "service rollback of api: succeeded"
    outcome: str  # the phase
    severity: str
    body: str  # Markdown: the report
    at: datetime


class Page(BaseModel):
    """A PagerDuty Events v2 alert event: one dedup key per rollback run (trigger, then resolve)."""

    action: Literal["trigger", "resolve"]
    dedup_key: str
    secondary: bool = False  # page the secondary on-call (its own routing key)
    summary: str = ""
    severity: Literal["critical", "error", "warning", "info"] = "error"
    workflow_id: str = ""


class IncidentSettings(BaseModel):
    statuspage_url: str | None = None  # e.g. https://api.statuspage.io/v1/pages/<page_id>
    statuspage_token: SecretStr | None = None
    ticket_url: str | None = None  # generic: POST JSON here
    ticket_token: SecretStr | None = None
    pagerduty_routing_key: SecretStr | None = None
    pagerduty_secondary_routing_key: SecretStr | None = None
    pagerduty_url: str = "https://events.pagerduty.com/v2/enqueue"

    @property
    def pagerduty_change_url(self) -> str:
        """Events v2 change events: .../v2/change/enqueue beside .../v2/enqueue."""
        base = self.pagerduty_url.rstrip("/")
        return base.removesuffix("/v2/enqueue") + "/v2/change/enqueue"


def _post(url: str, payload: dict, headers: dict[str, str], what: str) -> dict:
    try:
        resp = shared_sync().post(url, json=payload, headers=headers, timeout=10)
    except httpx.HTTPError as e:
        raise ApplicationError(f"{what}: {type(e).__name__}", type="NotifyFailed") from None
    if resp.status_code >= 400:
        raise ApplicationError(f"{what}: answered {resp.status_code}", type="NotifyFailed",
                               non_retryable=400 <= resp.status_code < 500 and resp.status_code != 429)
    try:
        return resp.json()
    except ValueError:
        return {}


class IncidentActivities:
    def __init__(self, settings: IncidentSettings) -> None:
        self._s = settings

    @activity.defn
    def update_status_page(self, note: IncidentNote) -> str:
        """Post an incident update ("resolved" when the rollback succeeded, else "identified")."""
        if not self._s.statuspage_url:
            return "not configured"
        status = "resolved" if note.outcome == "succeeded" else "identified"
        headers = {"Authorization": f"OAuth {self._s.statuspage_token.get_secret_value()}"} \
            if self._s.statuspage_token else {}
        body = _post(f"{self._s.statuspage_url.rstrip('/')}/incidents", {"incident": {
            "name": note.title, "status": status, "impact_override": "minor",
            "body": f"We rolled back a change ({note.severity}). Outcome: {note.outcome}.",
            "metadata": {"rollback": {"workflow_id": note.workflow_id}}}}, headers, "status page")
        return f"status page incident {body.get('id', '')} ({status})".strip()

    @activity.defn
    def create_ticket(self, note: IncidentNote) -> str:
        """The follow-up record, with the follow-ups as dated reminders: a ticket (generic endpoint)
        or else a PagerDuty change event. Never a page: a finished rollback wakes nobody up."""
        follow_ups = [{"what": what, "due": (note.at + after).isoformat()} for what, after in FOLLOW_UPS]
        if self._s.ticket_url:
            headers = {"Authorization": f"Bearer {self._s.ticket_token.get_secret_value()}"} \
                if self._s.ticket_token else {}
            body = _post(self._s.ticket_url, {
                "title": note.title, "severity": note.severity, "outcome": note.outcome,
                "external_id": note.workflow_id, "description": note.body, "follow_ups": follow_ups,
            }, headers, "ticket endpoint")
            return f"ticket {body.get('id', note.workflow_id)}"
        if self._s.pagerduty_routing_key:
            _post(self._s.pagerduty_change_url, {
                "routing_key": self._s.pagerduty_routing_key.get_secret_value(),
                "payload": {"summary": note.title[:1024], "timestamp": note.at.isoformat(),
                            "source": "rollback-orchestrator",
                            "custom_details": {"workflow_id": note.workflow_id, "severity": note.severity,
                                               "outcome": note.outcome, "follow_ups": follow_ups,
                                               "timeline": note.body[:16_000]}},
            }, {}, "PagerDuty change event")
            return f"PagerDuty change event for {note.workflow_id}"
        return "not configured"

    @activity.defn
    def page(self, page: Page) -> str:
        """Trigger or resolve the page of an approval step that passed its response time."""
        key = self._s.pagerduty_secondary_routing_key if page.secondary else self._s.pagerduty_routing_key
        if key is None:
            return ("not configured (ROLLBACK_PAGERDUTY_SECONDARY_ROUTING_KEY)" if page.secondary
                    else "not configured (ROLLBACK_PAGERDUTY_ROUTING_KEY)")
        event: dict = {"routing_key": key.get_secret_value(), "event_action": page.action,
                       "dedup_key": page.dedup_key}
        if page.action == "trigger":
            event["payload"] = {"summary": page.summary[:1024], "source": "rollback-orchestrator",
                                "severity": page.severity, "custom_details": {"workflow_id": page.workflow_id}}
        _post(self._s.pagerduty_url, event, {}, "PagerDuty")
        who = "secondary" if page.secondary else "primary"
        return f"PagerDuty {page.action} ({who}, dedup key {page.dedup_key})"
