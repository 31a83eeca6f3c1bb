"""Issue 14's done-when, for EVERY kind of rollback (common/web_ui.EXAMPLES): an on-call engineer starts,
approves, watches and cancels each one from the Web UI (headless Chromium) and from the CLI.

One catalog holds every kind (the test catalog plus what the per-kind tests add: the search indexer and
release v1.2.3 (tests/test_release.py), a Terraform stack (tests/test_infra.py) and the sandbox's own
``rastup-prod`` database entry, whose snapshot restore is moto's RDS side only). Each kind runs in turn,
to its end, so kinds sharing a resource (a release touches the api service) never overlap.

Every kind is both approved and cancelled, half of each on each surface: the Web UI approves the kinds
at even positions of ``ORDER`` (the ``decide`` update with a real ID token) and cancels the others
(More Actions -> Request Cancellation); the CLI (tests/test_every_kind_cli.py) does the opposite.
Outcomes are read with the ``status`` query: approved ones succeed, cancelled ones end ``cancelled``
with no change made.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from common.api import PROCEDURES
from common.catalog import Catalog
from common.web_ui import EXAMPLES, ROLLBACKS_ONLY
from sandbox.catalog import databases_dict
from tests.conftest import RunCatalog, id_token, in_process_worker
from tests.fixtures.infra import build_infra_repo
from tests.helpers import new_id, wait_for, wait_phase
from tests.test_infra import with_stack
from tests.test_release import with_release
from tests.support.web_ui import screenshot_on_failure, send_update, start_from_form, to_the_list
from tests.test_web_ui import chromium, open_page, ui_env  # noqa: F401 (fixtures)

# release first: it rolls back the api, the indexer, the site and a flag, before their own kinds move them
ORDER = ["release", "service", "database", "frontend", "lambda", "infra", "flag", "config"]
FINAL = {"succeeded", "failed", "cancelled", "rejected", "timed_out"}
REQUESTER = "zoe"  # holds no role: every kind waits for its approvers


def every_kind_catalog(tmp_path: Path, aws, cat: RunCatalog) -> RunCatalog:
    """``cat`` (per-test names) with every kind of EXAMPLES in it, each under ``cat.name(example target)``."""
    with_release(cat)  # functions (the search indexer) and releases (v1.2.3)
    infra = with_stack(tmp_path / "infra", aws, build_infra_repo(tmp_path / "infra", "change"))
    cat.data["stacks"] = {cat.name("network"): infra.data["stacks"][infra.name("network")]}
    db = databases_dict(aws.http_base)["rastup-prod"]
    cat.data["databases"] = {cat.name("rastup-prod"): {**db, "app_service": cat.api}}
    Catalog.model_validate(cat.data)
    cat.path.write_text(yaml.safe_dump(cat.data, sort_keys=False))
    assert set(ORDER) == set(EXAMPLES) == set(PROCEDURES)
    return cat


def example_for(kind: str, cat: RunCatalog) -> tuple[str, dict]:
    """(catalog target, Start Workflow input): EXAMPLES[kind] on this test's names, requested by zoe."""
    payload = {**EXAMPLES[kind], "requested_by": REQUESTER, "monitor_minutes": 0.05}
    field = next(k for k in payload if k in ("service", "database", "site", "function", "stack", "flag",
                                              "target", "release"))
    if kind != "release":  # releases keep their names
        payload[field] = cat.name(payload[field])
    return payload[field], payload


def approvers(kind: str) -> list[str]:
    return ["dana", "erin"] if kind == "database" else ["dana"]  # a snapshot restore also needs the DBA


def approve_here(kind: str, surface: str) -> bool:
    return (ORDER.index(kind) % 2 == 0) == (surface == "ui")


async def test_every_kind_from_the_web_ui(chromium, ui_env, aws, fast_catalog, tmp_path: Path):
    from playwright.async_api import async_playwright, expect

    env, base = ui_env
    cat = every_kind_catalog(tmp_path, aws, fast_catalog)
    outcomes: dict[str, str] = {}
    async with in_process_worker(env.client, cat) as worker, async_playwright() as pw:
        tq = worker.task_queue
        browser, page = await open_page(pw, chromium)

        async def open_from_the_list(wf_id: str) -> None:
            """Find the rollback in the list filtered to rollbacks and open it, as an engineer would: back to
            the list from the page they are on (the list keeps its filter), then the rollback's row."""
            row = page.get_by_role("link", name=wf_id, exact=True)
            await to_the_list(page, base, ROLLBACKS_ONLY)
            for _ in range(10):  # visibility is eventually consistent
                try:
                    await expect(row).to_have_count(1, timeout=2_000)
                    break
                except AssertionError:
                    await page.reload(wait_until="load")
            await expect(row).to_have_count(1)
            await row.click()
            await page.wait_for_url(re.compile(f"/workflows/{re.escape(wf_id)}/"), wait_until="load")

        async def request_cancellation() -> None:
            await page.get_by_role("button", name=re.compile("request cancellation", re.I)).first.click()
            confirm = page.locator("[data-testid=confirm-modal-button]:visible")
            await confirm.click()
            await expect(confirm).to_be_hidden()

        try:
            async with screenshot_on_failure(page, tmp_path, lambda: f"; outcomes so far: {outcomes}"):
                for kind in ORDER:
                    wf_type = PROCEDURES[kind][0]
                    target, payload = example_for(kind, cat)
                    wf_id = new_id(f"ui-{kind}")
                    await start_from_form(page, base, wf_id, tq, wf_type, payload)
                    handle = env.client.get_workflow_handle(wf_id)
                    s = await wait_phase(handle, "awaiting_approval", timeout=60)
                    assert s.kind == kind and s.target == target and s.changes == [], s
                    await open_from_the_list(wf_id)
                    if approve_here(kind, "ui"):
                        for person in approvers(kind):
                            await send_update(page, "decide", {"decision": "approve", "approver": person,
                                                               "id_token": id_token(person)})
                        await to_the_list(page, base, ROLLBACKS_ONLY)  # its page would re-render each new event
                        s = await wait_for(handle, lambda s: s.phase.value in FINAL, 120, f"{kind} to end")
                        assert s.phase.value == "succeeded", f"{kind}: {s.phase.value}: {s.message}"
                        assert sorted(a.approver for a in s.approvals.received) == approvers(kind)
                        # a release's changes are its components'
                        changed = s.changes or [c for c in s.components if c.phase == "succeeded"]
                        assert changed, f"{kind} succeeded without recording a change"
                    else:
                        await request_cancellation()
                        s = await wait_for(handle, lambda s: s.phase.value in FINAL, 60, f"{kind} to end")
                        assert s.phase.value == "cancelled", f"{kind}: {s.phase.value}: {s.message}"
                        assert s.changes == [] and s.approvals.received == [], s
                        await open_from_the_list(wf_id)
                        await expect(page.get_by_test_id("execution-status").first).to_have_text(
                            re.compile("cancel", re.I))
                    outcomes[kind] = s.phase.value
        finally:
            await browser.close()
    assert outcomes == {k: "succeeded" if approve_here(k, "ui") else "cancelled" for k in ORDER}
