"""What the Web UI tests do in the browser, written once: start a workflow from the form, send an update
or a signal from More Actions, and keep a screenshot when a step fails (tests/test_web_ui*.py,
tests/test_every_kind.py).

The selectors are the Temporal Web UI's own (the data-testid names ../shared/PLATFORM.md lists)."""

from __future__ import annotations

import json
import re
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit
from typing import AsyncIterator, Callable


async def to_the_list(page, base: str, query: str | None = None) -> None:
    """The workflows list as an engineer gets there: "Back to Workflows" on a workflow's page (it keeps the
    filter of the list the workflow was opened from), or the list's address. With ``query``, the list
    filtered by it; without, whichever list (a list page stays as it is). The back link is the app
    navigating in place, about 0.3 CPU-seconds of Chromium; loading a page of the Web UI costs about 2."""
    path = "/namespaces/default/workflows"

    def a_list(url: str) -> bool:
        where = urlsplit(url)
        return where.path.rstrip("/") == path and (query is None or parse_qs(where.query).get("query") == [query])

    if page.url.startswith(base) and a_list(page.url):
        return
    back = page.get_by_test_id("back-to-workflows").first
    if page.url.startswith(base) and await back.count() and a_list(await back.get_attribute("href") or ""):
        await back.click()
        await page.wait_for_url(a_list)
        return
    await page.goto(base + path + (f"?query={quote(query)}" if query else ""), wait_until="load")


async def start_from_form(page, base: str, wf_id: str, task_queue: str, wf_type: str, payload: dict) -> None:
    """Start Workflow from the workflows list, as an engineer does, and open the started workflow."""
    await to_the_list(page, base)
    await page.get_by_role("link", name=re.compile("start workflow", re.I)).first.click()
    await page.get_by_test_id("workflowId").fill(wf_id)
    await page.get_by_test_id("taskQueue").fill(task_queue)
    await page.get_by_test_id("workflowType").fill(wf_type)
    await page.locator(".cm-content").first.click()
    await page.keyboard.insert_text(json.dumps(payload))  # no key events: no auto-closed brackets
    await page.get_by_test_id("start-workflow").click()  # elsewhere: the editor reformats, the button moves
    await page.get_by_test_id("start-workflow-button").click()
    # this start's notice: one from a start just before can still be up (the app keeps it across pages)
    started = page.get_by_role("link", name=re.compile("workflow started successfully", re.I))
    await started.and_(page.locator(f'a[href*="/workflows/{quote(wf_id)}/"]')).click()
    await page.wait_for_url(re.compile(f"/workflows/{re.escape(wf_id)}/"), wait_until="load")


async def send_update(page, name: str, body: dict) -> None:
    """More Actions -> Send an Update on the open workflow: the worker's handler ``name`` with ``body``."""
    await page.get_by_role("button", name=re.compile("more actions", re.I)).click()
    await page.locator("[data-testid=update-button]:visible").click()
    modal = page.locator("dialog:visible, [role=dialog]:visible").filter(has_text="Send an Update").first
    await _choose_and_send(page, modal, modal.get_by_test_id("update-select-button"), name, body)


async def send_signal(page, name: str, body: dict) -> None:
    """More Actions -> Send a Signal on the open workflow: signal ``name`` with ``body``."""
    await page.get_by_role("button", name=re.compile("more actions", re.I)).click()
    await page.locator("[data-testid=signal-button]:visible").click()
    modal = page.locator("[data-testid=signal-confirmation-modal]:visible")
    await _choose_and_send(page, modal, modal.locator("[data-testid=signal-select-button]:visible"), name, body)


async def _choose_and_send(page, modal, select, name: str, body: dict) -> None:
    from playwright.async_api import expect

    await expect(modal).to_be_visible()
    await select.click()  # the worker's handlers
    await modal.get_by_role("option", name=name, exact=True).click()
    editor = modal.locator(".cm-content")
    await editor.click()
    await page.keyboard.press("Control+a")  # the modal keeps the last input sent from this page: replace it
    await page.keyboard.insert_text(json.dumps(body))
    await editor.blur()  # let the editor commit and reformat before submitting
    await modal.get_by_test_id("confirm-modal-button").click()
    await expect(modal).to_be_hidden()


@asynccontextmanager
async def screenshot_on_failure(page, tmp_path: Path, more: Callable[[], str] = lambda: "") -> AsyncIterator[None]:
    """A failing step leaves a full-page screenshot in the test's tmp_path, named in the error."""
    try:
        yield
    except BaseException as e:
        shot = tmp_path / "web-ui-failure.png"
        try:
            await page.screenshot(path=str(shot), full_page=True)
            e.add_note(f"screenshot of the page at {page.url}: {shot}{more()}")
        except Exception as shot_error:  # the browser may be what failed
            e.add_note(f"no screenshot: {shot_error}")
        raise
