"""The on-call engineer's Web UI path, clicked in a real headless Chromium on the dev server's own Web UI.

Start Workflow form (ServiceRollback, one JSON input) -> "Workflow started successfully" -> Queries
tab: `status` says awaiting_approval -> More Actions -> Send a Signal `approve` {"approver": "dana"}:
refused, the name alone proves nothing -> again with dana's ID token {"approver": "dana", "id_token":
"..."} -> the page shows Completed, ECS runs revision 42 (v1.2.2), and the list page filtered by
`RollbackPhase="succeeded"` lists the workflow (and not its lock workflow, which it does unfiltered).

Real parts only: the Web UI 2.54 of the PyPI `temporal` CLI, an in-process worker, moto for AWS.
Chromium is Debian's headless shell (`make test` installs chromium-headless-shell when root with apt-get), driven
by PyPI's playwright; `playwright install` is never run (no downloads at run time). On failure a
screenshot of the page is saved in the test's tmp_path (its path is in the error).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import time
from pathlib import Path
from typing import AsyncIterator
from urllib.parse import quote

import httpx
import pytest
import pytest_asyncio
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from activities.temporal_locks import lock_id
from common.temporal import KIND, PHASE, SEVERITY, TARGET
from tests.conftest import binary, id_token, in_process_worker
from tests.helpers import new_id, running_revision
from tests.support.web_ui import screenshot_on_failure, send_signal, start_from_form

# Debian's headless shell (Chromium's old headless mode, what Playwright itself launches for headless runs):
# the same Blink and V8 as /usr/bin/chromium without the full browser around them, about 15% less CPU per
# UI step on 2 cores. The full browser serves where only it is installed.
HEADLESS_SHELL = "/usr/bin/chromium-headless-shell"
CHROMIUM = os.environ.get("ROLLBACK_TEST_CHROMIUM") or next(
    (p for p in (HEADLESS_SHELL, "/usr/bin/chromium") if os.access(p, os.X_OK)), HEADLESS_SHELL)
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
# CSS animations and transitions off, as Playwright's own screenshots turn them off. A running workflow's
# page animates its timeline's dashed line without end: Chromium repainted the page 60 times a second, 20%
# of a core for every second a test left the page open (4.3 CPU-seconds per idle 20 s; 0.35 without).
NO_ANIMATIONS = """document.addEventListener("DOMContentLoaded", () => {
  const style = document.createElement("style");
  style.textContent = "*, *::before, *::after { animation: none !important; transition: none !important; }";
  document.head.appendChild(style);
});"""
STEP_MS = 15_000  # the longest any single UI step may take (each is ~1 s here)


async def open_page(pw, chromium: str):
    """Headless Chromium and one page, each UI step allowed STEP_MS: (browser, page)."""
    from playwright.async_api import expect

    browser = await pw.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
    page = await browser.new_page(viewport={"width": 1400, "height": 1000})
    await page.add_init_script(NO_ANIMATIONS)
    page.set_default_timeout(STEP_MS)
    expect.set_options(timeout=STEP_MS)
    return browser, page


def chromium_or_skip() -> str:
    """Debian's Chromium headless shell; skip only where it cannot be installed (CI can: root + apt-get)."""
    if os.access(CHROMIUM, os.X_OK):
        return CHROMIUM
    if os.geteuid() == 0 and shutil.which("apt-get"):
        pytest.fail(f"{CHROMIUM} is missing but installable on this machine: run 'make test' "
                    "(it runs 'apt-get install -y chromium-headless-shell' when root) or install it yourself")
    pytest.skip(f"no Chromium at {CHROMIUM}, and it cannot be installed here (Debian's "
                "'chromium-headless-shell' needs root and apt-get); set ROLLBACK_TEST_CHROMIUM to a Chromium binary to run it")


@pytest.fixture(scope="module")
def chromium() -> str:
    """Checked before any server starts: the browser, and playwright to drive it."""
    path = chromium_or_skip()
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        pytest.fail("playwright is not installed in this venv: run 'make test' (it installs the test extras)")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest_asyncio.fixture(scope="module")
async def ui_env(chromium: str) -> AsyncIterator[tuple[WorkflowEnvironment, str]]:
    """The dev server WITH its Web UI on a free port: (env, UI base URL), once the UI answers."""
    ui_port = free_port()
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=binary("temporal"),
        ui=True,
        ui_port=ui_port,
        search_attributes=[KIND, TARGET, SEVERITY, PHASE],
        data_converter=pydantic_data_converter,
        dev_server_log_level="error",
        dev_server_extra_args=["--ui-disable-news-fetch"],
    )
    base = f"http://127.0.0.1:{ui_port}"
    try:
        deadline = time.monotonic() + 20
        async with httpx.AsyncClient(timeout=2) as http:
            while True:
                try:
                    if (await http.get(f"{base}/api/v1/namespaces/default")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    pytest.fail(f"the dev server's Web UI did not answer on {base} within 20 s")
                await asyncio.sleep(0.1)
        yield env, base
    finally:
        await env.shutdown()


async def test_on_call_engineer_rolls_back_from_the_web_ui(chromium, ui_env, aws, fast_catalog, tmp_path: Path):
    from playwright.async_api import async_playwright, expect

    env, base = ui_env
    wf_id = new_id("webui")
    payload = {"service": fast_catalog.api, "severity": "SEV-2", "requested_by": "zoe",
               "reason": "errors after v1.2.3", "monitor_minutes": 0.05}

    async with in_process_worker(env.client, fast_catalog) as worker, async_playwright() as pw:
        lock = lock_id("ecs service rastup-prod/api-service", worker.task_queue)  # the service's resource lock
        browser, page = await open_page(pw, chromium)
        try:
            async with screenshot_on_failure(page, tmp_path):
                # 1. Start Workflow, from the workflows list as the engineer does
                await start_from_form(page, base, wf_id, worker.task_queue, "ServiceRollback", payload)

                # 2. Queries tab: `status` says the rollback waits for the on-call engineer
                await page.get_by_test_id("queries-tab").click()
                await page.get_by_test_id("query-select-button").click()
                await page.get_by_role("option", name="status", exact=True).click()
                await expect(page.get_by_test_id("query-select")).to_have_value("status")
                await page.get_by_role("button", name="Run Query").click()
                result = page.get_by_test_id("query-result")
                waiting = re.compile(r'"phase":\s*"awaiting_approval"')
                for _ in range(20):  # a first query may come before the approval step opens
                    try:
                        await expect(result).to_contain_text(waiting, timeout=1_000)
                        break
                    except AssertionError:
                        await page.get_by_role("button", name="Refresh Query").click()
                await expect(result).to_contain_text(waiting)
                await expect(result).to_contain_text(re.compile(r'"eligible":\s*\[\s*"dana"'))

                # 3. More Actions -> Send a Signal: approve {"approver": "dana"}: a typed name, refused ...
                await send_signal(page, "approve", {"approver": "dana"})
                refused = re.compile(r'"reason":\s*"identity not proven: no proof was sent')
                for _ in range(20):
                    await page.get_by_role("button", name="Refresh Query").click()
                    try:
                        await expect(result).to_contain_text(refused, timeout=1_000)
                        break
                    except AssertionError:
                        pass
                await expect(result).to_contain_text(refused)
                await expect(result).to_contain_text(waiting)
                assert running_revision(aws) == (43, "v1.2.3")
                # ... and with the ID token that proves it is dana (what 'starter.py login dana' stores), from a
                # fresh page as a person would (a second signal from one page can leave UI 2.54's dialog spinning)
                await page.reload(wait_until="load")
                await send_signal(page, "approve", {"approver": "dana", "id_token": id_token("dana")})

                # 4. The rollback runs to its end: the page (auto-refreshing) says Completed
                await expect(page.get_by_test_id("execution-status").first).to_have_text(
                    re.compile("completed", re.I), timeout=40_000)
                await page.get_by_test_id("query-select-button").click()  # the page was reloaded: choose it again
                await page.get_by_role("option", name="status", exact=True).click()
                await page.get_by_role("button", name="Run Query").click()
                await expect(result).to_contain_text(re.compile(r'"phase":\s*"succeeded"'))

                # 5. The list page filtered by the search attribute the workflow keeps current
                query = f'{PHASE.name}="succeeded"'
                url = f"{base}/namespaces/default/workflows?query={quote(query)}"
                row = page.get_by_role("link", name=wf_id, exact=True)
                for _ in range(10):  # visibility is eventually consistent
                    await page.goto(url, wait_until="load")
                    try:
                        await expect(row).to_be_visible(timeout=2_000)
                        break
                    except AssertionError:
                        pass
                await expect(row).to_be_visible()
                await expect(page.get_by_role("link", name=lock, exact=True)).to_have_count(0)
                # ... which really filters: unfiltered, the list also has the rollback's lock workflow
                await page.goto(f"{base}/namespaces/default/workflows", wait_until="load")
                await expect(page.get_by_role("link", name=lock, exact=True)).to_be_visible()
        finally:
            await browser.close()

        done = await env.client.get_workflow_handle(wf_id).result()

    assert done["phase"] == "succeeded", done.get("message")
    assert [(a["approver"], a["proof"]["kind"]) for a in done["approvals"]["received"]] == [("dana", "oidc")]
    assert done["requested_by"] == "zoe" and done["severity"] == "SEV-2"     # the UI's input, as typed
    assert running_revision(aws) == (42, "v1.2.2")
