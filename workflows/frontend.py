"""Runbook section 6, "Frontend Rollback", as the ``FrontendRollback`` workflow.

Option 1 (``object_versions``): restore each object's version current at a point in time.
Option 2 (``release_sync``): make the live bucket equal to a release prefix (s3 sync --delete).
Then invalidate CloudFront, wait for it, and verify the site serves the restored index.
"""

from __future__ import annotations

from datetime import timedelta

from pydantic import ValidationError
from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.cloudfront import CloudFrontActivities, InvalidationRef, InvalidationRequest
    from activities.http_checks import HttpProbe
    from activities.s3 import Applied, Live, LiveRequest, ObjectRef, Plan, S3Activities, SyncRequest, VersionRequest
    from common.catalog import Site
    from common.models import CheckResult, FrontendRollbackInput, Phase, RollbackStatus
    from workflows.base import RollbackWorkflow
    from workflows import lock
    from workflows.checks import endpoint_probes, http_checks, metric_checks
    from workflows.verdicts import PATCH, Verdicts, baseline_ref, blocking
    from workflows.options import LONG, call
    from workflows.timeline import StepFailed

PLAN = "Plan frontend rollback"
APPROVAL = "Approval"
VERSIONS = "S3 version rollback"
SYNC = "Sync from previous version"
INVALIDATE = "Invalidate CloudFront cache"
WAIT = "Wait for invalidation"
VERIFY = "Verify"
MONITOR = "Monitor post-rollback"
FROM_VERSION = "frontend-from-version"  # the plan reads which release is live (status: "v1.2.3 -> v1.2.2")
PATHS = ["/*"]  # a rollback changes many objects at once: the runbook invalidates everything


@workflow.defn(name="FrontendRollback", failure_exception_types=[ValidationError])
class FrontendRollback(RollbackWorkflow):
    """Restores a static site from S3 versions or a release prefix, then refreshes CloudFront."""

    kind = "frontend"

    @workflow.run
    async def run(self, request: FrontendRollbackInput) -> RollbackStatus:
        self.request = request
        restore = SYNC if request.strategy == "release_sync" else VERSIONS
        return await self.conduct(request, request.site, [PLAN, APPROVAL, restore, INVALIDATE, WAIT, VERIFY, MONITOR],
                                  self.execute)

    async def execute(self) -> None:
        req, tl = self.request, self.timeline
        assert self.catalog is not None and tl is not None
        site = self.catalog.site(req.site)
        self.customer_facing = site.customer_facing
        policy = self.catalog.policy
        sync = req.strategy == "release_sync"
        if sync and not site.versions_bucket:
            raise StepFailed(f"site {req.site!r} has no versions_bucket in the catalog; use strategy object_versions")

        async with tl.step(PLAN) as st:
            if workflow.patched(FROM_VERSION):
                live: Live = await call(S3Activities.live_release, LiveRequest(bucket=site.bucket,
                                                                               versions_bucket=site.versions_bucket))
                self.s.from_version = live.release or (
                    f"live as of {live.last_modified:%Y-%m-%d %H:%M:%S} UTC" if live.last_modified else "empty bucket")
            if sync:
                job: SyncRequest | VersionRequest = SyncRequest(
                    source_bucket=site.versions_bucket or "", source_prefix=f"{req.to_release}/", bucket=site.bucket)
                plan: Plan = await call(S3Activities.plan_release_sync, job)
                self.s.to_version = req.to_release
            else:
                assert req.restore_to is not None
                job = VersionRequest(bucket=site.bucket, restore_to=req.restore_to, keys=req.keys, exact=req.exact)
                plan = await call(S3Activities.plan_object_versions, job)
                self.s.to_version = f"as of {req.restore_to:%Y-%m-%d %H:%M:%S} UTC"
            self.s.extra["plan"] = plan.model_dump()
            self.s.plan = [f"{plan.to_copy} object(s) to copy ({plan.bytes} bytes), {plan.to_delete} to delete, "
                           f"{plan.unchanged} unchanged", *plan.sample]
            if site.distribution_id:
                self.s.plan.append(f"cloudfront create-invalidation --distribution-id {site.distribution_id} "
                                   f"--paths {' '.join(PATHS)}")
            st.detail = self.s.plan[0]
        if req.dry_run:
            for name in (APPROVAL, SYNC if sync else VERSIONS, INVALIDATE, WAIT, VERIFY, MONITOR):
                tl.skip(name, "dry run")
            self.s.message = "dry run: nothing was changed"
            return

        await self.begin([lock.bucket(site.bucket)])
        await self.approval(context=f"frontend {req.site}: {self.s.plan[0]} in s3://{site.bucket} "
                                    f"({'sync from ' + str(req.to_release) if sync else self.s.to_version})")
        self.set_phase(Phase.rolling_back)
        async with tl.step(SYNC if sync else VERSIONS) as st:
            applied: Applied = await call(S3Activities.apply_release_sync if sync else S3Activities.apply_object_versions,
                                          job, options=LONG)
            self.s.extra["applied"] = applied.model_dump()
            st.detail = (f"{applied.copied} copied, {applied.deleted} deleted"
                         + (f" (resumed after {applied.resumed_after})" if applied.resumed_after else ""))

        if not site.distribution_id:
            tl.skip(INVALIDATE, "no CloudFront distribution in the catalog")
            tl.skip(WAIT, "no CloudFront distribution in the catalog")
        else:
            async with tl.step(INVALIDATE) as st:
                info = workflow.info()
                inv_id: str = await call(CloudFrontActivities.create_invalidation, InvalidationRequest(
                    distribution_id=site.distribution_id, paths=PATHS,
                    caller_reference=f"rollback-{info.workflow_id}-{info.run_id}"))
                self.s.extra["invalidation_id"] = inv_id
                st.detail = f"invalidation {inv_id} on {site.distribution_id}"
            async with tl.step(WAIT) as st:
                await self._wait_invalidation(InvalidationRef(distribution_id=site.distribution_id,
                                                              invalidation_id=inv_id))
                st.detail = f"invalidation {inv_id} completed"

        self.set_phase(Phase.validating)
        async with tl.step(VERIFY) as st:
            results = await self._verify(site)
            self.s.checks = results
            failed = blocking(results) if workflow.patched(PATCH) else [r for r in results if r.ok is False]
            if failed:
                raise StepFailed("verification failed: " + "; ".join(f"{r.name}: {r.detail}" for r in failed))
            st.detail = f"{len(results)} check(s) passed"

        async with tl.step(MONITOR) as st:
            st.detail = await self.monitor(req.monitor_minutes or policy.monitor_minutes,
                                           policy.monitor_interval_minutes, lambda: self._checks(site))
        self.s.message = f"site {req.site} restored ({self.s.to_version})"

    def left_behind(self) -> tuple[str, str]:
        site = self.request.site
        applied = self.s.extra.get("applied")
        state = (f"{applied['copied']} object(s) copied and {applied['deleted']} deleted in the live bucket"
                 if applied else "the copy stopped partway: some objects are restored, others not")
        before = self.s.started_at
        undo = self.starter(site, "--set strategy=object_versions", f"--set restore_to={before:%Y-%m-%dT%H:%M:%SZ}",
                            "--set exact=true") if before else "an object_versions rollback to before this one"
        return state, (f"the bucket is versioned: every object goes back to how it was before this rollback with "
                       f"{undo}; or fix the cause and start this rollback again (copies already made are skipped)")

    async def _wait_invalidation(self, ref: InvalidationRef) -> None:
        policy = self.catalog.policy  # type: ignore[union-attr]
        deadline = workflow.now() + timedelta(minutes=policy.invalidation_timeout_minutes)
        while not await call(CloudFrontActivities.invalidation_done, ref):
            if workflow.now() >= deadline:
                raise StepFailed(f"invalidation {ref.invalidation_id} not complete after "
                                 f"{policy.invalidation_timeout_minutes:g} min")
            await workflow.sleep(policy.invalidation_poll_seconds)

    async def _verify(self, site: Site) -> list[CheckResult]:
        """The site must serve exactly the index.html the bucket now holds."""
        results = []
        if site.url:
            expected: str = await call(S3Activities.read_object, ObjectRef(bucket=site.bucket, key=site.index_key))
            results += await http_checks([HttpProbe(name=f"site serves restored {site.index_key}", url=site.url,
                                                    contains=expected, kind="version")])
        return results + await self._checks(site)

    async def _checks(self, site: Site) -> list[CheckResult]:
        policy = self.catalog.policy  # type: ignore[union-attr]
        probes = await http_checks(endpoint_probes(site.endpoints, site.smoke_checks, None))
        if not workflow.patched(PATCH):
            return probes + await metric_checks(site.metrics, site.alarms, None, policy)
        if not hasattr(self, "verdicts"):  # a site's metrics are not per version; its release's start is not known
            self.verdicts = Verdicts(self.catalog, baseline_ref(None, None, "the release"), self.s)  # type: ignore[arg-type]
        return probes + await self.verdicts.metric_checks(site.metrics, site.alarms, None)
