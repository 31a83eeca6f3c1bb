"""Verdicts you can trust (workflows/verdicts.py): measured baselines, inconclusive is a verdict,
what serves is what is measured, one spike is not a failure. The judge on its own (pure), then
whole rollbacks on the time-skipping server against moto's CloudWatch, each test with metric data
of its own (a per-test dimension value), written minute by minute as CloudWatch would hold it."""

from __future__ import annotations

import json
import threading
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml
from temporalio.client import WorkflowFailureError

from activities.metrics import Samples
from common.catalog import MetricQuery
from common.models import Decision, ServiceRollbackInput
from common.policy import Policy
from sandbox.metrics import put_datapoints
from tests.conftest import RunCatalog, id_token, in_process_worker
from tests.helpers import failure_text, new_id, status_of, wait_for, wait_phase
from workflows.service import ServiceRollback
from workflows.verdicts import Baseline, judge

NOW = datetime(2025, 11, 18, 14, 5, tzinfo=timezone.utc)
NAMESPACE = "Test/Verdicts"


def noisy(level: float, n: int, spread: float = 0.05) -> list[float]:
    """n values around level, deterministic (a healthy service's minute-by-minute error rate)."""
    return [round(level + spread * ((i * 7) % 5 - 2) / 2, 4) for i in range(n)]


def error_rate(**kw) -> MetricQuery:
    return MetricQuery(**{"name": "error_rate", "kind": "error_rate", "namespace": NAMESPACE, "metric": "ErrorRate",
                          "dimensions": {"Version": "{version}"}, "baseline": 0.2, "unit": " %", **kw})


def samples(values: list[float], minutes: float = 5) -> Samples:
    return Samples(values=values, start=NOW - timedelta(minutes=minutes), end=NOW, source="test")


MEASURED = Baseline(value=sum(noisy(1.1, 60)) / 60, samples=noisy(1.1, 60),
                    source="v1.2.2 over 13:00-14:00 UTC before the v1.2.3 deploy, 60 samples")


# --- the judge on its own ---------------------------------------------------------------

def test_measured_baseline_passes_what_the_constant_would_fail():
    q, policy = error_rate(), Policy()
    at_1_3 = judge(q, "v1.2.2", samples(noisy(1.3, 5)), None, MEASURED, policy, NOW)
    assert at_1_3.verdict == "passed" and at_1_3.limit == pytest.approx(1.6, abs=0.01)
    constant = Baseline(value=0.2, source="the catalog's constant 0.2 %, as no measured baseline had data")
    assert judge(q, "v1.2.2", samples(noisy(1.3, 5)), None, constant, policy, NOW).verdict == "failed"
    at_1_8 = judge(q, "v1.2.2", samples(noisy(1.8, 5)), None, MEASURED, policy, NOW)
    assert at_1_8.verdict == "failed" and at_1_8.ok is False
    assert at_1_8.p_value < 0.05 and at_1_8.effect_size == 1.0
    # one line a person can check: what, which version, window, samples, baseline source, rule, statistics
    for text in ("error_rate 1.8 % on v1.2.2", "14:00-14:05 UTC, 5 sample(s)", "baseline 1.1 % = v1.2.2 over "
                 "13:00-14:00 UTC before the v1.2.3 deploy, 60 samples", "rule: at most 0.5 points above baseline "
                 "(limit 1.6 %)", "Mann-Whitney U p=", "significant at 95%"):
        assert text in at_1_8.detail, (text, at_1_8.detail)


def test_no_evidence_is_never_a_pass():
    q, policy = error_rate(), Policy()
    nothing = judge(q, "v1.2.2", samples([]), None, MEASURED, policy, NOW)
    assert (nothing.verdict, nothing.ok) == ("inconclusive", None)
    assert "not checked: 0 sample(s) in 14:00-14:05 UTC, at least 3 needed" in nothing.detail
    assert judge(q, "v1.2.2", samples([0.2, 0.2]), None, MEASURED, policy, NOW).verdict == "inconclusive"
    broken = judge(q, "v1.2.2", None, "Prometheus refused the query: parse error", MEASURED, policy, NOW)
    assert broken.verdict == "inconclusive" and "the query failed: Prometheus refused" in broken.detail
    no_base = judge(error_rate(baseline=None), "v1.2.2", samples([0.2] * 5), None,
                    Baseline(source="last_good: 0 sample(s)"), policy, NOW)
    assert no_base.verdict == "inconclusive" and "no baseline" in no_base.detail


def test_a_breach_that_is_not_significant_is_noise():
    # 4 normal minutes and one burst: above the limit on average, but not worse than the baseline's spread
    wide = Baseline(value=0.6, samples=[0.1, 0.3, 0.5, 0.7, 0.9, 1.1] * 10, source="wide")
    r = judge(error_rate(), "v1.2.2", samples([0.4, 0.6, 0.5, 0.7, 4.0]), None, wide, Policy(), NOW)
    assert r.value > r.limit and r.verdict == "passed" and "not significantly worse" in r.detail


def test_business_metric_drop():
    q = MetricQuery(name="bookings", kind="business", namespace="N", metric="M", unit="/min")
    base = Baseline(value=100, samples=noisy(100, 60, 4), source="bookings over ... one week earlier, 60 samples")
    assert judge(q, None, samples(noisy(97, 5, 4)), None, base, Policy(), NOW).verdict == "passed"
    low = judge(q, None, samples(noisy(66, 5, 4)), None, base, Policy(), NOW)
    assert low.verdict == "failed" and "at most 10% below baseline" in low.detail
    # (the runbook's 10 % rule was there before; what is new is a verdict that says what it compared)
    assert "vs baseline 100/min = bookings over ... one week earlier, 60 samples" in low.detail
    assert low.p_value < 0.05 and low.effect_size == 1.0 and "significant at 95%" in low.detail


# --- whole rollbacks ------------------------------------------------------------------

@pytest.fixture(autouse=True)
def freshly_deployed(aws_server):
    """These verdicts are read against "the bad deploy the sandbox made just now": never a reused seed."""
    aws_server.seed_anew()


def put(aws, dims: dict[str, str], values: list[float], newest_minutes_ago: float, metric: str = "ErrorRate",
        namespace: str = NAMESPACE, at: datetime | None = None) -> None:
    """One datapoint a minute, the last one ``newest_minutes_ago`` before ``at`` (now)."""
    at = at or datetime.now(timezone.utc)
    n = len(values)
    data = [{"MetricName": metric, "Value": v, "Unit": "None",
             "Timestamp": at - timedelta(minutes=newest_minutes_ago + (n - 1 - i)),
             "Dimensions": [{"Name": k, "Value": val} for k, val in dims.items()]} for i, v in enumerate(values)]
    put_datapoints(aws.client("cloudwatch"), namespace, data)


def with_metrics(catalog: RunCatalog, service: str, metrics: list[dict], **entry) -> RunCatalog:
    catalog.data["services"][service].update(metrics=metrics, **entry)
    catalog.path.write_text(yaml.safe_dump(catalog.data, sort_keys=False))
    return catalog


def metric_of(catalog: RunCatalog, **kw) -> dict:
    return {"name": "error_rate", "kind": "error_rate", "namespace": NAMESPACE, "metric": "ErrorRate",
            "dimensions": {"Service": catalog.suffix, "Version": "{version}"}, "baseline": 0.2, "unit": " %", **kw}


def req(service: str, **kw) -> ServiceRollbackInput:
    return ServiceRollbackInput(**{"service": service, "severity": "SEV-2", "requested_by": "dana",
                                   "id_token": id_token("dana"), "reason": "error rate after v1.2.3",
                                   "monitor_minutes": 5, **kw})


def healthy_history(aws, catalog: RunCatalog, level: float, version: str = "v1.2.2") -> None:
    """The hour before the bad deploy (which the sandbox made just now): the good release at ``level``."""
    put(aws, {"Service": catalog.suffix, "Version": version}, noisy(level, 60), newest_minutes_ago=5.5)


@pytest.mark.parametrize("serving,outcome", [(1.3, "succeeded"), (1.8, "failed")])
async def test_a_measured_baseline_drives_the_verdict(ts_env, aws, catalog, serving, outcome):
    # This service is healthy at 1.1 %: 1.3 % passes (the constant 0.2 would have failed it), 1.8 % does not.
    with_metrics(catalog, catalog.api, [metric_of(catalog)])
    healthy_history(aws, catalog, 1.1)
    put(aws, {"Service": catalog.suffix, "Version": "v1.2.2"}, noisy(serving, 5), newest_minutes_ago=0.5)
    async with in_process_worker(ts_env.client, catalog) as worker:
        handle = await ts_env.client.start_workflow(ServiceRollback.run, req(catalog.api), id=new_id(),
                                                    task_queue=worker.task_queue)
        if outcome == "failed":
            with pytest.raises(WorkflowFailureError) as excinfo:
                await handle.result()
            assert "validation failed: error_rate" in failure_text(excinfo)
        else:
            await handle.result()
        s = await status_of(handle)
    assert s.phase.value == outcome
    check = next(c for c in s.checks if c.name == "error_rate")
    assert check.verdict == ("passed" if outcome == "succeeded" else "failed"), (check.detail, s.message)
    assert check.baseline == pytest.approx(1.1, abs=0.02) and check.limit == pytest.approx(1.6, abs=0.02)
    assert check.version == "v1.2.2" and check.samples == 5
    assert "before the v1.2.3 deploy" in check.baseline_source and "60 samples" in check.baseline_source
    assert "rule: at most 0.5 points above baseline" in check.detail and "Mann-Whitney U p=" in check.detail
    if outcome == "failed":
        assert check.readings == 2 and "2 failing readings in a row" in check.detail
        assert sum(1 for r in s.readings if r.name == "error_rate" and r.verdict == "failed") >= 2


async def test_no_data_is_inconclusive_and_fails_validation_unless_optional(ts_env, aws, catalog):
    # The metric names a dimension value nothing reports: before, "no data" let validation succeed.
    with_metrics(catalog, catalog.api, [metric_of(catalog, dimensions={"Service": "does-not-exist"})])
    async with in_process_worker(ts_env.client, catalog) as worker:
        handle = await ts_env.client.start_workflow(ServiceRollback.run, req(catalog.api), id=new_id(),
                                                    task_queue=worker.task_queue)
        with pytest.raises(WorkflowFailureError) as excinfo:
            await handle.result()
        s = await status_of(handle)
    assert s.phase.value == "failed"
    assert "error_rate on v1.2.2: not checked: 0 sample(s)" in failure_text(excinfo)
    item = next(i for i in s.checklist if i.item == "Error rates at or below baseline")
    assert item.state == "not_checked" and "0 sample(s)" in item.evidence

    with_metrics(catalog, catalog.api, [metric_of(catalog, dimensions={"Service": "does-not-exist"},
                                                    optional=True)])
    aws.client("ecs").update_service(cluster="rastup-prod", service="api-service", taskDefinition="api-service:43")
    async with in_process_worker(ts_env.client, catalog) as worker:
        result = await ts_env.client.execute_workflow(ServiceRollback.run, req(catalog.api), id=new_id(),
                                                      task_queue=worker.task_queue)
    assert result.phase.value == "succeeded"
    validate = next(st for st in result.steps if st.name == "Validate rollback")
    assert "not checked (optional): error_rate" in validate.detail


async def test_no_data_pauses_a_gradual_rollback(ts_env, aws, catalog):
    with_metrics(catalog, catalog.api_bg, [metric_of(catalog, dimensions={"Service": "does-not-exist"})])
    async with in_process_worker(ts_env.client, catalog) as worker:
        handle = await ts_env.client.start_workflow(
            ServiceRollback.run, req(catalog.api_bg, rollout_percentages=[50, 100]), id=new_id(),
            task_queue=worker.task_queue)
        await wait_for(handle, lambda s: s.extra.get("rollout_percentage") == 50, what="first step")
        await ts_env.sleep(timedelta(minutes=6))
        s = await wait_phase(handle, "paused", timeout=60)
        assert "not checked: 0 sample(s)" in s.approvals.context
        await handle.signal(ServiceRollback.reject, Decision(approver="dana", id_token=id_token("dana"),
                                                             reason="no data, look first"))
        with pytest.raises(WorkflowFailureError):
            await handle.result()


@pytest.mark.parametrize("burst_passes", [True, False], ids=["one-spike", "two-failures"])
async def test_one_spike_does_not_pause_two_consecutive_failures_do(ts_env, aws, catalog, burst_passes):
    dims = {"Service": catalog.suffix, "Version": "v1.2.2"}
    with_metrics(catalog, catalog.api_bg, [metric_of(catalog)])
    healthy_history(aws, catalog, 0.2)
    put(aws, dims, noisy(0.2, 5), newest_minutes_ago=0.5)
    put(aws, dims, [9.0] * 5, newest_minutes_ago=0.4)  # a burst of errors on the target in every minute
    async with in_process_worker(ts_env.client, catalog) as worker:
        handle = await ts_env.client.start_workflow(
            ServiceRollback.run, req(catalog.api_bg, rollout_percentages=[50, 100]), id=new_id(),
            task_queue=worker.task_queue)
        await wait_for(handle, lambda s: s.extra.get("rollout_percentage") == 50, what="first step")
        await ts_env.sleep(timedelta(minutes=5, seconds=30))  # the step's wait passes: the first reading
        s = await wait_for(handle, lambda s: any(r.verdict == "failed" for r in s.readings), what="a failing reading")
        assert s.phase.value == "rolling_back"  # one failing reading pauses nothing
        if burst_passes:  # the next minute's reading: the burst drowned in healthy traffic
            now = datetime.now(timezone.utc)
            for _ in range(60):  # in each of the 5 minutes, 60 more healthy datapoints
                put(aws, dims, [0.2] * 5, newest_minutes_ago=0.45, at=now)
        await ts_env.sleep(timedelta(minutes=1))  # the second reading, a minute after the first
        if burst_passes:
            result = await handle.result()
            assert result.phase.value == "succeeded", result.message
            assert not any(e.what.startswith("phase: paused") for e in result.events)
            passed = [r for r in result.readings if r.name == "error_rate"]
            assert [r.verdict for r in passed[:2]] == ["failed", "passed"]
            assert "one failing reading is not 2 in a row" in passed[1].detail
        else:
            s = await wait_phase(handle, "paused", timeout=60)
            assert "2 failing readings in a row" in s.approvals.context
            assert [r.verdict for r in s.readings if r.name == "error_rate"] == ["failed", "failed"]
            await handle.signal(ServiceRollback.reject, Decision(approver="dana", id_token=id_token("dana"),
                                                                 reason="look first"))
            with pytest.raises(WorkflowFailureError):
                await handle.result()


async def test_validation_waits_for_the_serving_versions_own_data(ts_env, aws, catalog):
    # As in production: v1.2.2 has history from before the bad deploy, and no data while v1.2.3 served.
    # Right after the rollback its window is empty; before, validation gave up after three tries 20 s apart
    # ("not checked: 0 sample(s)") although the data was on its way.
    dims = {"Service": catalog.suffix, "Version": "v1.2.2"}
    with_metrics(catalog, catalog.api, [metric_of(catalog)])
    healthy_history(aws, catalog, 0.2)
    inconclusive = lambda s: sum(1 for r in s.readings if r.name == "error_rate" and r.verdict == "inconclusive")  # noqa: E731
    async with in_process_worker(ts_env.client, catalog) as worker:
        handle = await ts_env.client.start_workflow(ServiceRollback.run, req(catalog.api), id=new_id(),
                                                    task_queue=worker.task_queue)
        for n in (1, 2, 3):  # the three tries of before, 20 s apart
            await wait_for(handle, lambda s: inconclusive(s) >= n, what=f"inconclusive reading {n}")
            if n < 3:
                await ts_env.sleep(timedelta(seconds=21))
        put(aws, dims, noisy(0.2, 5), newest_minutes_ago=0.5)  # v1.2.2's own traffic, since the rollback
        result = await handle.result()
    assert result.phase.value == "succeeded", result.message
    check = next(c for c in result.checks if c.name == "error_rate")
    assert check.verdict == "passed" and check.samples == 5 and "before the v1.2.3 deploy" in check.baseline_source
    verdicts = [r.verdict for r in result.readings if r.name == "error_rate"]
    assert verdicts[:4] == ["inconclusive"] * 3 + ["passed"], verdicts
    assert "not checked: 0 sample(s)" in next(r for r in result.readings if r.name == "error_rate").detail


async def test_a_baseline_query_error_is_inconclusive_and_read_again(ts_env, aws, catalog):
    # Before: both baseline queries failed once, the catalog's constant 0.2 stood in for the whole rollback,
    # and a service healthy at 1.1 % failed validation at 1.3 % on a baseline nobody had measured.
    with_metrics(catalog, catalog.api, [metric_of(catalog)])
    healthy_history(aws, catalog, 1.1)
    put(aws, {"Service": catalog.suffix, "Version": "v1.2.2"}, noisy(1.3, 5), newest_minutes_ago=0.5)
    aws.faults.inject("GetMetricData", "denied", "denied")  # the first reading's last_good and week_ago
    async with in_process_worker(ts_env.client, catalog) as worker:
        result = await ts_env.client.execute_workflow(ServiceRollback.run, req(catalog.api), id=new_id(),
                                                      task_queue=worker.task_queue)
    assert result.phase.value == "succeeded", result.message
    first = next(r for r in result.readings if r.name == "error_rate")
    assert first.verdict == "inconclusive" and "the baseline could not be read (last_good: query failed" in first.detail
    check = next(c for c in result.checks if c.name == "error_rate")
    assert check.verdict == "passed" and check.baseline == pytest.approx(1.1, abs=0.02)
    assert "before the v1.2.3 deploy" in check.baseline_source


class _Stale(BaseHTTPRequestHandler):
    """Old tasks that a restart brought back: they answer the version endpoint with the bad release."""

    def do_GET(self) -> None:  # noqa: N802
        body = json.dumps({"version": "v1.2.3"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


async def test_serving_version_mismatch_fails_validation_and_the_serving_version_is_measured(ts_env, aws, catalog):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Stale)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        entry = catalog.data["services"][catalog.api]
        entry["endpoints"]["version"] = f"http://127.0.0.1:{server.server_address[1]}/version"
        catalog.path.write_text(yaml.safe_dump(catalog.data, sort_keys=False))
        async with in_process_worker(ts_env.client, catalog) as worker:
            handle = await ts_env.client.start_workflow(ServiceRollback.run, req(catalog.api), id=new_id(),
                                                        task_queue=worker.task_queue)
            with pytest.raises(WorkflowFailureError):
                await handle.result()
            s = await status_of(handle)
    finally:
        server.shutdown()
    checks = {c.name: c for c in s.checks}
    serving = checks["serving version"]
    assert serving.verdict == "failed" and "MISMATCH" in serving.detail
    assert "version endpoint: v1.2.3" in serving.detail and "expected v1.2.2" in serving.detail
    assert checks["error_rate"].version == "v1.2.3" and checks["error_rate"].verdict == "failed"


async def test_a_restart_onto_the_bad_version_while_monitoring_is_a_regression(ts_env, aws, catalog):
    # No version endpoint: before, monitoring read v1.2.2's metrics and saw nothing wrong.
    entry = catalog.data["services"][catalog.api]
    entry["endpoints"].pop("version")
    catalog.path.write_text(yaml.safe_dump(catalog.data, sort_keys=False))
    async with in_process_worker(ts_env.client, catalog) as worker:
        handle = await ts_env.client.start_workflow(ServiceRollback.run, req(catalog.api), id=new_id(),
                                                    task_queue=worker.task_queue)
        await wait_phase(handle, "monitoring", timeout=60)
        aws.client("ecs").update_service(cluster="rastup-prod", service="api-service", taskDefinition="api-service:43")
        result = await handle.result()
    names = {r.name for r in result.regressions}
    assert {"serving version", "error_rate"} <= names
    assert next(r for r in result.regressions if r.name == "error_rate").version == "v1.2.3"


# --- flag rollbacks: did the business metric come back? (runbook Scenario 4) --------------

def with_bookings(catalog: RunCatalog) -> tuple[RunCatalog, str]:
    """The flag gates the new booking flow: its metric is bookings per minute, against last week."""
    flag = catalog.name("new_feature_enabled")
    catalog.data["flags"][flag]["metrics"] = [{
        "name": "bookings_per_minute", "kind": "business", "namespace": NAMESPACE, "metric": "Bookings",
        "dimensions": {"Service": catalog.suffix}, "baseline_from": ["week_ago"], "unit": "/min"}]
    catalog.data["alert_rules"] = __import__("sandbox.catalog", fromlist=["alert_rules"]).alert_rules()
    catalog.path.write_text(yaml.safe_dump(catalog.data, sort_keys=False))
    return catalog, flag


def bookings(aws, catalog: RunCatalog, values: list[float], newest_minutes_ago: float,
             at: datetime | None = None) -> None:
    put(aws, {"Service": catalog.suffix}, values, newest_minutes_ago, metric="Bookings", at=at)


def last_week(aws, catalog: RunCatalog) -> None:
    bookings(aws, catalog, noisy(100, 60, 4), newest_minutes_ago=0.5,
             at=datetime.now(timezone.utc) - timedelta(days=7))


async def test_a_flag_rollback_that_does_not_bring_the_business_metric_back_is_a_regression(ts_env, aws, catalog):
    from common.models import FeatureFlagRollbackInput
    from workflows.flags import FeatureFlagRollback

    catalog, flag = with_bookings(catalog)
    last_week(aws, catalog)
    bookings(aws, catalog, noisy(66, 5, 4), newest_minutes_ago=0.5)  # after the flag is off: still a third down
    async with in_process_worker(ts_env.client, catalog) as worker:
        handle = await ts_env.client.start_workflow(FeatureFlagRollback.run, FeatureFlagRollbackInput(
            flag=flag, action="disable", all_cities=True, severity="SEV-2", requested_by="dana",
            id_token=id_token("dana"), reason="bookings dropped"), id=new_id(), task_queue=worker.task_queue)
        with pytest.raises(WorkflowFailureError) as excinfo:
            await handle.result()
        s = await status_of(handle)
    assert "was rolled back and verified, but the affected service did not recover" in failure_text(excinfo)
    assert [r.name for r in s.regressions] == ["bookings_per_minute"]
    regression = s.regressions[0]
    assert regression.verdict == "failed" and "one week earlier, 60 samples" in regression.baseline_source
    assert "at most 10% below baseline" in regression.detail
    assert any(e.what.startswith("REGRESSION after the rollback of flag") for e in s.events)
    steps = {st.name: st.state.value for st in s.steps}
    assert steps["Verify flag state"] == "succeeded" and steps["Validate rollback"] == "failed"


async def test_business_metric_drop_alert_to_flag_rollback_end_to_end(ts_env, aws, catalog):
    """Runbook Scenario 4 from the alert: the receiver starts the flag rollback, the on-call approves,
    the flag goes off, bookings come back to last week's level, and the monitoring window follows."""
    import httpx
    from pydantic import SecretStr

    from tests.test_receiver import BEARER, TOKEN, alertmanager, serving as receiver

    catalog, flag = with_bookings(catalog)
    last_week(aws, catalog)
    bookings(aws, catalog, noisy(66, 5, 4), newest_minutes_ago=6)  # what the alert saw
    async with in_process_worker(ts_env.client, catalog) as worker, \
            receiver(ts_env.client, catalog, worker.task_queue, token=SecretStr(TOKEN)) as url:
        async with httpx.AsyncClient() as http:
            resp = await http.post(f"{url}/alerts/alertmanager", headers=BEARER, json=alertmanager(
                catalog.api, alertname="BusinessMetricDrop", flag=flag))
        assert resp.status_code == 200, resp.text
        started = resp.json()["results"][0]
        # (the time-skipping server does not say whether a signal-with-start started the workflow)
        assert started["kind"] == "flag" and started["workflow_id"] == f"rollback-flag-{flag}"
        handle = ts_env.client.get_workflow_handle(started["workflow_id"])
        await wait_phase(handle, "awaiting_approval")
        await handle.signal("approve", Decision(approver="dana", id_token=id_token("dana")))
        await wait_for(handle, lambda s: any(st.name == "Validate rollback" and st.state.value == "running"
                                             for st in s.steps), timeout=60, what="validation")
        bookings(aws, catalog, noisy(99, 5, 4), newest_minutes_ago=0.5)  # the flag is off: bookings recover
        await ts_env.sleep(timedelta(minutes=40))  # the window, then 30 minutes of monitoring
        await handle.result()  # (a handle not from start_workflow skips no time by itself)
        result = await status_of(handle)
    assert result.phase.value == "succeeded", result.message
    assert result.to_version == "off" and not result.regressions
    check = next(c for c in result.checks if c.name == "bookings_per_minute")
    assert check.verdict == "passed" and "one week earlier" in check.baseline_source
    item = next(i for i in result.checklist if i.item == "Business metrics stable")
    assert item.state == "passed" and "bookings_per_minute: ok" in item.evidence
    steps = {st.name: st.state.value for st in result.steps}
    assert steps["Validate rollback"] == steps["Monitor post-rollback"] == "succeeded"


@pytest.mark.parametrize("cities,recovers", [(None, True), (["los-angeles"], False)], ids=["all-cities", "one-city"])
async def test_a_flag_rollback_on_the_dev_server_is_judged_by_the_bookings_it_affects(dev_env, aws, tmp_path,
                                                                                     cities, recovers):
    """Real time on the dev server, the sandbox's own Scenario 4: its emitter reports bookings per minute
    every second from what AppConfig serves (a third lower while new_feature_enabled is on). Turning the
    flag off everywhere brings them back to last week's level; turning it off in one city does not, and
    that is a regression of the rollback, with the affected service's checks judged too."""
    from common.models import FeatureFlagRollbackInput
    from sandbox.catalog import bookings_metric
    from sandbox.metrics import MetricsEmitter
    from tests.conftest import FAST_POLICY, write_catalog
    from workflows.flags import FeatureFlagRollback

    # Windows of 12 s, one sample per 2 s, so real time passes quickly; the runbook's rules are unchanged.
    catalog = write_catalog(tmp_path, aws, {**FAST_POLICY, "metric_window_minutes": 0.2,
                                            "reading_interval_minutes": 0.02})
    for m in catalog.data["services"][catalog.api]["metrics"]:
        m["period_seconds"] = 2
    flag = catalog.name("new_feature_enabled")
    catalog.data["flags"][flag].update(metrics=[{**bookings_metric(), "period_seconds": 2}], services=[catalog.api])
    catalog.path.write_text(yaml.safe_dump(catalog.data, sort_keys=False))
    emitter = MetricsEmitter(aws.endpoint_url, interval=1)
    emitter.start()
    try:
        async with in_process_worker(dev_env.client, catalog) as worker:
            handle = await dev_env.client.start_workflow(FeatureFlagRollback.run, FeatureFlagRollbackInput(
                flag=flag, action="disable", all_cities=cities is None, cities=cities, severity="SEV-2",
                requested_by="dana", id_token=id_token("dana"), reason="bookings dropped", monitor_minutes=0.05),
                id=new_id(), task_queue=worker.task_queue)
            if recovers:
                result = await handle.result()
            else:
                with pytest.raises(WorkflowFailureError) as excinfo:
                    await handle.result()
                assert "the affected service did not recover" in failure_text(excinfo)
                result = await status_of(handle)
    finally:
        emitter.stop()
    steps = {st.name: st.state.value for st in result.steps}
    assert steps["Verify flag state"] == "succeeded"
    bookings = next(c for c in result.checks if c.name == "bookings_per_minute")
    assert "one week earlier" in bookings.baseline_source and bookings.baseline == pytest.approx(100)
    assert "Rastup/Business/BookingsPerMinute" in bookings.detail and bookings.samples >= 3
    service = {c.name: c for c in result.checks if c.name.startswith(f"{catalog.api}: ")}
    assert service[f"{catalog.api}: error_rate"].verdict == "passed", service  # the service, judged as it served
    if recovers:
        assert result.phase.value == "succeeded", result.message
        assert bookings.verdict == "passed" and bookings.value > 90, bookings.detail
        assert steps["Validate rollback"] == steps["Monitor post-rollback"] == "succeeded"
        assert not result.regressions
    else:
        assert bookings.verdict == "failed" and bookings.value == pytest.approx(66), bookings.detail
        assert "at most 10% below baseline" in bookings.detail and "2 failing readings in a row" in bookings.detail
        assert [r.name for r in result.regressions] == ["bookings_per_minute"]
        assert steps["Validate rollback"] == "failed"


async def test_a_monitoring_window_without_evidence_is_inconclusive_and_marks_nothing_good(ts_env, aws, catalog):
    # Validation passed on v1.2.2's own data; then every monitoring read failed (the metrics went dark).
    # Before: the rollback said "monitoring found no regression" and tagged v1.2.2 known-good on no evidence.
    with_metrics(catalog, catalog.api, [metric_of(catalog)])
    healthy_history(aws, catalog, 0.2)
    put(aws, {"Service": catalog.suffix, "Version": "v1.2.2"}, noisy(0.2, 5), newest_minutes_ago=0.5)
    async with in_process_worker(ts_env.client, catalog) as worker:
        handle = await ts_env.client.start_workflow(ServiceRollback.run, req(catalog.api), id=new_id(),
                                                    task_queue=worker.task_queue)
        await wait_phase(handle, "monitoring", timeout=60)
        aws.faults.inject("GetMetricData", *["denied"] * 500)
        result = await handle.result()
    aws.faults.clear()
    assert result.phase.value == "succeeded", result.message  # the change itself was verified by validation
    assert "no regression" not in result.message
    assert "monitoring was INCONCLUSIVE (no evidence for error_rate)" in result.message
    monitor = next(st for st in result.steps if st.name == "Monitor post-rollback")
    assert "INCONCLUSIVE: no evidence for error_rate" in monitor.detail
    td = aws.client("ecs").describe_task_definition(taskDefinition="api-service:42")["taskDefinition"]
    verdict = {t["key"]: t["value"] for t in aws.client("ecs").list_tags_for_resource(
        resourceArn=td["taskDefinitionArn"])["tags"]}.get("rollback-verdict", "")
    assert not verdict.startswith("good "), verdict  # restored, not known-good
