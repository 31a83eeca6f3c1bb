"""HTTP checks: health, ready, version endpoints and smoke checks (runbook: curl ...)."""

from __future__ import annotations

import httpx
from pydantic import BaseModel
from temporalio import activity

from activities.http_client import shared_async
from common.models import CheckResult


class HttpProbe(BaseModel):
    name: str
    url: str
    expect_status: int = 200
    contains: str | None = None
    json_field: str | None = None  # compare this field of the JSON body ...
    expected: str | None = None  # ... with this value
    timeout_seconds: float = 10
    kind: str = "http"  # carried into the result, for the validation checklist


@activity.defn
async def check_http(probe: HttpProbe) -> CheckResult:
    """One request. A bad answer is a failed check (a result), not an activity error."""
    result = await _check(probe)
    result.kind = probe.kind
    return result


async def _check(probe: HttpProbe) -> CheckResult:
    now = activity.info().current_attempt_scheduled_time
    try:
        resp = await shared_async().get(probe.url, timeout=probe.timeout_seconds, follow_redirects=True)
    except httpx.HTTPError as e:
        return CheckResult(name=probe.name, ok=False, detail=f"GET {probe.url}: {type(e).__name__}: {e}",
                           at=now)
    if resp.status_code != probe.expect_status:
        return CheckResult(name=probe.name, ok=False, value=str(resp.status_code),
                           baseline=str(probe.expect_status),
                           detail=f"GET {probe.url} answered {resp.status_code}, expected {probe.expect_status}",
                           at=now)
    if probe.contains is not None and probe.contains not in resp.text:
        return CheckResult(name=probe.name, ok=False,
                           detail=f"GET {probe.url}: body does not contain {_short(probe.contains)}", at=now)
    if probe.json_field:
        try:
            value = resp.json().get(probe.json_field)
        except (ValueError, AttributeError):
            return CheckResult(name=probe.name, ok=False, detail=f"GET {probe.url}: body is not a JSON object",
                               at=now)
        ok = probe.expected is None or str(value) == probe.expected
        return CheckResult(name=probe.name, ok=ok, value=None if value is None else str(value),
                           baseline=probe.expected,
                           detail=f"{probe.json_field}={value!r}" + ("" if ok else f", expected {probe.expected!r}"),
                           at=now)
    return CheckResult(name=probe.name, ok=True, value=str(resp.status_code), detail=f"GET {probe.url} ok",
                       at=now)


def _short(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")
