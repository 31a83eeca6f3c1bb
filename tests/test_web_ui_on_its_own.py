"""The Web UI without the README open, clicked in a real headless Chromium (see tests/test_web_ui.py for
how the dev server's own Web UI and the browser are run):

- a bad input from the Start Workflow form fails at once with a short message naming the field and a
  minimal valid input to paste (no pydantic text, no URLs);
- the gradual blue/green ``api-bg`` rollback (50 % -> 100 %) starts from the form;
- User Metadata -> Current Details shows the one-line summary (kind, target, from -> to, severity,
  requester) and a refused approval, sent as the ``decide`` update, shows as refused there;
- a rollback started by the CLI/API has the one-liner as its Summary;
- the documented filter (``RollbackKind IS NOT NULL``) lists one row per rollback: no lock workflows.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import quote

from common.api import Rollbacks
from common.web_ui import GRADUAL_EXAMPLE, ROLLBACKS_ONLY
from tests.conftest import id_token, in_process_worker
from tests.helpers import new_id, running_revision
from tests.support.web_ui import screenshot_on_failure, send_update, start_from_form
from tests.test_web_ui import chromium, open_page, ui_env  # noqa: F401 (fixtures)


async def test_web_ui_on_its_own(chromium, ui_env, aws, fast_catalog, tmp_path: Path):
    from playwright.async_api import async_playwright, expect

    env, base = ui_env
    async with in_process_worker(env.client, fast_catalog) as worker, async_playwright() as pw:
        tq = worker.task_queue
        browser, page = await open_page(pw, chromium)

        async def start_rollback(wf_id: str, payload: dict) -> None:
            await start_from_form(page, base, wf_id, tq, "ServiceRollback", payload)

        async def frame_text(frame) -> str:
            """A frame's text, or "" when the UI replaces the frame while it is read (R re-renders them)."""
            from playwright.async_api import Error as PlaywrightError
            try:
                if frame.is_detached() or not await frame.locator("body").count():
                    return ""
                return await frame.locator("body").inner_text(timeout=2_000)
            except PlaywrightError:
                return ""

        async def user_metadata(wanted: re.Pattern[str] | str) -> None:
            """User Metadata tab until it shows ``wanted``: the UI renders Summary and Current Details
            (Markdown) in frames, and asks the worker for current details when R is pressed."""
            pattern = wanted if isinstance(wanted, re.Pattern) else re.compile(re.escape(wanted))
            await page.get_by_test_id("user-metadata-tab").click()
            seen = ""
            for _ in range(40):
                await page.keyboard.press("r")
                await page.wait_for_timeout(500)
                seen = " | ".join([await frame_text(f) for f in page.frames[1:]])
                if pattern.search(seen):
                    return
            raise AssertionError(f"User Metadata never showed {pattern.pattern!r}; it shows: {seen[:2000]}")

        try:
            async with screenshot_on_failure(page, tmp_path):
                # 1. a typo'd severity: failed at once, with the field, the problem and an input to paste
                bad = new_id("webui-bad")
                await start_rollback(bad, {"service": fast_catalog.api, "severity": "SEV-9", "requested_by": "zoe",
                                            "reason": "x"})
                await expect(page.get_by_test_id("execution-status").first).to_have_text(re.compile("failed", re.I))
                main = page.locator("main")
                await expect(main).to_contain_text("bad ServiceRollback input: 'severity'")
                await expect(main).to_contain_text("A minimal valid input to paste")
                assert "pydantic" not in (await main.inner_text()).lower()

                # 2. the gradual blue/green rollback, from the form; zoe is not on call: it waits for dana
                gradual = new_id("webui-bg")
                await start_rollback(gradual, {**GRADUAL_EXAMPLE, "service": fast_catalog.api_bg, "requested_by": "zoe",
                                                "monitor_minutes": 0.05})
                one_liner = re.compile(re.escape(f"service rollback of {fast_catalog.api_bg}: v1.2.3 -> v1.2.2, SEV-2, "
                                                 "requested by zoe") + r".*awaiting_approval", re.S)
                await user_metadata(one_liner)

                # 3. an approval without proof, as the decide update: refused, and the page says so
                await send_update(page, "decide", {"decision": "approve", "approver": "dana"})
                await user_metadata(re.compile(r"refused: approve by dana at [0-9:]+: identity not proven"))
                # ... with dana's ID token it counts: 50 %, then 100 %, then Completed
                await page.reload(wait_until="load")
                await send_update(page, "decide", {"decision": "approve", "approver": "dana",
                                                   "id_token": id_token("dana")})
                await expect(page.get_by_test_id("execution-status").first).to_have_text(
                    re.compile("completed", re.I), timeout=60_000)

                # 4. a rollback started by the CLI/API carries the one-liner as its Summary
                api = await Rollbacks(env.client, tq, fast_catalog.path).start("service", {
                    "service": fast_catalog.api, "severity": "SEV-2", "requested_by": "zoe", "reason": "dry run",
                    "dry_run": True})
                await page.goto(f"{base}/namespaces/default/workflows/{quote(api.workflow_id)}", wait_until="load")
                await user_metadata(f"service rollback of {fast_catalog.api}: current -> previous, SEV-2, "
                                    "requested by zoe")
                await env.client.get_workflow_handle(api.workflow_id).result()

                # 5. the documented filter: one row per rollback, no lock workflow
                url = f"{base}/namespaces/default/workflows?query={quote(ROLLBACKS_ONLY)}"
                rows = [page.get_by_role("link", name=wf, exact=True) for wf in (gradual, api.workflow_id)]
                for _ in range(10):  # visibility is eventually consistent
                    await page.goto(url, wait_until="load")
                    try:
                        for row in rows:
                            await expect(row).to_have_count(1, timeout=2_000)
                        break
                    except AssertionError:
                        pass
                for row in rows:
                    await expect(row).to_have_count(1)
                await expect(page.get_by_role("link", name=re.compile(r"^rollback-lock-"))).to_have_count(0)
                await expect(page.get_by_role("link", name=bad, exact=True)).to_have_count(0)
        finally:
            await browser.close()

        done = await env.client.get_workflow_handle(gradual).result()

    assert done["phase"] == "succeeded", done.get("message")
    assert [(r["approver"], r["action"]) for r in done["approvals"]["refused"]] == [("dana", "approve")]
    assert running_revision(aws, "api-service-green") == (42, "v1.2.2")
    assert [e["what"] for e in done["events"] if e["what"].startswith("traffic:")] == [
        "traffic: 50% on v1.2.2 (api-service-green)", "traffic: 100% on v1.2.2 (api-service-green)"]
