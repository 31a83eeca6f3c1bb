"""Feature flags behind one small interface, ``FlagStore``; AWS AppConfig is the store today.

The workflow (workflows/flags.py) speaks only ``FlagStore`` terms: read the flag as deployed,
write a new revision with one change, deploy it, follow the rollout, read what clients are
served. Another provider (LaunchDarkly, Unleash, a database table) is a class implementing
``FlagStore``, an entry in ``PROVIDERS`` and its model in ``common.catalog.FlagStoreConfig``;
no workflow changes.

AppConfig (``AppConfigFlagStore``): the flags are one ``AWS.AppConfig.FeatureFlags`` hosted
configuration document ``{"version": "1", "flags": {key: definition}, "values": {key: {"enabled":
bool, attribute: value}}}``. A city's rollout percentage is a number attribute of the flag
named after the city (``"los-angeles": 50``). A change is written as a new hosted version whose
text is the deployed version's text with only the changed values replaced, byte for byte
(``set_in_json``), then deployed with the store's strategy (``kill_switch_strategy`` for kill
switches).
"""

from __future__ import annotations

from datetime import datetime

import copy
import json
import re
from typing import Any, Callable, Literal, Protocol

from pydantic import BaseModel, Field
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.appconfig import (FEATURE_FLAGS, AppConfigActivities, AppConfigRef, DeploymentRef, Resolved,
                                  StartRequest, VersionRef, digest)
from activities.aws import AwsClients
from common.catalog import FlagStoreConfig

# --- the interface ------------------------------------------------------------------------


class FlagRef(BaseModel):
    store: FlagStoreConfig
    key: str = Field(description="the flag's key in the store")
    cities: list[str] = Field(default_factory=list, description="the catalog's cities of this flag")


class FlagValue(BaseModel):
    key: str
    defined: bool = Field(description="the store defines this flag")
    enabled: bool | None = None
    cities: dict[str, float | None] = Field(default_factory=dict, description="rollout % per city (None: unset)")
    missing_cities: list[str] = Field(default_factory=list, description="catalog cities the flag does not define")


class FlagSnapshot(BaseModel):
    """A flag as deployed, and where the store stands."""

    value: FlagValue
    revision: str = Field(description="the deployed revision (AppConfig: hosted configuration version)")
    latest_revision: str | None = Field(None, description="the store's newest revision, deployed or not")
    rollout_seq: int = Field(0, description="the store's latest rollout number, so a new rollout can insist on it")
    busy: str | None = Field(None, description="a rollout in progress that blocks a new one")
    flags: list[str] = Field(default_factory=list, description="every flag key the store holds")
    sha256: str = ""
    deployed_at: datetime | None = Field(None, description="when the deployment serving this revision began")


class FlagChange(BaseModel):
    enabled: bool | None = None
    percentages: dict[str, int] = Field(default_factory=dict)


class FlagWrite(BaseModel):
    ref: FlagRef
    base_revision: str
    latest_revision: str | None = None
    change: FlagChange
    token: str = Field(description="marks the new revision, so a retry finds the one it wrote")
    description: str = ""


class Written(BaseModel):
    revision: str
    created: bool = Field(description="False: an earlier attempt had written it")
    changed: list[str] = Field(default_factory=list, description='e.g. "values.f.enabled: true -> false"')
    sha256_before: str = ""
    sha256_after: str = ""


class FlagDeploy(BaseModel):
    ref: FlagRef
    revision: str
    kill_switch: bool = False
    token: str
    description: str = ""
    rollout_seq: int | None = None


class Rollout(BaseModel):
    id: str
    state: Literal["in_progress", "delivered", "complete", "failed"]
    percent: float = 0.0
    detail: str = ""


class RolloutRef(BaseModel):
    ref: FlagRef
    id: str


class FlagStore(Protocol):
    def read(self, ref: FlagRef) -> FlagSnapshot: ...

    def write(self, req: FlagWrite) -> Written: ...

    def deploy(self, req: FlagDeploy) -> Rollout: ...

    def rollout(self, req: RolloutRef) -> Rollout: ...

    def read_served(self, ref: FlagRef) -> FlagValue: ...


# --- editing a JSON text in place ---------------------------------------------------------

_WS = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()


def _members(raw: str, at: int) -> tuple[list[tuple[str, int, int]], int, int]:
    """The members of the object starting at ``raw[at] == "{"``: (key, value start, value end),
    plus the position of its closing brace and the end of the last member (or of the brace)."""
    if raw[at] != "{":
        raise ValueError(f"not an object at {at}")
    members: list[tuple[str, int, int]] = []
    i = _WS.match(raw, at + 1).end()  # type: ignore[union-attr]
    last = at + 1
    if raw[i] == "}":
        return members, i, last
    while True:
        key, i = json.decoder.scanstring(raw, i + 1)  # type: ignore[attr-defined]
        i = _WS.match(raw, i).end()  # type: ignore[union-attr]
        if raw[i] != ":":
            raise ValueError(f"expected ':' at {i}")
        start = _WS.match(raw, i + 1).end()  # type: ignore[union-attr]
        _, end = _DECODER.raw_decode(raw, start)
        members.append((key, start, end))
        last = end
        i = _WS.match(raw, end).end()  # type: ignore[union-attr]
        if raw[i] == "}":
            return members, i, last
        if raw[i] != ",":
            raise ValueError(f"expected ',' or '}}' at {i}")
        i = _WS.match(raw, i + 1).end()  # type: ignore[union-attr]


def set_in_json(raw: str, path: list[str], value: Any) -> str:
    """``raw`` with the value at ``path`` (object keys) set to ``value``; every other character
    stays as it was. A missing key is added at the end of its object."""
    at = _WS.match(raw).end()  # type: ignore[union-attr]
    for depth, key in enumerate(path):
        members, close, last = _members(raw, at)
        found = [m for m in members if m[0] == key]
        if not found:  # add "key": value (nested for the rest of the path) to this object
            rest: Any = value
            for k in reversed(path[depth + 1:]):
                rest = {k: rest}
            member = f"{json.dumps(key)}: {json.dumps(rest, ensure_ascii=False)}"
            insert = f", {member}" if members else member
            return raw[:last] + insert + raw[last:]
        _, start, end = found[-1]  # JSON parsers keep the last of duplicate keys
        if depth == len(path) - 1:
            return raw[:start] + json.dumps(value, ensure_ascii=False) + raw[end:]
        if raw[start] != "{":
            raise ValueError(f"{'.'.join(path[:depth + 1])} is not an object")
        at = start
    return raw


Edit = tuple[list[str], Any, Any]  # (path, old value, new value)


def apply_change(doc: dict[str, Any], key: str, change: FlagChange) -> tuple[dict[str, Any], list[Edit]]:
    """The document with ``change`` made to flag ``key``, and each (path, old, new) it changed."""
    new = copy.deepcopy(doc)
    values = new.setdefault("values", {}).setdefault(key, {})
    edits: list[Edit] = []
    wanted: dict[str, Any] = {}
    if change.enabled is not None:
        wanted["enabled"] = change.enabled
    wanted.update(change.percentages)
    for attr, v in wanted.items():
        old = values.get(attr)
        if old != v or isinstance(old, bool) != isinstance(v, bool):
            values[attr] = v
            edits.append((["values", key, attr], old, v))
    return (new if edits else copy.deepcopy(doc)), edits


# --- AppConfig ----------------------------------------------------------------------------


class AppConfigFlagStore:
    """Flags in an AppConfig feature-flag profile; see the module docstring."""

    def __init__(self, appconfig: AppConfigActivities) -> None:
        self._ac = appconfig

    def _resolved(self, ref: FlagRef) -> Resolved:
        s = ref.store
        r = self._ac.resolve_cached(AppConfigRef(application=s.application, environment=s.environment,
                                                 profile=s.profile))
        if r.profile_type != FEATURE_FLAGS:
            raise ApplicationError(f"AppConfig profile {r.where} is of type {r.profile_type or 'freeform'}, not "
                                   f"{FEATURE_FLAGS}; fix the flag store's profile in the catalog",
                                   type="InvalidRequest", non_retryable=True)
        return r

    def _document(self, r: Resolved, version: int) -> tuple[str, dict[str, Any], str]:
        content, meta = self._ac.content(VersionRef(resolved=r, version=version))
        try:
            raw = content.decode("utf-8")
            doc = json.loads(raw)
        except ValueError:
            raise ApplicationError(f"hosted version {version} of {r.where} is not a JSON feature-flag document",
                                   type="InvalidRequest", non_retryable=True) from None
        if not isinstance(doc, dict):
            raise ApplicationError(f"hosted version {version} of {r.where} is not a JSON object",
                                   type="InvalidRequest", non_retryable=True)
        return raw, doc, meta.content_type

    @staticmethod
    def _value(doc: dict[str, Any], ref: FlagRef) -> FlagValue:
        definition = (doc.get("flags") or {}).get(ref.key)
        values = (doc.get("values") or {}).get(ref.key) or {}
        attributes = (definition or {}).get("attributes") or {}
        return FlagValue(key=ref.key, defined=definition is not None,
                         enabled=bool(values.get("enabled", False)) if definition is not None else None,
                         cities={c: values.get(c) for c in ref.cities if c in attributes},
                         missing_cities=[c for c in ref.cities if c not in attributes])

    def read(self, ref: FlagRef) -> FlagSnapshot:
        r = self._resolved(ref)
        history = self._ac.deployments(r)
        current = history.current
        if current is None:
            raise ApplicationError(f"nothing is deployed from {r.profile} to {r.environment} (application "
                                   f"{r.application}); there is no flag state to roll back",
                                   type="NotFound", non_retryable=True)
        raw, doc, _ = self._document(r, int(current.version))
        busy = history.in_progress
        latest = self._ac.hosted_versions(r)
        return FlagSnapshot(
            value=self._value(doc, ref), revision=current.version,
            latest_revision=str(latest[0]) if latest else None, rollout_seq=history.latest_number,
            busy=(f"AppConfig deployment {busy.number} (version {busy.version}) is {busy.state} in {r.environment}; "
                  f"AppConfig deploys one at a time: wait for it or stop it (aws appconfig stop-deployment "
                  f"--application-id {r.application_id} --environment-id {r.environment_id} "
                  f"--deployment-number {busy.number})") if busy else None,
            flags=sorted(doc.get("flags") or {}), sha256=digest(raw.encode()), deployed_at=current.started_at)

    def write(self, req: FlagWrite) -> Written:
        """A new hosted version: the base version's text with only the change. Idempotent (by label)."""
        r = self._resolved(req.ref)
        raw, doc, content_type = self._document(r, int(req.base_revision))
        expected, edits = apply_change(doc, req.ref.key, req.change)
        changed = [f"{'.'.join(p)}: {json.dumps(old)} -> {json.dumps(new)}" for p, old, new in edits]
        before = digest(raw.encode())
        if not edits:
            return Written(revision=req.base_revision, created=False, changed=[], sha256_before=before,
                           sha256_after=before)
        text = raw
        for path, _, new in edits:
            text = set_in_json(text, path, new)
        if json.loads(text) != expected:  # the in-place edit must mean exactly the change
            raise ApplicationError(f"editing {r.where} in place did not give the expected document; nothing written",
                                   type="InvalidRequest", non_retryable=True)
        version = self._ac.create_version(
            r, text.encode("utf-8"), content_type or "application/json", req.token, req.description,
            int(req.latest_revision) if req.latest_revision is not None else None)
        activity.logger.info("version %s of %s: %s", version, r.where, "; ".join(changed))
        return Written(revision=str(version), created=True, changed=changed, sha256_before=before,
                       sha256_after=digest(text.encode()))

    def deploy(self, req: FlagDeploy) -> Rollout:
        r = self._resolved(req.ref)
        s = req.ref.store
        d = self._ac.start_deployment(StartRequest(
            resolved=r, version=req.revision, strategy=s.kill_switch_strategy if req.kill_switch else s.strategy,
            description=req.description, token=req.token, latest_number=req.rollout_seq))
        return self._rollout(r, d.number)

    def _rollout(self, r: Resolved, number: int) -> Rollout:
        d = self._ac.deployment(DeploymentRef(resolved=r, number=number))
        state: Literal["in_progress", "delivered", "complete", "failed"] = (
            "failed" if d.failed else "complete" if d.state == "COMPLETE" else
            "delivered" if d.delivered else "in_progress")
        return Rollout(id=str(number), state=state, percent=d.percent,
                       detail=f"AppConfig deployment {number} of version {d.version} to {r.environment}: {d.state}, "
                              f"{d.percent:g}%")

    def rollout(self, req: RolloutRef) -> Rollout:
        return self._rollout(self._resolved(req.ref), int(req.id))

    def read_served(self, ref: FlagRef) -> FlagValue:
        served = self._ac.served(self._resolved(ref))
        flags = served.flags or {}
        if ref.key not in flags:
            return FlagValue(key=ref.key, defined=False)
        got = flags[ref.key] or {}
        return FlagValue(key=ref.key, defined=True, enabled=bool(got.get("enabled", False)),
                         cities={c: got.get(c) for c in ref.cities})


# provider (the catalog's ``provider:``) -> how the worker makes its store
PROVIDERS: dict[str, Callable[[AwsClients], FlagStore]] = {
    "appconfig": lambda aws: AppConfigFlagStore(AppConfigActivities(aws)),
}


# --- the activities -----------------------------------------------------------------------


class FlagActivities:
    """Each activity hands its request to the store its catalog entry names (``provider``)."""

    def __init__(self, aws: AwsClients) -> None:
        self._stores = {name: make(aws) for name, make in PROVIDERS.items()}

    def _store(self, ref: FlagRef) -> FlagStore:
        try:
            return self._stores[ref.store.provider]
        except KeyError:
            raise ApplicationError(f"no flag store for provider {ref.store.provider!r} (known: "
                                   f"{', '.join(sorted(self._stores))})", type="CatalogError",
                                   non_retryable=True) from None

    @activity.defn
    def read_flag(self, ref: FlagRef) -> FlagSnapshot:
        return self._store(ref).read(ref)

    @activity.defn
    def write_flag(self, req: FlagWrite) -> Written:
        return self._store(req.ref).write(req)

    @activity.defn
    def deploy_flags(self, req: FlagDeploy) -> Rollout:
        return self._store(req.ref).deploy(req)

    @activity.defn
    def flag_rollout(self, req: RolloutRef) -> Rollout:
        return self._store(req.ref).rollout(req)

    @activity.defn
    def read_served_flag(self, ref: FlagRef) -> FlagValue:
        return self._store(ref).read_served(ref)
