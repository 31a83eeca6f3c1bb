"""Slack interactive approvals end to end: the approval request posted to #incidents carries Approve /
Reject buttons for its workflow run; Slack's callbacks, signed as Slack signs them (v0: HMAC-SHA256 of
``v0:timestamp:body`` with the app's signing secret, by slack_sdk's own SignatureVerifier), arrive at the
receiver's ``POST /slack/interactions`` over real HTTP; the worker checks them again and alone decides;
the message is updated through ``response_url``. Stale, tampered and unknown-user callbacks count for
nothing and change nothing in AWS. A SEV-0 rollback needs two approvers: both press the button.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from urllib.parse import urlencode

import httpx
from pydantic import SecretStr
from slack_sdk.signature import SignatureVerifier

from common.models import Decision, RollbackStatus, ServiceRollbackInput
from common.settings import Settings
from sandbox.catalog import SLACK_TEAM
from tests.conftest import SLACK_SIGNING_SECRET, id_token
from tests.helpers import new_id, running_revision, wait_for, wait_phase
from tests.support.recorder import Recorder
from tests.test_receiver import serving, terminate
from worker import build_worker
from workflows.service import ServiceRollback

BAD, GOOD = (43, "v1.2.3"), (42, "v1.2.2")


class SlackApp:
    """What Slack sends when someone presses a button of our message (block_actions), signed."""

    def __init__(self, message: dict, responses: str) -> None:
        self.message, self.responses = message, responses
        self.value = next(b for b in message["blocks"] if b["type"] == "actions")["elements"][0]["value"]

    def body(self, user: str, action: str = "approve", value: str | None = None, n: int = 0) -> str:
        payload = {"type": "block_actions", "user": {"id": user, "username": user.lower()},
                   "team": {"id": SLACK_TEAM, "domain": "rastup"}, "api_app_id": "A0ROLLBACKS",
                   "actions": [{"action_id": action, "block_id": "rollback-decision", "type": "button",
                                "value": value or self.value, "action_ts": f"{time.time():.6f}"}],
                   "response_url": f"{self.responses}/{n}", "message": self.message}
        return urlencode({"payload": json.dumps(payload)})

    @staticmethod
    def headers(body: str, at: float | None = None, secret: str = SLACK_SIGNING_SECRET) -> dict[str, str]:
        stamp = str(int(at if at is not None else time.time()))
        return {"X-Slack-Request-Timestamp": stamp, "Content-Type": "application/x-www-form-urlencoded",
                "X-Slack-Signature": SignatureVerifier(secret).generate_signature(timestamp=stamp, body=body)}


async def answered(slack: Recorder, path: str, text: str = "", timeout: float = 30) -> dict:
    """The latest message posted to ``path`` (whose text has ``text``), once one arrives."""
    deadline = time.monotonic() + timeout
    while not (found := [r.body for r in slack.at(path) if text in r.body.get("text", "")]):
        assert time.monotonic() < deadline, f"nothing with {text!r} posted to {path}"
        await asyncio.sleep(0.1)
    return found[-1]


async def test_approvals_from_slack_buttons_are_verified_and_forged_ones_count_for_nothing(
        dev_env, aws, fast_catalog):
    svc = fast_catalog.api
    slack = Recorder().start()
    settings = Settings(ROLLBACK_SLACK_WEBHOOK_URL=SecretStr(f"{slack.url}/webhook"))
    wf_id = new_id("slack")
    try:
        async with build_worker(dev_env.client, settings, fast_catalog.path, task_queue=f"tq-{uuid.uuid4().hex[:8]}") \
                as worker, serving(dev_env.client, fast_catalog, worker.task_queue) as url, \
                httpx.AsyncClient(base_url=url, timeout=30) as http:
            handle = await dev_env.client.start_workflow(ServiceRollback.run, ServiceRollbackInput(
                service=svc, severity="SEV-0", requested_by="zoe", reason="error rate after v1.2.3",
                monitor_minutes=0.05, id_token=id_token("zoe")), id=wf_id, task_queue=worker.task_queue)
            await wait_phase(handle, "awaiting_approval")
            ask = await answered(slack, "/webhook", "needs approval")  # announced alongside the wait, not before
            app = SlackApp(ask, f"{slack.url}/response")
            assert app.value == f"{wf_id}/{handle.result_run_id}"  # the buttons name this run
            post = "/slack/interactions"

            # stale (a replay of a genuine callback 10 minutes later) and tampered: refused at the door
            alice = app.body("U0ALICE")
            stale = await http.post(post, content=alice, headers=app.headers(alice, at=time.time() - 600))
            assert stale.status_code == 401
            assert stale.json()["error"] == ("unauthorized: X-Slack-Request-Timestamp is 10 min ago: Slack requests "
                                             "are accepted for 5 minutes (a replay?)")
            tampered = await http.post(post, content=alice.replace("U0ALICE", "U0BOB"), headers=app.headers(alice))
            assert tampered.status_code == 401 and "does not match the body" in tampered.json()["error"]
            wrong_secret = await http.post(post, content=alice, headers=app.headers(alice, secret="not-ours"))
            assert wrong_secret.status_code == 401
            # signed by Slack, but by someone who is not in the catalog: the worker refuses and says so
            stranger = app.body("U0MALLORY", n=1)
            assert (await http.post(post, content=stranger, headers=app.headers(stranger))).status_code == 200
            said = await answered(slack, "/response/1")
            assert said == {"replace_original": False, "response_type": "ephemeral", "text": (
                "NOT counted: identity not proven: Slack user U0MALLORY is not in the catalog: nobody under people: "
                "has slack_id U0MALLORY")}
            # the Web UI path: a Slack proof pasted into a signal, altered, or for another rollback
            forged_body = alice.replace("U0ALICE", "U0DANA")
            await handle.signal(ServiceRollback.approve, Decision(
                approver="dana", slack={"body": forged_body, "timestamp": app.headers(alice)["X-Slack-Request-Timestamp"],
                                        "signature": app.headers(alice)["X-Slack-Signature"]}))
            other = app.body("U0BOB", value="rollback-service-elsewhere/some-run")
            await handle.signal(ServiceRollback.approve, Decision(approver="bob", slack={
                "body": other, "timestamp": app.headers(other)["X-Slack-Request-Timestamp"],
                "signature": app.headers(other)["X-Slack-Signature"]}))
            s = await wait_for(handle, lambda s: len(s.approvals.refused) == 3, what="three refusals")
            assert [r.reason for r in s.approvals.refused] == [
                "identity not proven: Slack user U0MALLORY is not in the catalog: nobody under people: has slack_id "
                "U0MALLORY",
                "identity not proven: Slack signature does not match the body (tampered, or not from our Slack app)",
                f"identity not proven: the Slack button was for 'rollback-service-elsewhere/some-run', not this "
                f"rollback ({wf_id}/{handle.result_run_id})"]
            assert s.approvals.received == [] and s.phase.value == "awaiting_approval"
            assert aws.faults.calls["UpdateService"] == 0 and running_revision(aws) == BAD

            # alice presses Approve: counted; the message says so and keeps its buttons (SEV-0 needs two)
            assert (await http.post(post, content=alice, headers=app.headers(alice))).status_code == 200
            first = await answered(slack, "/response/0")
            assert first["replace_original"] is True
            assert "approval by alice counted; still waiting for: 1 approver (SEV-0)" in first["text"]
            assert any(b["type"] == "actions" for b in first["blocks"])
            assert running_revision(aws) == BAD
            bob = app.body("U0BOB", n=2)
            assert (await http.post(post, content=bob, headers=app.headers(bob))).status_code == 200
            second = await answered(slack, "/response/2")
            assert "approval by bob counted; approved" in second["text"]
            assert not any(b["type"] == "actions" for b in second["blocks"])  # decided: no buttons left
            result = RollbackStatus.model_validate(await asyncio.wait_for(handle.result(), 60))
        assert result.phase.value == "succeeded" and running_revision(aws) == GOOD
        assert [(r.approver, r.proof.kind, r.proof.issuer, r.proof.subject) for r in result.approvals.received] == [
            ("alice", "slack", f"slack:{SLACK_TEAM}", "U0ALICE"), ("bob", "slack", f"slack:{SLACK_TEAM}", "U0BOB")]
        assert "v0=" not in result.model_dump_json()  # the status names the proof, never the signature
    finally:
        slack.stop()
        await terminate(dev_env.client, wf_id)
