"""Runbook section 2, "Database Rollback", as the ``DatabaseRollback`` workflow.

"Database rollbacks are risky and should be avoided": the safe path (undo additive
migrations) is one step; the unsafe path (restore a snapshot to a NEW instance) always needs
a database administrator's approval, shows what data will be missing, and validates the
restored data before anything points at it. The original instance is never touched.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from pydantic import ValidationError
from temporalio import workflow
from temporalio.workflow import ParentClosePolicy

with workflow.unsafe.imports_passed_through():
    from activities.ecs import EcsTaskActivities, OneOffTask, TaskRef, TaskState
    from activities.migrations import (
        LocalCommand, MigrationPlan, PlanRequest, plan_migration_rollback, run_migration_command,
    )
    from activities.postgres import DsnRef, SqlQueries, sql_values
    from activities.rds import Instance, RdsActivities, RestoreRequest, Snapshot, SnapshotQuery
    from activities.route53 import Cname, Route53Activities
    from activities.secrets import PointSecret, SecretsActivities
    from common.catalog import Database, Endpoints, IntegrityCheck
    from common.models import (
        CheckResult, DatabaseRollbackInput, Phase, RollbackStatus, ServiceRollbackInput, one_line,
    )
    from workflows.base import RollbackWorkflow
    from workflows import lock
    from workflows.checks import endpoint_probes, http_checks
    from workflows.gate import ExtraRequirement
    from workflows.options import RETRY, call
    from workflows.service import ServiceRollback
    from workflows.timeline import Refused, StepFailed

# migration / post_migration (runbook: "Safe Rollback (Additive Changes Only)", "Post-Migration Rollback")
APP = "Rollback application first"
# The child service rollback gets the Web UI's one-line Summary; runs from before replay without it.
WEB_UI_SUMMARY = "web-ui-summary"
PLAN = "Check migrations are safe to roll back"
APPROVAL = "Approval"
MIGRATE = "Rollback migration"
VERIFY = "Verify schema"
COMPAT = "Check application compatibility"
# snapshot_restore (runbook: "Unsafe Rollback (Data Loss Risk)")
IDENTIFY = "Identify snapshot"
RESTORE = "Create new instance from snapshot"
WAIT = "Wait for instance to be available"
INTEGRITY = "Validate data integrity"
INTEGRITY_NOT_CONFIGURED = "integrity-not-configured"  # skipped, not "succeeded", when no check is listed
CUTOVER = "Update application to use rollback instance"
SMOKE = "Smoke checks"

STEPS = {
    "migration": [PLAN, APPROVAL, MIGRATE, VERIFY, COMPAT],
    "post_migration": [APP, PLAN, APPROVAL, MIGRATE, VERIFY, COMPAT],
    "snapshot_restore": [IDENTIFY, APPROVAL, RESTORE, WAIT, INTEGRITY, CUTOVER, SMOKE],
}


@workflow.defn(name="DatabaseRollback", failure_exception_types=[ValidationError])
class DatabaseRollback(RollbackWorkflow):
    """Rolls a database back by undoing safe migrations or by restoring a snapshot to a new instance."""

    kind = "database"

    @workflow.run
    async def run(self, request: DatabaseRollbackInput) -> RollbackStatus:
        self.request = request
        return await self.conduct(request, request.database, STEPS[request.mode], self.execute)

    async def execute(self) -> None:
        assert self.catalog is not None
        db = self.catalog.database(self.request.database)
        if self.request.mode == "snapshot_restore":
            await self._snapshot_restore(db)
        else:
            await self._migration(db)

    # --- migrations ------------------------------------------------------------------

    def _version_sql(self, db: Database) -> str:
        assert db.migrations is not None
        return f"SELECT version_num FROM {db.migrations.version_table}"

    async def _migration(self, db: Database) -> None:
        req, tl = self.request, self.timeline
        assert tl is not None
        if req.mode == "post_migration":
            await self._app_first(db)
            if not req.rollback_migration:
                for name in (PLAN, APPROVAL, MIGRATE, VERIFY, COMPAT):
                    tl.skip(name, "the migration stays (backward compatible); set rollback_migration to undo it")
                self.s.message = "application rolled back; the migration was left in place"
                return
        if db.migrations is None:
            raise StepFailed(f"database {req.database!r} has no migrations entry in the catalog; add one "
                             "(directory, rollback command) or use mode snapshot_restore")
        prod = DsnRef(env=db.dsn_env)
        async with tl.step(PLAN) as st:
            current = (await call(sql_values, SqlQueries(dsn=prod, queries=[self._version_sql(db)])))[0]
            if current is None:
                raise StepFailed("the database has no migration version recorded; nothing to roll back")
            plan: MigrationPlan = await call(plan_migration_rollback,
                                             PlanRequest(migrations=db.migrations, current=str(current),
                                                         steps=req.steps))
            self.s.from_version, self.s.to_version = str(current), plan.expected_version or "(none)"
            self.s.plan = [f"undo {m.revision} ({m.file})" for m in plan.to_undo] + [
                f"expect version {plan.expected_version or '(none)'}"]
            unsafe = [m for m in plan.to_undo if m.destructive]
            if unsafe:
                why = "; ".join(f"{m.file} ({', '.join(m.destructive)})" for m in unsafe)
                st.detail = f"destructive: {why}"
                raise Refused(f"mode migration refused: {why} modified or deleted data, so rolling it back "
                              "cannot restore it. Use mode snapshot_restore (runbook: DO NOT use "
                              "migrate:rollback)")
            st.detail = f"{len(plan.to_undo)} additive migration(s) to undo: " + ", ".join(
                m.revision for m in plan.to_undo)
        if req.dry_run:
            for name in (APPROVAL, MIGRATE, VERIFY, COMPAT):
                tl.skip(name, "dry run")
            self.s.message = "dry run: nothing was changed"
            return
        await self.begin(self._resources(db))

        await self.approval(context=f"roll back {len(plan.to_undo)} migration(s) of {req.database}: "
                                    f"{current} -> {plan.expected_version or '(none)'}")
        self.set_phase(Phase.rolling_back)
        async with tl.step(MIGRATE) as st:
            st.detail = await self._run_migration_command(db, prod, str(current), plan)
        self.set_phase(Phase.validating)
        async with tl.step(VERIFY) as st:
            now = (await call(sql_values, SqlQueries(dsn=prod, queries=[self._version_sql(db)])))[0]
            if now != plan.expected_version:
                raise StepFailed(f"schema validation failed: the database is at migration {now!r}, expected "
                                 f"{plan.expected_version!r} after rolling back {req.steps} step(s)")
            st.detail = f"database at migration {now}, as expected"
            self.s.checks = [CheckResult(name="schema version", kind="database", ok=True, value=str(now),
                                         baseline=plan.expected_version, detail=st.detail, at=workflow.now())]
        await self._smoke(db, COMPAT)
        self.s.message = f"{req.database}: {req.steps} migration(s) rolled back to {plan.expected_version}"

    async def _run_migration_command(self, db: Database, prod: DsnRef, current: str, plan: MigrationPlan) -> str:
        assert db.migrations is not None
        rb = db.migrations.rollback
        command = [a.replace("{steps}", str(self.request.steps)) for a in rb.command]
        if rb.runner == "local":
            result = await call(run_migration_command, LocalCommand(
                command=command, cwd=rb.cwd, env=rb.env, timeout_minutes=rb.timeout_minutes, dsn=prod,
                version_sql=self._version_sql(db), run_if_version=current, done_if_version=plan.expected_version),
                options=_long(rb.timeout_minutes))
            self.s.extra["migration_output"] = result.output
            return f"`{' '.join(command)}` exited 0" + (" (already done)" if result.skipped else "")
        if rb.ecs is None:
            raise StepFailed("migrations.rollback.runner is ecs but migrations.rollback.ecs is missing")
        token = f"rollback-{workflow.info().run_id[:24]}"
        arn: str = await call(EcsTaskActivities.run_one_off, OneOffTask(
            ecs=rb.ecs, command=command, started_by=token, network=rb.ecs_network, launch_type=rb.ecs_launch_type))
        self.s.extra["migration_task"] = arn
        deadline = workflow.now() + timedelta(minutes=rb.timeout_minutes)
        while True:
            state: TaskState = await call(EcsTaskActivities.task_state, TaskRef(cluster=rb.ecs.cluster, task_arn=arn))
            if state.last_status == "STOPPED":
                if state.exit_code != 0:
                    raise StepFailed(f"migration task {arn.rsplit('/', 1)[-1]} exited {state.exit_code}: "
                                     f"{state.reason}; see its logs")
                return f"ECS task {arn.rsplit('/', 1)[-1]} ran `{' '.join(command)}` and exited 0"
            if workflow.now() >= deadline:
                raise StepFailed(f"migration task still {state.last_status} after {rb.timeout_minutes:g} min")
            await workflow.sleep(5)

    async def _app_first(self, db: Database) -> None:
        """Runbook: "Rollback application first" as a child ServiceRollback (own approval gate)."""
        assert self.timeline is not None
        if not db.app_service:
            raise StepFailed(f"database {self.request.database!r} has no app_service in the catalog; "
                             "post_migration needs to know which service to roll back first")
        child_id = f"rollback-service-{db.app_service}"
        await self.begin(self._resources(db))  # the child locks the service it rolls back
        async with self.timeline.step(APP) as st:
            self.s.extra["application_rollback"] = child_id
            st.detail = f"child workflow {child_id}: approve it there"
            self._publish()
            child = ServiceRollbackInput(service=db.app_service, to_version=self.request.to_version,
                                         severity=self.s.severity, requested_by=self.s.requested_by,
                                         reason=f"post-migration rollback of {self.request.database}: {self.s.reason}",
                                         monitor_minutes=self.request.monitor_minutes)
            request = await self.vouched(child, "service", db.app_service)
            summary = {}  # the Web UI's Summary line (runs started before it replay without)
            if workflow.patched(WEB_UI_SUMMARY):
                summary["static_summary"] = one_line("service", db.app_service, None, child.to_version,
                                                     child.severity, child.requested_by)
            result: RollbackStatus = await workflow.execute_child_workflow(
                ServiceRollback.run, request, id=child_id, parent_close_policy=ParentClosePolicy.REQUEST_CANCEL,
                **summary)
            if result.phase != Phase.succeeded:
                raise StepFailed(f"application rollback ended {result.phase.value}: {result.message}")
            st.detail = f"{db.app_service} rolled back to {result.to_version} ({child_id})"

    # --- snapshot restore ------------------------------------------------------------

    async def _snapshot_restore(self, db: Database) -> None:
        req, tl = self.request, self.timeline
        assert tl is not None and self.catalog is not None
        policy = self.catalog.policy
        if not db.rds_instance:
            raise StepFailed(f"database {req.database!r} has no rds_instance in the catalog; "
                             "snapshot_restore needs it")
        if db.cutover is None:
            raise StepFailed(f"database {req.database!r} has no cutover in the catalog: say how the application "
                             "is pointed at the restored instance (secret or route53)")
        async with tl.step(IDENTIFY) as st:
            source: Instance = await call(RdsActivities.describe_instance, db.rds_instance)
            snaps: list[Snapshot] = await call(RdsActivities.list_snapshots, SnapshotQuery(
                instance=db.rds_instance, include_automatic=req.include_automatic or bool(req.snapshot_id)))
            snap = choose_snapshot(snaps, db.rds_instance, req.snapshot_id,
                                   req.restore_before or workflow.now(), req.include_automatic)
            new_id = req.new_instance or f"{db.rds_instance}-rollback"
            if new_id == db.rds_instance:
                raise StepFailed("new_instance must differ from the original: the original is never modified")
            instance_class = req.instance_class or source.instance_class
            multi_az = source.multi_az if req.multi_az is None else req.multi_az
            lost = workflow.now() - snap.created
            self.s.from_version, self.s.to_version = db.rds_instance, f"{new_id} (from {snap.id})"
            self.s.extra.update(snapshot_id=snap.id, snapshot_time=snap.created.isoformat(),
                                new_instance=new_id, writes_missing_since=snap.created.isoformat())
            self.s.plan = [
                f"rds restore-db-instance-from-db-snapshot --db-instance-identifier {new_id} "
                f"--db-snapshot-identifier {snap.id} --db-instance-class {instance_class}"
                + (" --multi-az" if multi_az else ""),
                f"wait until {new_id} is available (timeout {policy.db_restore_timeout_minutes:g} min)",
                f"validate data integrity on {new_id}: {len(db.integrity_checks)} check(s)",
                f"cutover: {db.cutover.kind} -> {new_id}", f"{db.rds_instance} is left untouched",
            ]
            st.detail = (f"{snap.id} ({snap.type}) taken {snap.created:%Y-%m-%d %H:%M:%S} UTC; "
                         f"writes in the last {_duration(lost)} will be missing")
        if req.dry_run:
            for name in (APPROVAL, RESTORE, WAIT, INTEGRITY, CUTOVER, SMOKE):
                tl.skip(name, "dry run")
            self.s.message = "dry run: nothing was changed"
            return
        await self.begin([*self._resources(db), lock.rds_instance(new_id), *cutover_resources(db)])

        await self.approval(
            context=(f"RESTORE {db.rds_instance} from snapshot {snap.id} taken {snap.created:%Y-%m-%d %H:%M:%S} UTC "
                     f"to NEW instance {new_id} ({instance_class}{', Multi-AZ' if multi_az else ''}). "
                     f"Writes from {snap.created:%Y-%m-%d %H:%M:%S} UTC to now ({_duration(lost)}) will NOT be in "
                     f"the restored database. Then point the application at it ({db.cutover.kind})."),
            extra=[ExtraRequirement(role="dbas")])
        self.set_phase(Phase.rolling_back)
        async with tl.step(RESTORE) as st:
            await call(RdsActivities.restore_from_snapshot, RestoreRequest(
                snapshot_id=snap.id, new_instance=new_id, instance_class=instance_class, multi_az=multi_az))
            st.detail = f"{new_id} from {snap.id}"
        async with tl.step(WAIT) as st:
            restored = await self._wait_available(new_id)
            st.detail = f"{new_id} available at {restored.host}:{restored.port}"
        self.set_phase(Phase.validating)
        if not db.integrity_checks and workflow.patched(INTEGRITY_NOT_CONFIGURED):
            tl.skip(INTEGRITY, "not configured: the catalog lists no integrity_checks for this database, "
                               "so no check ran")
        else:
            async with tl.step(INTEGRITY) as st:
                st.detail = await self._integrity(db, restored, snap.created)
        self.set_phase(Phase.rolling_back)
        async with tl.step(CUTOVER) as st:
            st.detail = await self._cutover(db, restored)
        self.set_phase(Phase.validating)
        await self._smoke(db, SMOKE)
        self.s.message = (f"{req.database} now served by {new_id} (restored from {snap.id}); "
                          f"{db.rds_instance} was left untouched")

    def left_behind(self) -> tuple[str, str]:
        req = self.request
        if req.mode != "snapshot_restore":
            return (f"the migration command ran (the database was at {self.s.from_version})",
                    f"the application's own upgrade returns the schema to {self.s.from_version} "
                    "(e.g. alembic upgrade <revision>); see the command's output in status.extra")
        new = self.s.extra.get("new_instance", "?")
        cut = self.timeline.get(CUTOVER).state.value if self.timeline else "pending"  # type: ignore[union-attr]
        db = self.catalog.database(req.database) if self.catalog else None
        if cut == "pending":
            return (f"new instance {new} created; the application still uses {self.s.from_version}, which was "
                    "never modified", f"nothing serves from {new}: delete it when it is no longer needed "
                    f"(aws rds delete-db-instance --db-instance-identifier {new} --skip-final-snapshot)")
        how = (f"the secret {db.cutover.secret_id}" if db and db.cutover and db.cutover.kind == "secret"
               else "the DNS record")
        return (f"the application was pointed at {new} ({how}); {self.s.from_version} was never modified",
                f"point {how} back at {self.s.from_version} (its endpoint is unchanged) and redeploy the "
                "application, then delete " + new + " when it is no longer needed")

    def _resources(self, db: Database) -> list[str]:
        return [lock.database(self.request.database)] + ([lock.rds_instance(db.rds_instance)] if db.rds_instance else [])

    async def _wait_available(self, instance_id: str) -> Instance:
        policy = self.catalog.policy  # type: ignore[union-attr]
        deadline = workflow.now() + timedelta(minutes=policy.db_restore_timeout_minutes)
        while True:
            inst: Instance | None = await call(RdsActivities.find_instance, instance_id)
            if inst is not None and inst.status == "available" and inst.host:
                return inst
            if workflow.now() >= deadline:
                raise StepFailed(f"{instance_id} not available after {policy.db_restore_timeout_minutes:g} min "
                                 f"(status {inst.status if inst else 'missing'})")
            await workflow.sleep(policy.db_poll_seconds)

    async def _integrity(self, db: Database, restored: Instance, snapshot_time: datetime) -> str:
        if not db.integrity_checks:
            return "no integrity checks in the catalog: none run"
        if not db.restored_dsn:
            raise StepFailed("integrity_checks need restored_dsn in the catalog to reach the restored instance")
        dsn = DsnRef(template=db.restored_dsn, host=restored.host, port=restored.port)
        values = await call(sql_values, SqlQueries(dsn=dsn, queries=[c.sql for c in db.integrity_checks]))
        results = [judge_integrity(c, v, snapshot_time, workflow.now()) for c, v in zip(db.integrity_checks, values)]
        self.s.checks = results
        failed = [r for r in results if not r.ok]
        if failed:
            raise StepFailed("data integrity check failed on the restored instance, so the application was NOT "
                             "pointed at it: " + "; ".join(f"{r.name}: {r.detail}" for r in failed))
        return f"{len(results)} check(s) passed: " + "; ".join(f"{r.name}={r.value}" for r in results)

    async def _cutover(self, db: Database, restored: Instance) -> str:
        c = db.cutover
        assert c is not None and restored.host
        if c.kind == "route53":
            await call(Route53Activities.upsert_cname, Cname(hosted_zone_id=c.hosted_zone_id or "",
                                                             name=c.record_name or "", target=restored.host))
            return f"{c.record_name} CNAME -> {restored.host}"
        await call(SecretsActivities.point_secret_at, PointSecret(secret_id=c.secret_id or "", host_key=c.host_key,
                                                                  host=restored.host, port=restored.port))
        for svc in c.restart_services:
            await call(EcsTaskActivities.force_new_deployment, svc)
        restarted = ", ".join(s.service for s in c.restart_services) or "no service"
        return f"secret {c.secret_id} -> {restored.host}; restarted {restarted}"

    async def _smoke(self, db: Database, step: str) -> None:
        assert self.timeline is not None
        if not db.smoke_checks:
            self.timeline.skip(step, "no smoke checks in the catalog")
            return
        async with self.timeline.step(step) as st:
            results: list[CheckResult] = await http_checks(endpoint_probes(Endpoints(), db.smoke_checks, None))
            self.s.checks = [*self.s.checks, *results]
            failed = [r for r in results if r.ok is False]
            if failed:
                raise StepFailed("smoke checks failed: " + "; ".join(f"{r.name}: {r.detail}" for r in failed))
            st.detail = f"{len(results)} smoke check(s) passed"


def cutover_resources(db: Database) -> list[str]:
    """What pointing the application at the restored instance touches."""
    c = db.cutover
    if c is None:
        return []
    if c.kind == "route53":
        return [lock.dns_record(c.hosted_zone_id or "", c.record_name or "")]
    return [lock.secret(c.secret_id or ""), *(lock.ecs_service(s) for s in c.restart_services)]


def choose_snapshot(snaps: list[Snapshot], instance: str, snapshot_id: str | None, before: datetime,
                    include_automatic: bool) -> Snapshot:
    """The named snapshot, or the newest one taken before ``before`` (manual only unless asked)."""
    usable = [s for s in snaps if s.status == "available"]
    if snapshot_id:
        match = next((s for s in usable if s.id == snapshot_id), None)
        if match is None:
            raise StepFailed(f"snapshot {snapshot_id!r} of {instance} does not exist or is not available "
                             f"(available: {', '.join(s.id for s in usable) or 'none'})")
        return match
    candidates = [s for s in usable if s.created < before and (include_automatic or s.type == "manual")]
    if not candidates:
        kinds = "snapshot" if include_automatic else "manual snapshot"
        oldest = min((s.created for s in usable), default=None)
        raise StepFailed(f"no {kinds} of {instance} was taken before {before:%Y-%m-%d %H:%M:%S} UTC"
                         + (f" (oldest: {oldest:%Y-%m-%d %H:%M:%S} UTC)" if oldest else " (there are none)"))
    return max(candidates, key=lambda s: s.created)


def judge_integrity(c: IntegrityCheck, value, snapshot_time: datetime, now: datetime) -> CheckResult:
    problems = []
    if value is None:
        problems.append("query returned no row")
    else:
        if c.equals is not None and str(value) != str(c.equals) and value != c.equals:
            problems.append(f"expected {c.equals}")
        if c.min is not None and (not isinstance(value, float) or value < c.min):
            problems.append(f"expected at least {c.min:g}")
        if c.max is not None and (not isinstance(value, float) or value > c.max):
            problems.append(f"expected at most {c.max:g}")
        if c.max_age_before_snapshot_minutes is not None:
            try:
                at = datetime.fromisoformat(str(value))
                age = (snapshot_time - at).total_seconds() / 60
                if age > c.max_age_before_snapshot_minutes:
                    problems.append(f"latest record is {age:.0f} min older than the snapshot "
                                    f"(allowed {c.max_age_before_snapshot_minutes:g})")
            except ValueError:
                problems.append("not a timestamp")
    shown = value if not isinstance(value, float) else round(value, 4)
    return CheckResult(name=c.name, kind="integrity", ok=not problems, value=shown,
                       detail=f"{c.name} = {shown}" + (": " + ", ".join(problems) if problems else ""), at=now)


def _duration(d: timedelta) -> str:
    minutes = int(d.total_seconds() // 60)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m"


def _long(minutes: float) -> dict:
    """Options for the migration command: one attempt may take as long as the command may."""
    return dict(start_to_close_timeout=timedelta(minutes=minutes + 1), retry_policy=RETRY)
