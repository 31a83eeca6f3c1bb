"""Notifications: the #incidents channel (Slack incoming webhook). Never blocks a rollback."""

from __future__ import annotations

from urllib.parse import quote

import httpx
from pydantic import BaseModel, SecretStr
from temporalio import activity
from temporalio.exceptions import ApplicationError


class Notification(BaseModel):
    text: str
    workflow_id: str = ""


class NotifyActivities:
    def __init__(self, slack_webhook_url: SecretStr | None, web_ui_url: str | None = None,
                 dashboard_url: str | None = None, namespace: str = "default") -> None:
        self._webhook = slack_webhook_url
        self._ui, self._dashboard, self._namespace = web_ui_url, dashboard_url, namespace

    def _links(self, note: Notification) -> str:
        """Where a person follows the rollback: its Web UI page and the dashboard."""
        links = []
        if self._ui and note.workflow_id:
            links.append(f"Web UI: {self._ui.rstrip('/')}/namespaces/{quote(self._namespace)}/workflows/"
                         f"{quote(note.workflow_id, safe='')}")
        if self._dashboard:
            links.append(f"Dashboard: {self._dashboard}")
        return ("\n" + " | ".join(links)) if links else ""

    @activity.defn
    async def notify(self, note: Notification) -> str:
        """Post to the incidents channel with links; returns "sent" or "not configured" (logged only)."""
        note = note.model_copy(update={"text": note.text + self._links(note)})
        activity.logger.info("notification: %s", note.text)
        if self._webhook is None:
            return "not configured"
        try:
            async with httpx.AsyncClient(timeout=10) as http:
                resp = await http.post(self._webhook.get_secret_value(), json={"text": note.text})
        except httpx.HTTPError as e:
            # The webhook URL is a secret: name the error, never the URL.
            raise ApplicationError(f"Slack webhook unreachable: {type(e).__name__}", type="NotifyFailed") from None
        if resp.status_code >= 400:
            raise ApplicationError(f"Slack webhook answered {resp.status_code}", type="NotifyFailed",
                                   non_retryable=400 <= resp.status_code < 500 and resp.status_code != 429)
        return "sent"
