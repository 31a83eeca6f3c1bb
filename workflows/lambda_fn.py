"""Runbook section 5, "Lambda Function Rollback", as the ``LambdaRollback`` workflow."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Awaitable, Callable, TypeVar

from pydantic import ValidationError
from temporalio import workflow
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from activities.batch import Failed
    from activities.lambda_fn import (Aliases, AliasState, AliasTarget, Found, FunctionRef, Functions,
                                      FunctionVersion, Invocation, InvokeResult, LambdaActivities)
    from activities.known_good import Place, Verdict, choose, describe
    from common.catalog import LambdaFunction
    from common.catalog_scope import CatalogScope
    from common.models import CheckResult, LambdaRollbackInput, Phase, RollbackStatus
    from workflows.base import RollbackWorkflow
    from workflows import lock
    from workflows.known_good import refuse_automation, remember
    from workflows.checks import metric_checks
    from workflows.verdicts import PATCH, Verdicts, baseline_ref
    from workflows.options import BATCH, BATCH_CHECK, QUICK, call
    from workflows.timeline import Refused, StepFailed, innermost_message

LIST = "List function versions"
APPROVAL = "Approval"
UPDATE = "Update alias to previous version"
VERIFY = "Verify"
MONITOR = "Monitor post-rollback"
AT_ONCE = 4  # functions of a fleet worked on at the same time, before policy.fleet_concurrency
# A fleet's reads and alias moves as one activity each, for all its functions, instead of one activity
# per function and call (a 200-function fleet ran 1,007 activities and 344 workflow tasks).
FLEET_BATCH = "fleet-batch"

T = TypeVar("T")


@dataclass
class Move:
    """One function's rollback: where its alias is and the version it goes back to."""

    name: str  # catalog name
    fn: LambdaFunction
    before: AliasState
    target: str
    published: list[str]  # oldest first
    why: str = ""  # how the target was chosen, when rollbacks' verdicts played a part
    arn: str = ""  # the function's ARN, where a fleet's batch read it (its verdict tags need no lookup)

    @property
    def where(self) -> str:
        return f"{self.fn.function_name}:{self.before.alias}"


@workflow.defn(name="LambdaRollback", failure_exception_types=[ValidationError])
class LambdaRollback(RollbackWorkflow):
    """Points a Lambda alias (``production``) back at an earlier published version, for one
    function or a fleet of them, as the runbook's section 5.

    Nothing changes before the approval (one for a whole fleet); each alias update is made once
    and verified with get-alias; with ``routing_steps`` traffic moves in steps through the
    alias' routing weights, with the same waits, checks and pause as the service rollback; a
    fleet locks each of its functions, so no other rollback acts on one of them meanwhile.
    """

    kind = "lambda"

    @workflow.run
    async def run(self, request: LambdaRollbackInput) -> RollbackStatus:
        self.request = request
        self.fleet = request.functions is not None
        self.moves: dict[str, Move] = {}
        self.verdicts: dict[str, Verdicts] = {}
        updates = [self._update_step(n) for n in request.names]
        return await self.conduct(request, request.target, [LIST, APPROVAL, *updates, VERIFY, MONITOR],
                                  self.execute)

    def catalog_scope(self, request: LambdaRollbackInput, target: str) -> CatalogScope:  # type: ignore[override]
        return CatalogScope(kind=self.kind, names=request.names)

    async def execute(self) -> None:
        req = self.request
        assert self.catalog is not None and self.timeline is not None
        entries = {n: self.catalog.function(n) for n in req.names}
        policy = self.catalog.policy
        self._batch = self.fleet and workflow.patched(FLEET_BATCH)
        if self.fleet and not req.dry_run and self.ledger is None:  # a run from before begin()
            for name in sorted(req.names):  # the fleet's own lock is taken; now each member's
                if not await self._acquire_lock(name):
                    raise Refused(self.s.message.removeprefix("refused: "))

        async with self.timeline.step(LIST) as st:
            if self._batch:
                self.moves = await self._identify_fleet(entries)
            else:
                self.moves = await self._each(req.names, lambda n: self._identify(n, entries[n]))
            st.detail = "; ".join(self._describe(m) for m in self.moves.values())
        self._record()
        self.s.plan = self._plan()
        if req.dry_run:
            for step in self.s.steps:
                if step.state.value == "pending" and step.name != "Report":
                    self.timeline.skip(step.name, "dry run")
            self.s.message = "dry run: nothing was changed; the plan lists what a real run would do"
            return

        await self.begin([lock.lambda_function(m.fn.function_name) for m in self.moves.values()])
        await self.approval(context="point " + ", ".join(
            f"{m.where} from version {m.before.function_version} to {m.target}" for m in self.moves.values()))

        self.set_phase(Phase.rolling_back)
        if req.routing_steps:
            await self._gradual(req.routing_steps)
        elif self._batch:
            await self._point_fleet()
        else:
            await self._each(list(self.moves), self._point)
        await remember(self, *((self._place(m, m.before.function_version), "bad") for m in self.moves.values()),
                       *((self._place(m, m.target), "restored") for m in self.moves.values()))

        self.set_phase(Phase.validating)
        async with self.timeline.step(VERIFY) as st:
            st.detail = await self._verify()

        minutes = req.monitor_minutes or policy.monitor_minutes
        async with self.timeline.step(MONITOR) as st:
            st.detail = await self.monitor(minutes, policy.monitor_interval_minutes, self._checks)
        if self.monitored_good:
            await remember(self, *((self._place(m, m.target), "good") for m in self.moves.values()))
        self.s.message = (", ".join(f"{m.where} back on version {m.target}" for m in self.moves.values())
                          + self.monitoring_outcome())

    # --- steps -----------------------------------------------------------------------

    async def _identify(self, name: str, fn: LambdaFunction) -> Move:
        versions: list[FunctionVersion] = await call(LambdaActivities.list_function_versions, fn.function_name)
        alias: AliasState = await call(LambdaActivities.get_function_alias,
                                       FunctionRef(function_name=fn.function_name, alias=self.request.alias))
        return self._move(name, fn, versions, alias)

    async def _identify_fleet(self, entries: dict[str, LambdaFunction]) -> dict[str, Move]:
        """Every function's versions and alias in one activity, then each one's target."""
        names = list(entries)
        found: list[Found] = await call(LambdaActivities.identify_functions, Functions(
            refs=[FunctionRef(function_name=entries[n].function_name, alias=self.request.alias) for n in names],
            at_once=self.catalog.policy.fleet_concurrency), options=BATCH)  # type: ignore[union-attr]

        def move(name: str, f: Found) -> Move:
            if f.failed is not None or f.alias is None:
                raise StepFailed(f.failed.error if f.failed else "its alias could not be read")
            return replace(self._move(name, entries[name], f.versions, f.alias), arn=f.arn)

        return self._collect(names, {n: _attempt(lambda: move(n, f)) for n, f in zip(names, found)})

    def _move(self, name: str, fn: LambdaFunction, versions: list[FunctionVersion], alias: AliasState) -> Move:
        published = [v.version for v in reversed(versions)]
        judged = {v.version: v.verdict for v in versions if v.verdict}  # rollbacks' tags (not metric verdicts)
        refuse_automation(self, f"{fn.function_name} version {alias.function_version}",
                          judged.get(alias.function_version))
        target, why = choose_version(alias, published, self.request.to_version, judged)
        bad = next((v for v in versions if v.version == alias.function_version), None)
        # Baselines: the target version while it served, before the current version was published.
        self.verdicts[name] = Verdicts(self.catalog, baseline_ref(  # type: ignore[arg-type]
            target, _published_at(bad.last_modified if bad else ""),
            f"version {alias.function_version} of {fn.function_name}"), self.s)
        if self.request.routing_steps and alias.function_version == "$LATEST":
            raise StepFailed(f"{fn.function_name}:{alias.alias} points at $LATEST, and routing weights need a "
                             "published primary version; leave routing_steps out to move it at once")
        if alias.weights:
            self._event(f"{fn.function_name}:{alias.alias} has routing weights in flight ({_shares(alias)}); "
                        f"the rollback clears them (to drop only those, give to_version {alias.function_version})")
        return Move(name=name, fn=fn, before=alias, target=target, published=published, why=why)

    async def _point(self, name: str) -> None:
        """Move one alias at once (primary = target, routing cleared), as its own step."""
        m = self.moves[name]
        async with self.timeline.step(self._update_step(name)) as st:
            st.detail = self._pointed(m, await call(LambdaActivities.point_function_alias, self._routed(m, 100)))

    async def _point_fleet(self) -> None:
        """Every alias moved at once, in one activity; each function keeps its own step."""
        names = list(self.moves)
        async with self.timeline.steps([self._update_step(n) for n in names]) as steps:
            pointed = await self._point_all(100)
            for step, name in zip(steps, names):
                m, result = self.moves[name], pointed[name]
                if isinstance(result, Exception):
                    self.timeline.fail(step, str(result))  # type: ignore[union-attr]
                    continue
                step.detail = self._pointed(m, result)
        self._collect(names, pointed)

    def _pointed(self, m: Move, changed: bool) -> str:
        """An alias moved at once: the event, and its step's detail."""
        self._event(f"{m.where} now on version {m.target}")
        return f"{m.where} on version {m.target} (was {m.before.function_version})" + (
            "" if changed else " (it already was)")

    async def _point_all(self, pct: int) -> dict[str, bool | Exception]:
        """Every alias to pct% on its target (``_routed``), one activity: each function's answer."""
        names = list(self.moves)
        results: list[bool | Failed] = await call(LambdaActivities.point_function_aliases, Aliases(
            targets=[self._routed(self.moves[n], pct) for n in names],
            at_once=self.catalog.policy.fleet_concurrency), options=BATCH)  # type: ignore[union-attr]
        return {n: StepFailed(r.error) if isinstance(r, Failed) else r for n, r in zip(names, results)}

    async def _read_aliases(self) -> dict[str, CheckResult]:
        """Every alias read in one activity, as each one's alias check."""
        names = list(self.moves)
        try:
            read: list[AliasState | Failed] = await call(LambdaActivities.read_function_aliases, Functions(
                refs=[FunctionRef(function_name=self.moves[n].fn.function_name, alias=self.moves[n].before.alias)
                      for n in names], at_once=self.catalog.policy.fleet_concurrency),  # type: ignore[union-attr]
                options=BATCH_CHECK)
        except ActivityError as e:
            read = [Failed(error=innermost_message(e))] * len(names)
        return {n: self._alias_result(self.moves[n], a) for n, a in zip(names, read)}

    async def _gradual(self, percentages: list[int]) -> None:
        """Every function's alias moves together, step by step, under the shared wait/check/pause."""
        async with AsyncExitStack() as stack:
            steps = [await stack.enter_async_context(self.timeline.step(self._update_step(n))) for n in self.moves]

            async def route(pct: int) -> None:
                if self._batch:
                    self._collect(list(self.moves), await self._point_all(pct))
                    applied = {n: self._routed(m, pct) for n, m in self.moves.items()}
                    for m in self.moves.values():
                        self._routing_event(m, pct, applied[m.name])
                else:
                    applied = await self._each(list(self.moves), lambda n: self._route_one(n, pct))
                self.s.extra["routing_percentage"] = pct
                self.s.extra.setdefault("routing", []).append({"percent": pct, "aliases": {
                    n: {"function_version": to.function_version, "weights": to.weights}
                    for n, to in applied.items()}})
                self._publish()

            done = await self.shift_in_steps(percentages, UPDATE, route, lambda: self._checks(alias=False))
            for step, m in zip(steps, self.moves.values()):
                step.detail = f"{m.where} moved in steps {done} to version {m.target} (was {m.before.function_version})"

    async def _route_one(self, name: str, pct: int) -> AliasTarget:
        m = self.moves[name]
        to = self._routed(m, pct)
        await call(LambdaActivities.point_function_alias, to)
        self._routing_event(m, pct, to)
        return to

    def _routing_event(self, m: Move, pct: int, to: AliasTarget) -> None:
        self._event(f"routing: {pct}% of {m.where} on version {m.target} (primary {to.function_version}"
                    + (f", weights {to.weights})" if to.weights else ", no routing weights)"))

    @staticmethod
    def _routed(m: Move, pct: int) -> AliasTarget:
        """pct% on the target: below 100 the primary stays the current version and the target gets
        an additional weight; at 100 the target is the primary and the routing is cleared."""
        if pct >= 100 or m.target == m.before.function_version:
            return AliasTarget(function_name=m.fn.function_name, alias=m.before.alias, function_version=m.target)
        return AliasTarget(function_name=m.fn.function_name, alias=m.before.alias,
                           function_version=m.before.function_version, weights={m.target: round(pct / 100, 4)})

    async def _verify(self) -> str:
        aliases = await self._read_aliases() if self._batch else {}

        async def one(name: str) -> list[CheckResult]:
            m = self.moves[name]
            results = [aliases[name] if self._batch else await self._alias_check(m)]
            if m.fn.smoke_invoke:
                results.append(await self._smoke(m))
            return results

        results = self._named(await self._each(list(self.moves), one))
        self.s.checks = results
        failed = [r for r in results if r.ok is not True]
        if failed:
            raise StepFailed("verification failed: " + "; ".join(f"{r.name}: {r.detail}" for r in failed))
        return "; ".join(r.detail for r in results)

    async def _checks(self, alias: bool = True) -> list[CheckResult]:
        """While monitoring: each alias still on its target, plus the catalog's metrics and alarms
        for the target version. Between routing steps: the metrics and alarms only."""
        policy = self.catalog.policy  # type: ignore[union-attr]
        aliases = await self._read_aliases() if self._batch and alias else {}

        async def one(name: str) -> list[CheckResult]:
            m = self.moves[name]
            if self._batch:
                check = aliases.get(name)
                serving = check.value if check is not None and isinstance(check.value, str) else m.target
                return ([check] if check is not None else []) + await self.verdicts[name].metric_checks(
                    m.fn.metrics, m.fn.alarms, serving)
            if not workflow.patched(PATCH):
                return (([await self._alias_check(m)] if alias else [])
                        + await metric_checks(m.fn.metrics, m.fn.alarms, m.target, policy))
            if not alias:  # between routing steps: the target version's share of the traffic
                return await self.verdicts[name].metric_checks(m.fn.metrics, m.fn.alarms, m.target)
            check = await self._alias_check(m)  # what the alias serves is what is measured
            serving = check.value if isinstance(check.value, str) else m.target
            return [check] + await self.verdicts[name].metric_checks(m.fn.metrics, m.fn.alarms, serving)

        return self._named(await self._each(list(self.moves), one))

    async def _alias_check(self, m: Move) -> CheckResult:
        try:
            a: AliasState = await call(LambdaActivities.get_function_alias,
                                       FunctionRef(function_name=m.fn.function_name, alias=m.before.alias),
                                       options=QUICK)
        except ActivityError as e:
            return self._alias_result(m, Failed(error=innermost_message(e)))
        return self._alias_result(m, a)

    @staticmethod
    def _alias_result(m: Move, a: AliasState | Failed) -> CheckResult:
        """The alias check: on the target only, no routing left; or why it could not be read."""
        if isinstance(a, Failed):
            return CheckResult(name="alias", kind="version", ok=None, detail=f"could not read {m.where}: {a.error}",
                               at=workflow.now())
        ok = a.function_version == m.target and not a.weights
        now = f"version {a.function_version}" + (f" with routing {_shares(a)}" if a.weights else "")
        return CheckResult(name="alias", kind="version", ok=ok, value=a.function_version, baseline=m.target, at=workflow.now(),
                           detail=f"{m.where} on {now}" + ("" if ok else f", expected version {m.target} only"))

    async def _smoke(self, m: Move) -> CheckResult:
        try:
            r: InvokeResult = await call(LambdaActivities.invoke_function, Invocation(
                function_name=m.fn.function_name, qualifier=m.before.alias, payload=m.fn.smoke_payload),
                options=QUICK)
        except ActivityError as e:
            return CheckResult(name="smoke invoke", kind="smoke", ok=False, at=workflow.now(),
                               detail=f"invoking {m.where} failed: {innermost_message(e)}")
        wrong_version = r.executed_version not in (None, m.target)
        ok = r.status_code == 200 and not r.function_error and not wrong_version
        detail = f"invoked {m.where}: status {r.status_code}"
        if r.function_error:
            detail += f", function error {r.function_error}: {r.payload[:200]}"
        if r.executed_version:
            detail += f", executed version {r.executed_version}" + (f" (expected {m.target})" if wrong_version else "")
        return CheckResult(name="smoke invoke", kind="smoke", ok=ok, value=r.status_code, detail=detail, at=workflow.now())

    # --- helpers ---------------------------------------------------------------------

    def left_behind(self) -> tuple[str, str]:
        undo = [f"aws lambda update-alias --function-name {m.fn.function_name} --name {m.before.alias} "
                f"--function-version {m.before.function_version} --routing-config "
                f"'AdditionalVersionWeights={{{','.join(f'{v}={w:g}' for v, w in m.before.weights.items())}}}'"
                for m in self.moves.values()]
        shown = "; ".join(undo[:5]) + (f"; and {len(undo) - 5} more like it (status.extra.functions has each "
                                       "function's version before)" if len(undo) > 5 else "")
        return "", f"to point the aliases back where they were: {shown}"

    @staticmethod
    def _place(m: Move, version: str) -> Place:
        return Place(kind="lambda", name=m.fn.function_name, version=version, arn=m.arn)

    def _update_step(self, name: str) -> str:
        return f"{UPDATE}: {name}" if self.fleet else UPDATE

    async def _each(self, names: list[str], work: Callable[[str], Awaitable[T]]) -> dict[str, T]:
        """``work`` for every function, AT_ONCE at a time; all finish before a failure is raised,
        so the state reached is known: for one function its own error, for a fleet a summary."""
        assert self.catalog is not None  # runs from before the fast path: AT_ONCE, as they ran
        gate = asyncio.Semaphore(self.catalog.policy.fleet_concurrency if self._fast else AT_ONCE)

        async def one(name: str) -> T:
            async with gate:
                return await work(name)

        results = await asyncio.gather(*(one(n) for n in names), return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException) and not isinstance(r, Exception):
                raise r  # cancellation
        return self._collect(names, dict(zip(names, results)))  # type: ignore[arg-type]

    def _collect(self, names: list[str], outcomes: dict[str, T | Exception]) -> dict[str, T]:
        """Each function's result, or (when any failed) one error saying which failed and which were done."""
        failed = {n: r for n, r in outcomes.items() if isinstance(r, Exception)}
        if failed and not self.fleet:
            raise failed[names[0]]
        if failed:
            ok = [n for n in names if n not in failed]
            raise StepFailed(f"{len(failed)} of {len(names)} function(s) failed: "
                             + "; ".join(f"{n}: {innermost_message(e)}" for n, e in failed.items())
                             + (f" (done for: {', '.join(ok)})" if ok else ""))
        return outcomes  # type: ignore[return-value]

    def _named(self, per_function: dict[str, list[CheckResult]]) -> list[CheckResult]:
        """One list of checks; in a fleet each named after its function."""
        if not self.fleet:
            return [r for rs in per_function.values() for r in rs]
        return [r.model_copy(update={"name": f"{n}: {r.name}"}) for n, rs in per_function.items() for r in rs]

    def _describe(self, m: Move) -> str:
        versions = (f"published {m.published[0]}..{m.published[-1]}" if m.published else "no published version")
        how = ("to_version" if self.request.to_version else
               m.why or f"the published version below {m.before.function_version}")
        flight = f" with routing {_shares(m.before)} in flight" if m.before.weights else ""
        return f"{m.fn.function_name}: {versions}; {m.before.alias} on {m.before.function_version}{flight}; " \
               f"target {m.target} ({how})"

    def _record(self) -> None:
        moves = list(self.moves.values())
        if self.fleet:
            self.s.from_version = ", ".join(f"{m.name}:{m.before.function_version}" for m in moves)
            self.s.to_version = ", ".join(f"{m.name}:{m.target}" for m in moves)
        else:
            self.s.from_version, self.s.to_version = moves[0].before.function_version, moves[0].target
        self.s.extra["functions"] = {m.name: {
            "function_name": m.fn.function_name, "alias": m.before.alias, "from": m.before.function_version,
            "to": m.target, "weights_before": m.before.weights} for m in moves}

    def _plan(self) -> list[str]:
        policy = self.catalog.policy  # type: ignore[union-attr]
        rule = policy.rule(self.s.severity)
        plan = [f"approval: {rule.approvals} x {rule.approver_role} ({self.s.severity}), once for "
                f"{len(self.moves)} function(s)"]
        for m in self.moves.values():
            cmd = f"aws lambda update-alias --function-name {m.fn.function_name} --name {m.before.alias}"
            for pct in self.request.routing_steps or [100]:
                to = self._routed(m, pct)
                weights = ",".join(f"{v}={w:g}" for v, w in to.weights.items())
                plan.append(f"{cmd} --function-version {to.function_version} "
                            f"--routing-config 'AdditionalVersionWeights={{{weights}}}'  # {pct}% on {m.target}")
        if self.request.routing_steps and len(self.request.routing_steps) > 1:
            plan.append(f"between steps: wait {policy.gradual_step_wait_minutes:g} min and check metrics; "
                        "a failed check pauses for a human")
        for m in self.moves.values():
            plan.append(f"aws lambda get-alias --function-name {m.fn.function_name} --name {m.before.alias}"
                        f"  # expect version {m.target}, no routing"
                        + ("; then a smoke invocation through the alias" if m.fn.smoke_invoke else ""))
        plan.append(f"monitor {self.request.monitor_minutes or policy.monitor_minutes:g} minutes")
        return plan


def _attempt(work: Callable[[], T]) -> T | Exception:
    try:
        return work()
    except Exception as e:  # noqa: BLE001 (collected per function by _collect)
        return e


def _published_at(last_modified: str) -> datetime | None:
    """Lambda's LastModified ("2025-11-18T14:05:00.000+0000") as a time; None if it is not one."""
    try:
        return datetime.strptime(last_modified, "%Y-%m-%dT%H:%M:%S.%f%z")
    except ValueError:
        return None


def _shares(a: AliasState) -> str:
    return ", ".join(f"{w * 100:g}% on version {v}" for v, w in a.weights.items())


def choose_version(alias: AliasState, published: list[str], to_version: str | None,
                   verdicts: dict[str, Verdict] | None = None) -> tuple[str, str]:
    """``to_version`` if given (must be published), else the newest published version below the
    one the alias points at now that no rollback left as bad (activities/known_good.py). Lambda
    keeps no alias history, so "the version before" is read from the version numbers: the
    published versions below the alias' current one ($LATEST: every published one). Returns the
    version and, when verdicts played a part, why."""
    verdicts = verdicts or {}
    where = f"{alias.function_name}:{alias.alias}"
    listing = ", ".join(published) or "none"
    if to_version is not None:
        if to_version not in published:
            raise StepFailed(f"to_version {to_version!r} is not a published version of {alias.function_name} "
                             f"(published versions: {listing}); {where} was not changed")
        if to_version == alias.function_version and not alias.weights:
            raise StepFailed(f"{where} already points at version {to_version}; nothing to roll back")
        return to_version, ""
    current = alias.function_version
    older = published if current == "$LATEST" else [v for v in published if int(v) < int(current)]
    if not older:
        raise StepFailed(f"no published version of {alias.function_name} below version {current} "
                         f"(published versions: {listing}) to roll back to; {where} was not changed")
    choice = choose(list(reversed(older)), verdicts, label=lambda v: f"version {v}")
    if choice is None:
        raise StepFailed(f"every published version of {alias.function_name} below {current} was left as bad by a "
                         f"rollback ({'; '.join(describe(f'version {v}', verdicts.get(v)) for v in older[-5:])}); "
                         f"name the version with to_version; {where} was not changed")
    return choice.version, (choice.why if any(v in verdicts for v in older) else "")
