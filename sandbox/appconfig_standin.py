"""STAND-IN for the parts of the AppConfig API moto lacks: environments, deployment strategies,
deployments, the listing of applications and of hosted configuration versions, and the
AppConfig Data plane (``StartConfigurationSession`` / ``GetLatestConfiguration``).

Not product code: a WSGI middleware in front of moto's server app, used by the sandbox
(``sandbox.moto_server.start_moto``) and the tests (``tests/support/moto_faults.py``). The
product only calls the documented AppConfig API through boto3, so it works against real AWS
unchanged. Applications, configuration profiles and hosted configuration versions stay moto's
(this layer reads them from moto's in-process backend); every other request goes to moto as is.

What it does, as the AppConfig API reference describes (ids are 7 characters of [a-z0-9]):

- ``CreateEnvironment`` / ``GetEnvironment`` / ``ListEnvironments``; an environment's ``State``
  is ``DEPLOYING`` while a deployment is in progress there, ``ROLLED_BACK`` after a stopped one,
  else ``READY_FOR_DEPLOYMENT``.
- ``CreateDeploymentStrategy`` / ``GetDeploymentStrategy`` / ``ListDeploymentStrategies``, with
  the four predefined ``AppConfig.*`` strategies (``AppConfig.AllAtOnce`` ...).
- ``StartDeployment``: ``DeploymentNumber`` counts up per environment from 1; one deployment
  at a time per environment (``ConflictException`` while one is ``DEPLOYING`` or ``BAKING``);
  ``LatestDeploymentNumber``, when given, must be the environment's latest number
  (``ConflictException`` otherwise); the configuration version must exist.
  ``GetDeployment`` / ``ListDeployments`` (newest first) / ``StopDeployment`` (-> ``ROLLED_BACK``).
- Time is compressed: a deployment moves one stage (``DEPLOYING`` -> ``BAKING`` ->
  ``COMPLETE``; a strategy without bake time skips ``BAKING``) every ``polls_per_stage``
  ``GetDeployment`` calls or every ``seconds_per_stage`` seconds, whichever comes first,
  whatever the strategy's minutes say. ``PercentageComplete`` is 0 while ``DEPLOYING``, then
  100. ``roll_back_next()`` makes the next deployment end ``ROLLED_BACK`` (as when an alarm
  fires during a real one), for tests.
- ``ListApplications`` and ``ListHostedConfigurationVersions`` (newest first, ``version_label``
  filter), which moto answers with a 500.
- ``StartConfigurationSession`` (ids or names) and ``GetLatestConfiguration``: the content of the
  version deployed to the environment (the newest ``BAKING`` or ``COMPLETE`` deployment of the
  profile); an empty body when the session already received that version; every token is
  good for one call and the answer carries the next one. For an ``AWS.AppConfig.FeatureFlags``
  profile the content is AppConfig's retrieval-time form: ``{"flag": {"enabled": true,
  "attribute": value, ...}}``, a disabled flag as ``{"enabled": false}`` alone.
- ``POST /moto-api/reset`` forgets all of the above too; ``state``/``load_state`` let the sandbox keep it
  across restarts (sandbox/state.py).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import string
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Iterable
from urllib.parse import parse_qs

FEATURE_FLAGS = "AWS.AppConfig.FeatureFlags"
IN_PROGRESS = ("DEPLOYING", "BAKING")
SERVED = ("BAKING", "COMPLETE")

PREDEFINED_STRATEGIES: list[dict[str, Any]] = [
    {"Id": "AppConfig.AllAtOnce", "Name": "AppConfig.AllAtOnce", "Description": "Quick",
     "DeploymentDurationInMinutes": 0, "GrowthType": "LINEAR", "GrowthFactor": 100.0,
     "FinalBakeTimeInMinutes": 10, "ReplicateTo": "NONE"},
    {"Id": "AppConfig.Linear50PercentEvery30Seconds", "Name": "AppConfig.Linear50PercentEvery30Seconds",
     "Description": "Test/Demo", "DeploymentDurationInMinutes": 1, "GrowthType": "LINEAR",
     "GrowthFactor": 50.0, "FinalBakeTimeInMinutes": 1, "ReplicateTo": "NONE"},
    {"Id": "AppConfig.Canary10Percent20Minutes", "Name": "AppConfig.Canary10Percent20Minutes",
     "Description": "AWS Recommended", "DeploymentDurationInMinutes": 20, "GrowthType": "EXPONENTIAL",
     "GrowthFactor": 10.0, "FinalBakeTimeInMinutes": 10, "ReplicateTo": "NONE"},
    {"Id": "AppConfig.Linear20PercentEvery6Minutes", "Name": "AppConfig.Linear20PercentEvery6Minutes",
     "Description": "AWS Recommended", "DeploymentDurationInMinutes": 30, "GrowthType": "LINEAR",
     "GrowthFactor": 20.0, "FinalBakeTimeInMinutes": 30, "ReplicateTo": "NONE"},
]

_SCOPE = re.compile(r"Credential=([^/,\s]+)/\d{8}/([^/]+)/([^/]+)/aws4_request")
_ID = string.ascii_lowercase + string.digits


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _not_found(what: str) -> ApiError:
    return ApiError(404, "ResourceNotFoundException", what)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _new_id(taken: Iterable[str] = ()) -> str:
    taken = set(taken)
    while True:
        candidate = "".join(secrets.choice(_ID) for _ in range(7))
        if candidate not in taken:
            return candidate


def retrieval_view(content: bytes) -> bytes:
    """A feature-flag document as GetLatestConfiguration returns it (AppConfig's retrieval-time form)."""
    doc = json.loads(content or b"{}")
    values = doc.get("values") or {}
    out: dict[str, Any] = {}
    for key in doc.get("flags") or {}:
        value = values.get(key) or {}
        enabled = bool(value.get("enabled", False))
        out[key] = {"enabled": enabled}
        if enabled:
            out[key].update({k: v for k, v in value.items() if k != "enabled" and not k.startswith("_")})
    return json.dumps(out).encode()


@dataclass
class _Deployment:
    number: int
    app_id: str
    env_id: str
    profile_id: str
    profile_name: str
    location_uri: str
    version: str
    version_label: str | None
    strategy: dict[str, Any]
    description: str
    started_at: str = field(default_factory=_now)
    started: float = field(default_factory=time.time)  # wall clock: it outlives the process (sandbox/state.py)
    state: str = "DEPLOYING"
    percent: float = 0.0
    completed_at: str | None = None
    polls: int = 0
    fails: bool = False  # roll_back_next(): ends ROLLED_BACK instead of going on
    events: list[dict[str, Any]] = field(default_factory=list)

    def event(self, kind: str, description: str, by: str = "APPCONFIG") -> None:
        self.events.insert(0, {"EventType": kind, "TriggeredBy": by, "Description": description,
                               "OccurredAt": _now()})

    def summary(self) -> dict[str, Any]:
        s = self.strategy
        out = {"DeploymentNumber": self.number, "ConfigurationProfileId": self.profile_id,
               "ConfigurationName": self.profile_name,
               "ConfigurationVersion": self.version, "DeploymentDurationInMinutes": s["DeploymentDurationInMinutes"],
               "GrowthType": s["GrowthType"], "GrowthFactor": s["GrowthFactor"],
               "FinalBakeTimeInMinutes": s["FinalBakeTimeInMinutes"], "State": self.state,
               "PercentageComplete": self.percent, "StartedAt": self.started_at, "Type": "USER"}
        if self.completed_at:
            out["CompletedAt"] = self.completed_at
        if self.version_label:
            out["VersionLabel"] = self.version_label
        return out

    def full(self) -> dict[str, Any]:
        out = self.summary()
        out.pop("Type")
        out.update({"ApplicationId": self.app_id, "EnvironmentId": self.env_id,
                    "DeploymentStrategyId": self.strategy["Id"],
                    "ConfigurationLocationUri": self.location_uri, "Description": self.description,
                    "EventLog": list(self.events)})
        return out


@dataclass
class _Region:
    environments: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # app -> env id -> env
    strategies: dict[str, dict[str, Any]] = field(default_factory=dict)
    deployments: dict[tuple[str, str], list[_Deployment]] = field(default_factory=dict)  # (app, env) -> oldest first
    sessions: dict[str, dict[str, Any]] = field(default_factory=dict)  # token -> session


class AppConfigStandIn:
    """WSGI middleware: answers the AppConfig routes moto lacks, passes everything else to ``app``."""

    def __init__(self, app: Callable, polls_per_stage: int = 1, seconds_per_stage: float = 1.0) -> None:
        self.app = app
        self.polls_per_stage = polls_per_stage
        self.seconds_per_stage = seconds_per_stage
        self._regions: dict[tuple[str, str], _Region] = {}
        self._lock = threading.RLock()
        self._fail_next = 0
        self._routes: list[tuple[str, re.Pattern[str], Callable[..., tuple[int, Any, dict[str, str]]]]] = [
            (m, re.compile(p + "$"), h) for m, p, h in [
                ("GET", r"/applications", self.list_applications),
                ("POST", r"/applications/(?P<app>[^/]+)/environments", self.create_environment),
                ("GET", r"/applications/(?P<app>[^/]+)/environments", self.list_environments),
                ("GET", r"/applications/(?P<app>[^/]+)/environments/(?P<env>[^/]+)", self.get_environment),
                ("POST", r"/applications/(?P<app>[^/]+)/environments/(?P<env>[^/]+)/deployments",
                 self.start_deployment),
                ("GET", r"/applications/(?P<app>[^/]+)/environments/(?P<env>[^/]+)/deployments",
                 self.list_deployments),
                ("GET", r"/applications/(?P<app>[^/]+)/environments/(?P<env>[^/]+)/deployments/(?P<num>\d+)",
                 self.get_deployment),
                ("DELETE", r"/applications/(?P<app>[^/]+)/environments/(?P<env>[^/]+)/deployments/(?P<num>\d+)",
                 self.stop_deployment),
                ("GET", r"/applications/(?P<app>[^/]+)/configurationprofiles/(?P<profile>[^/]+)"
                        r"/hostedconfigurationversions", self.list_hosted_versions),
                ("POST", r"/deploymentstrategies", self.create_strategy),
                ("GET", r"/deploymentstrategies", self.list_strategies),
                ("GET", r"/deploymentstrategies/(?P<sid>[^/]+)", self.get_strategy),
                ("POST", r"/configurationsessions", self.start_session),
                ("GET", r"/configuration", self.get_latest_configuration),
            ]]

    # --- controls (tests) ---------------------------------------------------------------

    def reset(self) -> None:
        with self._lock:
            self._regions.clear()
            self._fail_next = 0

    def state(self) -> dict[str, Any]:
        """What the stand-in holds beyond moto, for the sandbox's persistence (sandbox/state.py)."""
        with self._lock:
            return {"regions": self._regions, "fail_next": self._fail_next}

    def load_state(self, state: dict[str, Any]) -> None:
        with self._lock:
            self._regions, self._fail_next = state["regions"], state["fail_next"]

    def roll_back_next(self) -> None:
        """The next deployment started ends ROLLED_BACK instead of completing."""
        with self._lock:
            self._fail_next += 1

    # --- WSGI ---------------------------------------------------------------------------

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        method, path = environ.get("REQUEST_METHOD", ""), environ.get("PATH_INFO", "")
        if path.rstrip("/") == "/moto-api/reset" and method == "POST":
            self.reset()
            return self.app(environ, start_response)
        scope = _SCOPE.search(environ.get("HTTP_AUTHORIZATION", ""))
        if not scope or scope.group(3) != "appconfig":  # both AppConfig and AppConfig Data sign as appconfig
            return self.app(environ, start_response)
        for m, pattern, handler in self._routes:
            match = pattern.match(path.rstrip("/") or "/")
            if m == method and match:
                break
        else:
            return self.app(environ, start_response)
        req = _Request(environ, access_key=scope.group(1), region=scope.group(2))
        try:
            with self._lock:
                status, body, headers = handler(req, **match.groupdict())
        except ApiError as e:
            status, body, headers = e.status, {"Message": e.message}, {"x-amzn-ErrorType": e.code}
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers = {"Content-Type": "application/json", **headers, "Content-Length": str(len(payload)),
                   "x-amzn-RequestId": secrets.token_hex(16)}
        start_response(f"{status} {_REASON.get(status, 'OK')}", list(headers.items()))
        return [payload]

    # --- moto's side: applications, profiles, hosted versions ---------------------------

    @staticmethod
    def _backend(req: "_Request") -> Any:
        from moto.appconfig.models import appconfig_backends

        return appconfig_backends[req.account][req.region]

    def _application(self, req: "_Request", app_id: str) -> Any:
        app = self._backend(req).applications.get(app_id)
        if app is None:
            raise _not_found(f"Application {app_id} not found")
        return app

    def _profile(self, req: "_Request", app_id: str, profile_id: str) -> Any:
        profile = self._application(req, app_id).config_profiles.get(profile_id)
        if profile is None:
            raise _not_found(f"Configuration profile {profile_id} not found in application {app_id}")
        return profile

    def _state(self, req: "_Request") -> _Region:
        return self._regions.setdefault((req.account, req.region), _Region())

    def list_applications(self, req: "_Request") -> tuple[int, Any, dict[str, str]]:
        apps = self._backend(req).applications.values()
        return 200, {"Items": [{"Id": a.id, "Name": a.name, "Description": a.description or ""} for a in apps]}, {}

    def list_hosted_versions(self, req: "_Request", app: str, profile: str) -> tuple[int, Any, dict[str, str]]:
        versions = self._profile(req, app, profile).config_versions
        label = req.query("version_label")
        items = [{"ApplicationId": app, "ConfigurationProfileId": profile, "VersionNumber": v.version,
                  "Description": v.description, "ContentType": v.content_type, "VersionLabel": v.version_label}
                 for v in sorted(versions.values(), key=lambda v: v.version, reverse=True)
                 if label is None or v.version_label == label]
        return 200, {"Items": items}, {}

    # --- environments -------------------------------------------------------------------

    def _environment(self, req: "_Request", app_id: str, env_id: str) -> dict[str, Any]:
        self._application(req, app_id)
        env = self._state(req).environments.get(app_id, {}).get(env_id)
        if env is None:
            raise _not_found(f"Environment {env_id} not found in application {app_id}")
        deployments = self._state(req).deployments.get((app_id, env_id), [])
        for d in deployments:
            self._advance(d, poll=False)
        last = deployments[-1] if deployments else None
        env["State"] = ("DEPLOYING" if last and last.state in IN_PROGRESS else
                        "ROLLED_BACK" if last and last.state == "ROLLED_BACK" else "READY_FOR_DEPLOYMENT")
        return env

    def create_environment(self, req: "_Request", app: str) -> tuple[int, Any, dict[str, str]]:
        self._application(req, app)
        body = req.json()
        if not body.get("Name"):
            raise ApiError(400, "BadRequestException", "Name is required")
        envs = self._state(req).environments.setdefault(app, {})
        env = {"ApplicationId": app, "Id": _new_id(envs), "Name": body["Name"],
               "Description": body.get("Description") or "", "State": "READY_FOR_DEPLOYMENT",
               "Monitors": body.get("Monitors") or []}
        envs[env["Id"]] = env
        return 201, env, {}

    def list_environments(self, req: "_Request", app: str) -> tuple[int, Any, dict[str, str]]:
        self._application(req, app)
        ids = list(self._state(req).environments.get(app, {}))
        return 200, {"Items": [self._environment(req, app, e) for e in ids]}, {}

    def get_environment(self, req: "_Request", app: str, env: str) -> tuple[int, Any, dict[str, str]]:
        return 200, self._environment(req, app, env), {}

    # --- deployment strategies ----------------------------------------------------------

    def _strategies(self, req: "_Request") -> dict[str, dict[str, Any]]:
        return {**{s["Id"]: s for s in PREDEFINED_STRATEGIES}, **self._state(req).strategies}

    def create_strategy(self, req: "_Request") -> tuple[int, Any, dict[str, str]]:
        body = req.json()
        for needed in ("Name", "DeploymentDurationInMinutes", "GrowthFactor"):
            if body.get(needed) is None:
                raise ApiError(400, "BadRequestException", f"{needed} is required")
        strategy = {"Id": _new_id(self._strategies(req)), "Name": body["Name"],
                    "Description": body.get("Description") or "",
                    "DeploymentDurationInMinutes": int(body["DeploymentDurationInMinutes"]),
                    "GrowthType": body.get("GrowthType") or "LINEAR", "GrowthFactor": float(body["GrowthFactor"]),
                    "FinalBakeTimeInMinutes": int(body.get("FinalBakeTimeInMinutes") or 0),
                    "ReplicateTo": body.get("ReplicateTo") or "NONE"}
        self._state(req).strategies[strategy["Id"]] = strategy
        return 201, strategy, {}

    def list_strategies(self, req: "_Request") -> tuple[int, Any, dict[str, str]]:
        return 200, {"Items": list(self._strategies(req).values())}, {}

    def get_strategy(self, req: "_Request", sid: str) -> tuple[int, Any, dict[str, str]]:
        strategy = self._strategies(req).get(sid)
        if strategy is None:
            raise _not_found(f"Deployment strategy {sid} not found")
        return 200, strategy, {}

    # --- deployments --------------------------------------------------------------------

    def _advance(self, d: _Deployment, poll: bool) -> None:
        if d.state not in IN_PROGRESS:
            return
        if poll:
            d.polls += 1
        stage = max(d.polls // max(self.polls_per_stage, 1),
                    int((time.time() - d.started) / self.seconds_per_stage) if self.seconds_per_stage > 0 else 2)
        if stage < 1:
            return
        if d.fails:
            d.state, d.completed_at = "ROLLED_BACK", _now()
            d.event("ROLLBACK_STARTED", "Rollback initiated by a CloudWatch alarm", "CLOUDWATCH_ALARM")
            d.event("ROLLBACK_COMPLETED", "Rollback completed")
            return
        baking = d.strategy["FinalBakeTimeInMinutes"] > 0
        if d.state == "DEPLOYING":
            d.percent = 100.0
            d.event("PERCENTAGE_UPDATED", "Configuration deployed to 100% of clients")
            if baking and stage < 2:
                d.state = "BAKING"
                d.event("BAKE_TIME_STARTED", f"Bake time of {d.strategy['FinalBakeTimeInMinutes']} minutes started")
                return
        if stage >= 2 or not baking:
            d.state, d.completed_at = "COMPLETE", _now()
            d.event("DEPLOYMENT_COMPLETED", "Deployment completed")

    def _deployment(self, req: "_Request", app: str, env: str, num: str) -> _Deployment:
        self._environment(req, app, env)
        for d in self._state(req).deployments.get((app, env), []):
            if d.number == int(num):
                return d
        raise _not_found(f"Deployment {num} not found in environment {env}")

    def start_deployment(self, req: "_Request", app: str, env: str) -> tuple[int, Any, dict[str, str]]:
        environment = self._environment(req, app, env)
        body = req.json()
        for needed in ("DeploymentStrategyId", "ConfigurationProfileId", "ConfigurationVersion"):
            if not body.get(needed):
                raise ApiError(400, "BadRequestException", f"{needed} is required")
        profile = self._profile(req, app, body["ConfigurationProfileId"])
        strategy = self._strategies(req).get(body["DeploymentStrategyId"])
        if strategy is None:
            raise _not_found(f"Deployment strategy {body['DeploymentStrategyId']} not found")
        wanted = str(body["ConfigurationVersion"])
        version = next((v for v in profile.config_versions.values()
                        if str(v.version) == wanted or v.version_label == wanted), None)
        if version is None:
            raise _not_found(f"Configuration version {wanted} not found for configuration profile {profile.id}")
        history = self._state(req).deployments.setdefault((app, env), [])
        busy = next((d for d in history if d.state in IN_PROGRESS), None)
        if busy is not None:
            raise ApiError(409, "ConflictException",
                           f"Deployment number {busy.number} is already in progress ({busy.state}) in environment "
                           f"{environment['Name']}; only one deployment at a time per environment")
        latest = history[-1].number if history else 0
        if body.get("LatestDeploymentNumber") is not None and int(body["LatestDeploymentNumber"]) != latest:
            raise ApiError(409, "ConflictException",
                           f"LatestDeploymentNumber {body['LatestDeploymentNumber']} is not the latest deployment "
                           f"number of environment {environment['Name']} ({latest})")
        d = _Deployment(number=latest + 1, app_id=app, env_id=env, profile_id=profile.id, profile_name=profile.name,
                        location_uri=profile.location_uri, version=str(version.version),
                        version_label=version.version_label if version.version_label not in (None, "None") else None,
                        strategy=strategy, description=body.get("Description") or "")
        if self._fail_next:
            self._fail_next -= 1
            d.fails = True
        d.event("DEPLOYMENT_STARTED", "Deployment started", "USER")
        history.append(d)
        environment["State"] = "DEPLOYING"
        return 201, d.full(), {}

    def get_deployment(self, req: "_Request", app: str, env: str, num: str) -> tuple[int, Any, dict[str, str]]:
        d = self._deployment(req, app, env, num)
        self._advance(d, poll=True)
        return 200, d.full(), {}

    def list_deployments(self, req: "_Request", app: str, env: str) -> tuple[int, Any, dict[str, str]]:
        self._environment(req, app, env)
        history = self._state(req).deployments.get((app, env), [])
        return 200, {"Items": [d.summary() for d in reversed(history)]}, {}

    def stop_deployment(self, req: "_Request", app: str, env: str, num: str) -> tuple[int, Any, dict[str, str]]:
        d = self._deployment(req, app, env, num)
        if d.state not in IN_PROGRESS:
            raise ApiError(400, "BadRequestException", f"Deployment {num} is {d.state}; it cannot be stopped")
        d.state, d.completed_at = "ROLLED_BACK", _now()
        d.event("ROLLBACK_STARTED", "Deployment stopped by the user", "USER")
        d.event("ROLLBACK_COMPLETED", "Rollback completed")
        return 202, d.full(), {}

    # --- AppConfig Data -----------------------------------------------------------------

    def start_session(self, req: "_Request") -> tuple[int, Any, dict[str, str]]:
        body = req.json()
        apps = self._backend(req).applications
        app_key = body.get("ApplicationIdentifier", "")
        app = apps.get(app_key) or next((a for a in apps.values() if a.name == app_key), None)
        if app is None:
            raise _not_found(f"Application {app_key!r} not found")
        env_key = body.get("EnvironmentIdentifier", "")
        envs = self._state(req).environments.get(app.id, {})
        env = envs.get(env_key) or next((e for e in envs.values() if e["Name"] == env_key), None)
        if env is None:
            raise _not_found(f"Environment {env_key!r} not found in application {app.name}")
        prof_key = body.get("ConfigurationProfileIdentifier", "")
        profile = app.config_profiles.get(prof_key) or next(
            (p for p in app.config_profiles.values() if p.name == prof_key), None)
        if profile is None:
            raise _not_found(f"Configuration profile {prof_key!r} not found in application {app.name}")
        token = secrets.token_urlsafe(24)
        self._state(req).sessions[token] = {
            "app": app.id, "env": env["Id"], "profile": profile.id, "served": None,
            "interval": int(body.get("RequiredMinimumPollIntervalInSeconds") or 60)}
        return 201, {"InitialConfigurationToken": token}, {}

    def get_latest_configuration(self, req: "_Request") -> tuple[int, Any, dict[str, str]]:
        token = req.query("configuration_token") or ""
        sessions = self._state(req).sessions
        session = sessions.pop(token, None)
        if session is None:
            raise ApiError(400, "BadRequestException", "Invalid or already used ConfigurationToken")
        history = self._state(req).deployments.get((session["app"], session["env"]), [])
        for d in history:
            self._advance(d, poll=False)
        live = next((d for d in reversed(history) if d.profile_id == session["profile"] and d.state in SERVED), None)
        next_token = secrets.token_urlsafe(24)
        sessions[next_token] = session
        headers = {"Next-Poll-Configuration-Token": next_token,
                   "Next-Poll-Interval-In-Seconds": str(session["interval"])}
        if live is None or session["served"] == live.number:
            return 200, b"", headers
        session["served"] = live.number
        profile = self._profile(req, session["app"], session["profile"])
        version = profile.config_versions[int(live.version)]
        content = version.content if isinstance(version.content, bytes) else str(version.content).encode()
        if profile._type == FEATURE_FLAGS:
            content, content_type = retrieval_view(content), "application/json"
        else:
            content_type = version.content_type or "application/octet-stream"
        headers["Content-Type"] = content_type
        if live.version_label:
            headers["Version-Label"] = live.version_label
        return 200, content, headers


_REASON = {200: "OK", 201: "Created", 202: "Accepted", 204: "No Content", 400: "Bad Request",
           404: "Not Found", 409: "Conflict"}


class _Request:
    def __init__(self, environ: dict, access_key: str, region: str) -> None:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        self.body = environ["wsgi.input"].read(length) if length else b""
        self._query = parse_qs(environ.get("QUERY_STRING", ""))
        self.region = region
        self.account = (os.environ.get("MOTO_ACCOUNT_ID") or environ.get("HTTP_X_MOTO_ACCOUNT_ID")
                        or _account_of(access_key))

    def json(self) -> dict[str, Any]:
        try:
            value = json.loads(self.body or b"{}")
        except ValueError:
            raise ApiError(400, "BadRequestException", "the request body is not JSON") from None
        return value if isinstance(value, dict) else {}

    def query(self, name: str) -> str | None:
        values = self._query.get(name)
        return values[0] if values else None


def _account_of(access_key: str) -> str:
    from moto.iam.models import get_account_id_from  # the account moto itself uses for this key

    return get_account_id_from(access_key)
