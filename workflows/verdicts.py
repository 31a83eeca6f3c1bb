"""Verdicts: every metric check of every procedure is judged here, once (docs/verdicts.md).

A verdict is ``passed``, ``failed`` or ``inconclusive``, with one line a person can check:
what was measured (the serving version, its window and sample count), the baseline it was
compared with (measured from data: whose, over which window, how many samples; or the
catalog's constant, saying so), the rule, and the Mann-Whitney U test's p-value and effect size.

- **Measured baselines.** ``last_good``: the same metric of the last known-good version in the
  window before the change being rolled back began; ``week_ago``: the same metric one week
  earlier. The catalog orders them per metric; its constant is the fallback when neither has
  data (a query error is not "no data": that baseline is inconclusive, and read again at the next
  reading). Baselines are read once per rollback and kept.
- **No evidence, no pass.** No samples, fewer than ``policy.min_samples``, no baseline at all, or
  a query error is ``inconclusive``; ``blocking`` treats it like a failure unless the catalog
  marks the metric optional.
- **Noise.** A threshold breach fails only if the Mann-Whitney U test (one-sided, at
  ``policy.confidence``) says the serving samples are worse than the baseline's, where both sides
  have ``policy.mann_whitney_min_samples`` samples; and a check fails only after
  ``policy.failure_limit`` consecutive failing readings, ``policy.reading_interval_minutes``
  apart (durable timers). Every reading is kept in the status (bounded).

The judging (``judge``) is a pure function; ``Verdicts`` schedules the reads (activities in
``activities/metrics.py``) and keeps the baselines of one rollback.
"""

from __future__ import annotations

import asyncio
import statistics
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from pydantic import BaseModel, Field
from temporalio import workflow
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from scipy.stats import mannwhitneyu

    from activities.metrics import CloudWatchActivities, MetricActivities, SampleRead, Samples
    from common.catalog import Catalog, MetricQuery
    from common.models import CheckResult, RollbackStatus
    from common.policy import Policy
    from workflows import telemetry
    from workflows.options import QUICK, call
    from workflows.timeline import innermost_message

PATCH = "verdicts-v1"  # workflow.patched id of every command change this module brought
EVIDENCE = "verdicts-await-evidence"  # validation reads again while its windows are too thin to judge
UNREAD = "verdicts-unread-baseline"  # a baseline query error is inconclusive and not kept
MAX_READINGS = 200  # kept in status.readings; older ones are counted in readings_dropped
WEEK = 7


@dataclass
class BaselineRef:
    """Where a rollback's measured baselines come from.

    ``version``: the last known-good version (None: the version serving when measured, e.g. a flag
    rollback, where the service's version does not change); ``since``: when the change being
    rolled back began (an ECS deployment's start, a Lambda version's publication, a flag or
    configuration deployment); ``change``: that change, in words ("the v1.2.3 deploy").
    """

    version: str | None = None
    since: datetime | None = None
    change: str = "the change"


def baseline_ref(target_version: str | None, since: datetime | None, change: str) -> BaselineRef:
    """The one place a procedure's "last known good" is looked up: today the rollback's target
    version, in the window before the change began. A recorded last-known-good version can take
    its place here without touching a procedure."""
    return BaselineRef(version=target_version, since=since, change=change)


class Baseline(BaseModel):
    value: float | None = None  # None: no data and no constant
    samples: list[float] = Field(default_factory=list)  # empty for the catalog's constant
    source: str


def window_text(start: datetime, end: datetime, with_date: bool = False) -> str:
    day = f"{start:%Y-%m-%d} " if with_date else ""
    return f"{day}{start:%H:%M}-{end:%H:%M} UTC"


def _rule(q: MetricQuery, base: float, policy: Policy) -> tuple[float, bool, str]:
    """(limit, higher_is_worse, rule) for the metric's kind, from the runbook's thresholds."""
    t = policy.thresholds
    if q.kind == "error_rate":
        return base + t.error_rate_pp_above_baseline, True, \
            f"at most {t.error_rate_pp_above_baseline:g} points above baseline"
    if q.kind == "latency_p95":
        return base * (1 + t.latency_p95_pct_above_baseline / 100), True, \
            f"at most {t.latency_p95_pct_above_baseline:g}% above baseline"
    return base * (1 - t.business_metric_drop_pct / 100), False, \
        f"at most {t.business_metric_drop_pct:g}% below baseline"


def judge(q: MetricQuery, version: str | None, serving: Samples | None, error: str | None, base: Baseline,
          policy: Policy, at: datetime) -> CheckResult:
    """One reading's verdict. Pure: the same samples give the same verdict."""
    u = q.unit
    r = CheckResult(name=q.name, kind=q.kind, ok=None, at=at, optional=q.optional, version=version,
                    baseline=None if base.value is None else round(base.value, 4), baseline_source=base.source)
    on = f" on {version}" if version else ""
    if error is not None:
        r.detail = f"{q.name}{on}: not checked: the query failed: {error}"
        return r
    assert serving is not None
    r.window, r.samples = window_text(serving.start, serving.end), len(serving.values)
    measured = f"{r.window}, {r.samples} sample(s)" + (f" of {serving.source}" if serving.source else "")
    if r.samples < policy.min_samples:
        r.detail = (f"{q.name}{on}: not checked: {r.samples} sample(s) in {r.window}, at least "
                    f"{policy.min_samples} needed ({serving.source})")
        return r
    value = statistics.fmean(serving.values)
    r.value = round(value, 4)
    if base.value is None:
        r.detail = f"{q.name} {value:.3g}{u}{on} ({measured}): not checked: no baseline ({base.source})"
        return r
    limit, higher_is_worse, rule = _rule(q, base.value, policy)
    r.limit, r.rule = round(limit, 4), rule
    breach = value > limit if higher_is_worse else value < limit
    stats = ""
    significant = True  # without the test, the threshold alone decides
    n = policy.mann_whitney_min_samples
    if len(base.samples) >= n and r.samples >= n:
        alternative = "greater" if higher_is_worse else "less"
        res = mannwhitneyu(serving.values, base.samples, alternative=alternative)
        u_stat = float(res.statistic)
        share = u_stat / (r.samples * len(base.samples))  # P(serving > baseline), ties counted half
        r.p_value = round(float(res.pvalue), 6)
        r.effect_size = round(share if higher_is_worse else 1 - share, 3)
        significant = r.p_value < 1 - policy.confidence
        stats = (f"; Mann-Whitney U p={r.p_value:.3g}, effect {r.effect_size:.2f} "
                 f"({'significant' if significant else 'not significant'} at {policy.confidence:.0%})")
    else:
        stats = f"; too few samples for Mann-Whitney U (need {n} each side): threshold only"
    if breach and significant:
        r.ok, why = False, "failed"
    elif breach:
        r.ok, why = True, "passed: beyond the limit, but not significantly worse than the baseline (noise)"
    else:
        r.ok, why = True, "passed"
    r.verdict = "passed" if r.ok else "failed"
    r.detail = (f"{q.name} {value:.3g}{u}{on} ({measured}) vs baseline {base.value:.3g}{u} = {base.source}; "
                f"rule: {rule} (limit {limit:.3g}{u}){stats}: {why}")
    return r


def blocking(results: list[CheckResult]) -> list[CheckResult]:
    """The results that stop a step: failed ones, and inconclusive ones not marked optional."""
    return [r for r in results if r.ok is False or (r.ok is None and not r.optional)]


def awaiting_evidence(failed: list[CheckResult], policy: Policy) -> bool:
    """Whether all that blocks is windows too thin to judge yet: right after a rollback, the version
    now serving has only seconds of data (per-version metrics start at the change). Reading again
    later can decide; a failed check or a query error cannot wait it out."""
    return bool(failed) and all(r.ok is None and r.samples is not None and r.samples < policy.min_samples
                                for r in failed)


def summary(results: list[CheckResult]) -> str:
    passed = sum(1 for r in results if r.ok)
    unchecked = [r.name for r in results if r.ok is None]
    return f"{passed} check(s) passed" + (f"; not checked (optional): {', '.join(unchecked)}" if unchecked else "")


def keep_readings(s: RollbackStatus, readings: list[CheckResult]) -> None:
    for r in readings:
        telemetry.count(telemetry.CHECKS, kind=r.kind, verdict=r.verdict or "inconclusive")
    s.readings.extend(r.model_copy() for r in readings)
    extra = len(s.readings) - MAX_READINGS
    if extra > 0:
        del s.readings[:extra]
        s.readings_dropped += extra


@dataclass
class Verdicts:
    """The metric checks of one rollback: its baselines (read once) and its readings."""

    catalog: Catalog
    ref: BaselineRef
    status: RollbackStatus
    _baselines: dict[tuple[str, str | None], Baseline] = field(default_factory=dict)

    @property
    def policy(self) -> Policy:
        return self.catalog.policy

    async def _read(self, q: MetricQuery, version: str | None, **window) -> Samples:
        return await call(MetricActivities.read_samples, SampleRead(
            query=q, prometheus=self.catalog.prometheus, version=version, **window), options=QUICK)

    async def baseline(self, q: MetricQuery, serving: str | None) -> Baseline:
        version = self.ref.version or serving
        key = (q.name, version)
        if key not in self._baselines:
            base, errors = await self._measure(q, version)
            if errors and workflow.patched(UNREAD):
                # A query error is not "no data": judge nothing against the constant, keep nothing,
                # and read the baseline again at the next reading.
                return Baseline(source=f"the baseline could not be read ({'; '.join(errors)}); it is read again "
                                       "at the next reading")
            self._baselines[key] = base
        return self._baselines[key]

    async def _measure(self, q: MetricQuery, version: str | None) -> tuple[Baseline, list[str]]:
        """The first source with data; else the catalog's constant (or none), and the sources whose query failed."""
        tried, errors = [], []
        whose = version or q.name
        for source in q.baseline_from:
            if source == "last_good" and self.ref.since is None:
                tried.append(f"last_good: the start of {self.ref.change} is not known")
                continue
            try:
                if source == "last_good":
                    got = await self._read(q, version, minutes=q.baseline_minutes, before=self.ref.since,
                                           clear_of_minutes=self.policy.metric_window_minutes)
                else:
                    got = await self._read(q, version, minutes=q.baseline_minutes, days_ago=WEEK)
            except ActivityError as e:
                tried.append(f"{source}: query failed: {innermost_message(e)}")
                errors.append(tried[-1])
                continue
            if len(got.values) >= self.policy.min_samples:
                when = (f"before {self.ref.change}" if source == "last_good" else "one week earlier")
                return Baseline(value=statistics.fmean(got.values), samples=got.values,
                                source=f"{whose} over {window_text(got.start, got.end, source == 'week_ago')} "
                                       f"{when}, {len(got.values)} samples"), []
            tried.append(f"{source}: {len(got.values)} sample(s) in {window_text(got.start, got.end, True)}")
        if q.baseline is not None:
            return Baseline(value=q.baseline, source=f"the catalog's constant {q.baseline:g}{q.unit}, as no "
                                                     f"measured baseline had data ({'; '.join(tried)})"), errors
        return Baseline(source="no measured baseline had data and the catalog gives no constant ("
                               + "; ".join(tried) + ")"), errors

    async def reading(self, q: MetricQuery, version: str | None) -> CheckResult:
        error, got = None, None
        try:
            base = await self.baseline(q, version)
            got = await self._read(q, version, minutes=self.policy.metric_window_minutes)
        except ActivityError as e:
            error, base = innermost_message(e), Baseline(source="not measured")
        return judge(q, version, got, error, base, self.policy, workflow.now())

    async def metric_checks(self, metrics: list[MetricQuery], alarms: list[str],
                            version: str | None) -> list[CheckResult]:
        """Each metric's verdict: a failing one is read again, ``reading_interval_minutes`` apart,
        and fails only after ``failure_limit`` failing readings in a row."""
        results = list(await asyncio.gather(*(self.reading(q, version) for q in metrics)))
        for r in results:
            r.readings = 1
        keep_readings(self.status, results)
        for n in range(2, self.policy.failure_limit + 1):
            again = [i for i, r in enumerate(results) if r.ok is False]
            if not again:
                break
            await workflow.sleep(timedelta(minutes=self.policy.reading_interval_minutes))
            fresh = list(await asyncio.gather(*(self.reading(metrics[i], version) for i in again)))
            for i, r in zip(again, fresh):
                if r.ok is False:
                    r.readings = n
                    if n == self.policy.failure_limit:
                        r.detail += f" ({n} failing readings in a row)"
                else:
                    r.readings = 1
                    r.detail += (f" (the reading before, at {results[i].at:%H:%M:%S}, failed: one failing "
                                 f"reading is not {self.policy.failure_limit} in a row)")
                results[i] = r
            keep_readings(self.status, fresh)
        if self.policy.failure_limit == 1:
            for r in results:
                if r.ok is False:
                    r.detail += " (1 failing reading: policy failure_limit 1)"
        if alarms:
            results.append(await alarm_check(alarms))
        return results


async def alarm_check(alarms: list[str]) -> CheckResult:
    try:
        firing: list[str] = await call(CloudWatchActivities.alarms_firing, alarms, options=QUICK)
    except ActivityError as e:
        return CheckResult(name="alarms", kind="alarms", ok=None, at=workflow.now(),
                           detail=f"not checked: reading the alarms failed: {innermost_message(e)}")
    return CheckResult(name="alarms", kind="alarms", ok=not firing, value=", ".join(firing) or "none",
                       detail=("in ALARM: " + ", ".join(firing)) if firing else
                       f"none of {len(alarms)} alarm(s) firing", at=workflow.now())


def serving_check(expected: str | None, seen: dict[str, str | None]) -> tuple[CheckResult, str | None]:
    """What serves, read from each source (the deployment, the version endpoint), against what
    should: a mismatch is a failed check. Returns it and the version to measure: the version
    endpoint's if there is one (what users get), else the deployment's."""
    known = {k: v for k, v in seen.items() if v}
    serving = known.get("version endpoint") or next(iter(known.values()), None)
    parts = "; ".join(f"{k}: {v}" for k, v in known.items()) or "no source answered"
    at = workflow.now()
    if not known:
        return CheckResult(name="serving version", kind="version", ok=None, at=at,
                           detail=f"not checked: {parts}"), None
    wrong = [k for k, v in known.items() if expected is not None and v != expected]
    ok = not wrong and len(set(known.values())) == 1
    return CheckResult(name="serving version", kind="version", ok=ok, value=serving, baseline=expected,
                       version=serving, at=at,
                       detail=(f"serving {serving} ({parts})" + (f", expected {expected}" if expected else "")
                               + ("" if ok else ": MISMATCH, the metrics are read for what serves"))), serving
