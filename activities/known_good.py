"""Last known good, remembered: what rollbacks found bad and what they restored and verified,
kept as AWS tags, so it outlives the worker and every other tool (a deploy pipeline, the
console, ``aws ... list-tags``) can see it.

- ECS: a tag on the task-definition revision itself: ``rollback-verdict``;
- Lambda, Secrets Manager, AppConfig (their versions take no tags): tags on the function, the
  secret, the configuration profile, one per version: ``rollback-verdict-<version>``.

A tag's value is ``<verdict> <UTC time> <workflow id>[ auto]``: ``bad`` (a rollback left this
version), ``restored`` (a rollback returned to it), ``good`` (restored and verified by monitoring
or verification), ``auto`` when automation did it. ``choose`` (pure, used by workflows) picks a
default target from them. Reading never blocks a rollback: unreadable tags read as "no verdict",
and the status says so.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any, Literal

from botocore.exceptions import BotoCoreError, ClientError
from pydantic import BaseModel
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.aws import ACCESS_DENIED, AwsClients, aws_call
from activities.batch import Failed, each

TAG = "rollback-verdict"
KEEP = 30  # verdict tags kept per function/secret/profile (AWS allows 50 tags on a resource)
Kind = Literal["ecs", "lambda", "secret", "appconfig"]


class Verdict(BaseModel):
    verdict: Literal["bad", "restored", "good"]
    at: datetime
    by: str  # the workflow that recorded it
    automatic: bool = False


class Place(BaseModel):
    """Where a version's verdict is kept."""

    kind: Kind
    name: str  # ecs: the task-definition ARN; lambda: function name; secret: secret id; appconfig: profile ARN
    version: str = ""  # lambda / secret / appconfig: the version the tag is about
    arn: str = ""  # lambda: the function's ARN, when the caller read it already (else it is looked up)


class Record(BaseModel):
    place: Place
    verdict: Verdict


def tag_key(place: Place) -> str:
    return TAG if place.kind == "ecs" else f"{TAG}-{place.version}"


def encode(v: Verdict) -> str:
    by = re.sub(r"[^\w.:/=+@-]", "_", v.by)[:180]  # AWS tag values: letters, digits, _ . : / = + - @ and space
    return f"{v.verdict} {v.at.astimezone(timezone.utc):%Y-%m-%dT%H:%M:%SZ} {by}" + (" auto" if v.automatic else "")


def decode(value: str | None) -> Verdict | None:
    parts = (value or "").split()
    if len(parts) < 3 or parts[0] not in ("bad", "restored", "good"):
        return None
    try:
        at = datetime.strptime(parts[1], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    except ValueError:
        return None
    return Verdict(verdict=parts[0], at=at, by=parts[2], automatic="auto" in parts[3:])  # type: ignore[arg-type]


def per_version(tags: dict[str, str]) -> dict[str, Verdict]:
    """Verdicts kept on one resource for several versions (``rollback-verdict-<version>`` tags)."""
    found = {k[len(TAG) + 1:]: decode(v) for k, v in tags.items() if k.startswith(TAG + "-")}
    return {version: v for version, v in found.items() if v is not None}


def read_tags(what: str, read: Any) -> dict[str, str]:
    """Tags, or none: a verdict store that cannot be read (e.g. no tag permission) never blocks a
    rollback; the worker logs it and the versions read as unjudged."""
    try:
        return read()
    except (ClientError, BotoCoreError) as e:
        code = e.response.get("Error", {}).get("Code", "") if isinstance(e, ClientError) else type(e).__name__
        activity.logger.warning("cannot read the rollback verdicts of %s: %s", what, code)
        return {}


def ecs_verdict(ecs: Any, arn: str) -> Verdict | None:
    tags = read_tags(arn, lambda: {t["key"]: t["value"] for t in
                                   ecs.list_tags_for_resource(resourceArn=arn).get("tags", [])})
    return decode(tags.get(TAG))


def described_with_verdict(ecs: Any, arn: str) -> tuple[dict, Verdict | None]:
    """A task definition and its verdict in one call (``include=TAGS``), as ``ecs_verdict`` reads it
    with two. Without permission to see the tags, the task definition alone and the version unjudged."""
    with aws_call(f"ecs describe-task-definition {arn}"):
        try:
            resp = ecs.describe_task_definition(taskDefinition=arn, include=["TAGS"])
        except ClientError as e:
            code = e.response.get("Error", {}).get("Code", "")
            if code not in ACCESS_DENIED and e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") != 403:
                raise
            activity.logger.warning("cannot read the rollback verdicts of %s: %s", arn, code)
            return ecs.describe_task_definition(taskDefinition=arn)["taskDefinition"], None
    return resp["taskDefinition"], decode({t["key"]: t["value"] for t in resp.get("tags") or []}.get(TAG))


def appconfig_profile_arn(aws: AwsClients, application_id: str, profile_id: str) -> str:
    """AppConfig returns no ARN for a profile; tags need one."""
    with aws_call("sts get-caller-identity"):
        account = aws("sts").get_caller_identity()["Account"]
    region = aws("appconfig").meta.region_name
    return f"arn:aws:appconfig:{region}:{account}:application/{application_id}/configurationprofile/{profile_id}"


# --- choosing a default target (pure: workflow code) ----------------------------------------------

class Choice(BaseModel):
    version: str
    why: str


def describe(version: str, v: Verdict | None) -> str:
    if v is None:
        return f"{version}: no rollback has judged it"
    how = {"bad": "rolled back from", "restored": "restored (not verified yet)",
           "good": "restored and verified"}[v.verdict]
    return f"{version}: {how} on {v.at:%Y-%m-%d %H:%M} UTC by {v.by}" + (" (automation)" if v.automatic else "")


def choose(earlier: list[str], verdicts: dict[str, Verdict], label: Any = str) -> Choice | None:
    """The newest of ``earlier`` (newest first) that no rollback left as bad; None if all were.

    A version a rollback restored and verified is "known good"; one that served and was replaced
    by a normal deploy was never judged, and is as good as anything older: so the target is the
    newest earlier version not known to be bad (a verdict months old never sends a service back
    months). ``label`` names a version for people (e.g. "v1.2.2 (revision 42)")."""
    skipped = []
    for version in earlier:
        v = verdicts.get(version)
        if v is not None and v.verdict == "bad":
            skipped.append(f"{describe(label(version), v)}: skipped")
            continue
        return Choice(version=version, why="; ".join([describe(label(version), v), *skipped]))
    return None


# --- recording ---------------------------------------------------------------------------------

class KnownGoodActivities:
    def __init__(self, aws: AwsClients) -> None:
        self._aws = aws

    @activity.defn
    def record_verdicts(self, records: list[Record]) -> int:
        """Tag each version (idempotent: the same verdict again changes nothing); one activity for a
        whole fleet, its resources tagged at the same time (each resource's verdicts in order)."""
        per_resource: dict[tuple[str, str], list[Record]] = {}
        for rec in records:
            per_resource.setdefault((rec.place.kind, rec.place.name), []).append(rec)
        results = each(list(per_resource.values()), self._record, label=lambda recs: recs[0].place.name)
        failed = [r for r in results if isinstance(r, Failed)]
        if failed:
            raise ApplicationError("; ".join(f.error for f in failed[:5]), type=failed[0].type or "NotFound",
                                   non_retryable=True)
        return len(records)

    def _record(self, records: list[Record]) -> str:
        """One resource's verdicts (in order: a later one for the same key wins), its tags read and
        written once."""
        p = records[0].place
        adding = {tag_key(r.place): encode(r.verdict) for r in records}
        if p.kind == "ecs":
            with aws_call(f"ecs tag-resource {p.name}"):
                self._aws("ecs").tag_resource(resourceArn=p.name, tags=[{"key": k, "value": v}
                                                                         for k, v in adding.items()])
        elif p.kind == "lambda":
            lam = self._aws("lambda")
            with aws_call(f"lambda tag-resource {p.name}"):
                arn = p.arn or lam.get_function(FunctionName=p.name)["Configuration"]["FunctionArn"].split(":$LATEST")[0]
                self._prune(lam.list_tags(Resource=arn).get("Tags") or {}, adding,
                            lambda keys: lam.untag_resource(Resource=arn, TagKeys=keys))
                lam.tag_resource(Resource=arn, Tags=adding)
        elif p.kind == "secret":
            sm = self._aws("secretsmanager")
            with aws_call(f"secretsmanager tag-resource {p.name}"):
                tags = {t["Key"]: t["Value"] for t in sm.describe_secret(SecretId=p.name).get("Tags") or []}
                self._prune(tags, adding, lambda keys: sm.untag_resource(SecretId=p.name, TagKeys=keys))
                sm.tag_resource(SecretId=p.name, Tags=[{"Key": k, "Value": v} for k, v in adding.items()])
        else:
            ac = self._aws("appconfig")
            with aws_call(f"appconfig tag-resource {p.name}"):
                self._prune(ac.list_tags_for_resource(ResourceArn=p.name).get("Tags") or {}, adding,
                            lambda keys: ac.untag_resource(ResourceArn=p.name, TagKeys=keys))
                ac.tag_resource(ResourceArn=p.name, Tags=adding)
        return ", ".join(f"{k}={v}" for k, v in adding.items()) + f" on {p.name}"

    @staticmethod
    def _prune(tags: dict[str, str], adding: dict[str, str], untag: Any) -> None:
        """Keep at most KEEP verdict tags on one resource: the oldest go first."""
        verdicts = sorted(((v.at, k) for k, v in ((k, decode(val)) for k, val in tags.items()
                                                 if k.startswith(TAG + "-") and k not in adding) if v is not None))
        excess = len(verdicts) + len(adding) - KEEP
        if excess > 0:
            untag([k for _, k in verdicts[:excess]])

    @activity.defn
    def ecs_verdict_of(self, task_definition_arn: str) -> Verdict | None:
        """One task-definition revision's verdict (None: none recorded, or unreadable)."""
        return ecs_verdict(self._aws("ecs"), task_definition_arn)
