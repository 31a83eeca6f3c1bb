"""Notifications: the #incidents channel (Slack incoming webhook). Never blocks a rollback.

An approval request carries Approve / Reject buttons (Block Kit) whose value names the workflow
run; Slack sends the click to the receiver's ``POST /slack/interactions``, and the worker checks
its signature before it counts (activities/identity.py). With ``identity.mode: unverified`` in the
catalog, every notification says that approvals are not verified.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

import httpx
from pydantic import BaseModel, SecretStr
from slack_sdk.models.blocks import ActionsBlock, ButtonElement, SectionBlock
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.http_client import shared_async

NOT_VERIFIED = "[approvals are not verified] "


class Notification(BaseModel):
    text: str
    workflow_id: str = ""
    run_id: str = ""
    buttons: bool = False  # an approval request: Approve / Reject buttons for this run (Slack interactive)


def message(note: Notification, verified: bool = True) -> dict:
    """The Slack message: the text, and for an approval request the buttons (value: <workflow id>/<run id>)."""
    text = note.text if verified else NOT_VERIFIED + note.text
    body: dict = {"text": text}
    if note.buttons and note.workflow_id:
        value = f"{note.workflow_id}/{note.run_id}"
        body["blocks"] = [b.to_dict() for b in (
            SectionBlock(text=text[:3000]),
            ActionsBlock(block_id="rollback-decision", elements=[
                ButtonElement(text="Approve", action_id="approve", value=value, style="primary"),
                ButtonElement(text="Reject", action_id="reject", value=value, style="danger"),
            ]))]
    return body


class NotifyActivities:
    def __init__(self, slack_webhook_url: SecretStr | None, web_ui_url: str | None = None,
                 dashboard_url: str | None = None, namespace: str = "default",
                 catalog_path: Path | None = None) -> None:
        self._webhook = slack_webhook_url
        self._ui, self._dashboard, self._namespace = web_ui_url, dashboard_url, namespace
        self._catalog_path = catalog_path

    def _links(self, note: Notification) -> str:
        """Where a person follows the rollback: its Web UI page and the dashboard."""
        links = []
        if self._ui and note.workflow_id:
            links.append(f"Web UI: {self._ui.rstrip('/')}/namespaces/{quote(self._namespace)}/workflows/"
                         f"{quote(note.workflow_id, safe='')}")
        if self._dashboard:
            links.append(f"Dashboard: {self._dashboard}")
        return ("\n" + " | ".join(links)) if links else ""

    def _verified(self) -> bool:
        from common.api import read_catalog  # cached until the file changes

        catalog = read_catalog(self._catalog_path)
        return catalog is None or catalog.identity is None or catalog.identity.verified

    @activity.defn
    async def notify(self, note: Notification) -> str:
        """Post to the incidents channel with links; returns "sent" or "not configured" (logged only)."""
        note = note.model_copy(update={"text": note.text + self._links(note)})
        body = message(note, self._verified())
        activity.logger.info("notification: %s", body["text"])
        if self._webhook is None:
            return "not configured"
        try:
            resp = await shared_async().post(self._webhook.get_secret_value(), json=body, timeout=10)
        except httpx.HTTPError as e:
            # The webhook URL is a secret: name the error, never the URL.
            raise ApplicationError(f"Slack webhook unreachable: {type(e).__name__}", type="NotifyFailed") from None
        if resp.status_code >= 400:
            raise ApplicationError(f"Slack webhook answered {resp.status_code}", type="NotifyFailed",
                                   non_retryable=400 <= resp.status_code < 500 and resp.status_code != 429)
        return "sent"
