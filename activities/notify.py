"""Notifications: the #incidents channel (Slack incoming webhook). Never blocks a rollback."""

from __future__ import annotations

import httpx
from pydantic import BaseModel, SecretStr
from temporalio import activity
from temporalio.exceptions import ApplicationError


class Notification(BaseModel):
    text: str
    workflow_id: str = ""


class NotifyActivities:
    def __init__(self, slack_webhook_url: SecretStr | None) -> None:
        self._webhook = slack_webhook_url

    @activity.defn
    async def notify(self, note: Notification) -> str:
        """Post to the incidents channel; returns "sent" or "not configured" (logged only)."""
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
