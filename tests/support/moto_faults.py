"""TEST STAND-IN, not product code: moto's real server with a thin WSGI layer in front that

- counts the AWS actions it serves (so tests can prove "each change applied once"), and
- answers chosen actions with injected faults (ThrottlingException, 500, AccessDenied),

because moto itself has no fault injection (see ../shared/PLATFORM.md). Under it, the
sandbox's AppConfig stand-in (``sandbox/appconfig_standin.py``) adds what moto lacks of AppConfig.
"""

from __future__ import annotations

import io
import json
import re
import threading
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import parse_qs

from moto.core.base_backend import BackendDict, BaseBackend, backend_lock
from moto.core.model_instances import reset_model_data
from moto.moto_server.werkzeug_app import MotoRequestHandler
from werkzeug.serving import make_server

from sandbox.appconfig_standin import AppConfigStandIn
from sandbox.moto_server import MotoDispatcher

FAULTS = {
    "throttle": (400, "ThrottlingException", "Rate exceeded"),
    "5xx": (500, "InternalFailure", "We encountered an internal error. Please try again."),
    "denied": (400, "AccessDeniedException", "User: arn:aws:iam::123456789012:user/worker is not "
                                             "authorized to perform this action"),
    # The call IS made, but its answer is lost (a crash or timeout right after the change).
    "lost-answer": (500, "InternalFailure", "the answer was lost after the change was made"),
}


# The AWS actions that change something (the rollback's changes and its verdict tags), for
# "nothing changed after the cancel" assertions.
CHANGES = frozenset({
    "UpdateService", "ModifyListener", "RunTask", "RestoreDBInstanceFromDBSnapshot", "PutSecretValue",
    "UpdateSecret", "UpdateSecretVersionStage", "ChangeResourceRecordSets", "CopyObject", "DeleteObject",
    "CreateInvalidation", "UpdateAlias", "CreateHostedConfigurationVersion", "StartDeployment", "TagResource",
    "UntagResource",
})


@dataclass
class FaultyMoto:
    calls: Counter = field(default_factory=Counter)
    faults: dict[str, list[str]] = field(default_factory=dict)  # action -> queue of fault names
    _lock: threading.Lock = field(default_factory=threading.Lock)
    appconfig: AppConfigStandIn | None = None  # the AppConfig stand-in under this layer (set by serve)
    # Every call that may have changed moto's state since the server started (never cleared): the
    # ``aws`` fixture re-seeds only when it moved (a read-only test leaves the fleet as it was).
    mutations: int = 0

    def inject(self, action: str, *faults: str) -> None:
        with self._lock:
            self.faults.setdefault(action, []).extend(faults)

    def changes(self) -> dict[str, int]:
        """How many changing calls were made, per action (zero counts left out)."""
        with self._lock:
            return {a: n for a, n in self.calls.items() if a in CHANGES and n}

    def clear(self) -> None:
        with self._lock:
            self.calls.clear()
            self.faults.clear()

    def reset(self) -> None:
        """What ``POST /moto-api/reset`` does (moto and the AppConfig stand-in forget everything), done in
        this process, where the server runs, without moto's wasted work: its reset builds every region's
        backend anew (EC2's default VPCs and AMI catalog among them) and then throws them all away,
        about 90 ms a test. Here only backends that hold something outside themselves (S3's open key
        files) run their own reset; the rest are dropped, and moto builds them again when first used."""
        with self._lock:
            self.mutations += 1
        with backend_lock:
            for backends in BackendDict._instances:  # noqa: SLF001 (moto's registry of backends in use)
                for per_account in backends.values():
                    for backend in per_account.values():
                        if type(backend).reset is not BaseBackend.reset:
                            backend.reset()
                backends.clear()
            BackendDict._instances.clear()  # noqa: SLF001
            reset_model_data()
        if self.appconfig is not None:
            self.appconfig.reset()

    def _action(self, environ: dict) -> str:
        target = environ.get("HTTP_X_AMZ_TARGET", "")
        if target:
            return target.rsplit(".", 1)[-1]
        rest = self._rest_action(environ)
        if rest:
            return rest
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        environ["wsgi.input"] = io.BytesIO(body)
        form = parse_qs(body.decode("utf-8", "replace")) if body else {}
        query = parse_qs(environ.get("QUERY_STRING", ""))
        return (form.get("Action") or query.get("Action") or [""])[0]

    @staticmethod
    def _rest_action(environ: dict) -> str | None:
        """REST-style APIs (S3, CloudFront, AppConfig) name the action by method and path, not a header."""
        method, path = environ.get("REQUEST_METHOD", ""), environ.get("PATH_INFO", "")
        appconfig = _appconfig_action(method, path.rstrip("/"))
        if appconfig:
            return appconfig
        if re.fullmatch(r"/20\d\d-\d\d-\d\d/functions/[^/]+/aliases/[^/]+", path) and method == "PUT":
            return "UpdateAlias"  # Lambda's REST API
        if re.match(r"(/20\d\d-\d\d-\d\d)?/tags/arn", path):  # Lambda's and AppConfig's tagging
            return {"POST": "TagResource", "DELETE": "UntagResource"}.get(method, "ListTagsForResource")
        if "/distribution/" in path and "/invalidation" in path:
            if method == "POST":
                return "CreateInvalidation"
            return "GetInvalidation" if not path.rstrip("/").endswith("/invalidation") else "ListInvalidations"
        if environ.get("HTTP_X_AMZ_COPY_SOURCE"):
            return "CopyObject"
        if method == "DELETE" and path.strip("/").count("/") >= 1:
            return "DeleteObject"
        return None

    def wrap(self, app):
        def middleware(environ, start_response):
            if environ.get("PATH_INFO", "").startswith("/moto-api"):
                if environ.get("REQUEST_METHOD") != "GET":
                    with self._lock:
                        self.mutations += 1  # reset, config, state-manager
                return app(environ, start_response)
            action = self._action(environ)
            with self._lock:
                self.calls[action] += 1
                if may_change(action, environ.get("REQUEST_METHOD", "")):
                    self.mutations += 1
                queue = self.faults.get(action)
                fault = queue.pop(0) if queue else None
            if fault is None:
                return app(environ, start_response)
            if fault == "lost-answer":
                b"".join(app(environ, lambda *a, **k: None))
            status, code, message = FAULTS[fault]
            json_api = bool(environ.get("HTTP_X_AMZ_TARGET"))
            if json_api:
                body = json.dumps({"__type": code, "message": message}).encode()
                ctype = "application/x-amz-json-1.1"
            else:
                body = (f"<ErrorResponse><Error><Type>Sender</Type><Code>{code}</Code>"
                        f"<Message>{message}</Message></Error></ErrorResponse>").encode()
                ctype = "text/xml"
            start_response(f"{status} {'Internal Server Error' if status >= 500 else 'Bad Request'}",
                           [("Content-Type", ctype), ("Content-Length", str(len(body))),
                            ("x-amzn-ErrorType", code)])
            return [body]
        return middleware

    def serve(self, port: int = 0) -> tuple[str, "callable"]:
        self.appconfig = AppConfigStandIn(MotoDispatcher())
        app = self.wrap(self.appconfig)
        server = make_server("127.0.0.1", port, app, threaded=True, request_handler=MotoRequestHandler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        host, real_port = server.server_address[:2]
        return f"http://{host}:{real_port}", server.shutdown


_APPCONFIG = [  # (method, path pattern, action): the AppConfig calls tests count
    ("POST", r"/applications/[^/]+/configurationprofiles/[^/]+/hostedconfigurationversions",
     "CreateHostedConfigurationVersion"),
    ("GET", r"/applications/[^/]+/configurationprofiles/[^/]+/hostedconfigurationversions/\d+",
     "GetHostedConfigurationVersion"),
    ("GET", r"/applications/[^/]+/configurationprofiles/[^/]+/hostedconfigurationversions",
     "ListHostedConfigurationVersions"),
    ("POST", r"/applications/[^/]+/environments/[^/]+/deployments", "StartDeployment"),
    ("GET", r"/applications/[^/]+/environments/[^/]+/deployments/\d+", "GetDeployment"),
    ("GET", r"/applications/[^/]+/environments/[^/]+/deployments", "ListDeployments"),
    ("DELETE", r"/applications/[^/]+/environments/[^/]+/deployments/\d+", "StopDeployment"),
    ("POST", r"/configurationsessions", "StartConfigurationSession"),
    ("GET", r"/configuration", "GetLatestConfiguration"),
    ("GET", r"/applications", "ListApplications"),  # names -> ids
    ("GET", r"/applications/[^/]+/environments", "ListEnvironments"),
    ("GET", r"/applications/[^/]+/configurationprofiles", "ListConfigurationProfiles"),
    ("GET", r"/deploymentstrategies", "ListDeploymentStrategies"),
]


READS = ("Describe", "List", "Get", "Head", "BatchGet", "Lookup")


def may_change(action: str, method: str) -> bool:
    """Conservative: only a named read (Describe*, List*, Get*...) or a REST GET/HEAD is known not to change
    anything (a REST call this layer cannot name counts by its method)."""
    if action:
        return not action.startswith(READS)
    return method not in ("GET", "HEAD")


def _appconfig_action(method: str, path: str) -> str | None:
    for m, pattern, action in _APPCONFIG:
        if m == method and re.fullmatch(pattern, path):
            return action
    return None
