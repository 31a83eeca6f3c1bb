"""The service's public endpoints, faked: what the runbook curls before and after a rollback.

``/api/...`` is api-service; ``/api-bg/...`` is the blue/green pair, answered by whichever
ECS service is behind the target group with the larger listener weight. ``version`` is read
from moto on every request, so a rollback (update_service, modify_listener) shows at once.

    /<prefix>/health   200 {"status": "ok"}
    /<prefix>/ready    200 {"ready": true}
    /<prefix>/version  200 {"version": "v1.2.3", "revision": 43, "service": "api-service"}
    /<prefix>/search   200 {"query": "...", "results": [...], "version": "v1.2.3"}  (smoke check)
    /site/             the frontend's current index.html (see sandbox/frontend_fleet.py)
    /oidc/...          the sandbox's identity provider (discovery, JWKS, login: sandbox/oidc.py)
"""

from __future__ import annotations

import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from sandbox.fleet import SERVICE, Fleet, Running, client, running
from sandbox.frontend_fleet import site_index
from sandbox.oidc import SandboxIssuer, reply

log = logging.getLogger(__name__)


class _Live:
    """Which ECS service answers for a prefix, and what it runs, read from moto."""

    def __init__(self, endpoint_url: str, fleet: Fleet) -> None:
        self._ecs = client("ecs", endpoint_url, fleet.region)
        self._elbv2 = client("elbv2", endpoint_url, fleet.region)
        self.s3 = client("s3", endpoint_url, fleet.region)
        self._fleet = fleet

    def service_for(self, prefix: str) -> str | None:
        if prefix == "api":
            return SERVICE
        if prefix == "api-bg":
            return self._fleet.service_behind(self._heaviest_target_group())
        return None

    def running(self, service: str) -> Running:
        return running(self._ecs, service, self._fleet.cluster)

    def _heaviest_target_group(self) -> str:
        listener = self._elbv2.describe_listeners(ListenerArns=[self._fleet.listener_arn])["Listeners"][0]
        groups = listener["DefaultActions"][0]["ForwardConfig"]["TargetGroups"]
        # max() keeps the first on a tie: blue, as it is listed first.
        return max(groups, key=lambda g: g.get("Weight", 1))["TargetGroupArn"]


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        url = urlsplit(self.path)
        prefix, _, endpoint = url.path.strip("/").partition("/")
        if prefix == "site":
            return self._site()
        if prefix == "oidc" and self.server.issuer is not None:
            return self._send(*self.server.issuer.answer("GET", endpoint, b""))
        try:
            service = self.server.live.service_for(prefix)
            if service is None:
                return self._send(404, {"error": f"no such service prefix: /{prefix}/"})
            body = self._answer(service, endpoint, parse_qs(url.query))
        except Exception as e:  # moto unreachable or reset: look like a broken backend
            log.warning("sandbox endpoint %s failed: %s", self.path, e)
            return self._send(503, {"error": f"{type(e).__name__}: {e}"})
        if body is None:
            return self._send(404, {"error": f"no such endpoint: {url.path}"})
        self._send(200, body)

    def do_POST(self) -> None:  # noqa: N802
        """``POST /oidc/login {"person": "alice"}``: the sandbox IdP signs a token for a catalog person."""
        prefix, _, endpoint = urlsplit(self.path).path.strip("/").partition("/")
        if prefix != "oidc" or self.server.issuer is None:
            return self._send(404, {"error": f"no such endpoint: {self.path}"})
        length = min(int(self.headers.get("Content-Length") or 0), 4096)
        self._send(*self.server.issuer.answer("POST", endpoint, self.rfile.read(length)))

    def _answer(self, service: str, endpoint: str, query: dict[str, list[str]]) -> dict[str, Any] | None:
        if endpoint == "health":
            return {"status": "ok"}
        if endpoint == "ready":
            return {"ready": True}
        if endpoint == "version":
            now = self.server.live.running(service)
            return {"version": now.version, "revision": now.revision, "service": service}
        if endpoint == "search":
            q = query.get("q", ["rollback"])[0]
            return {"query": q, "results": [{"id": 1, "title": f"Result for {q}"}],
                    "version": self.server.live.running(service).version}
        return None

    def _site(self) -> None:
        """The frontend as CloudFront would serve it: the live bucket's current index.html."""
        try:
            data = site_index(self.server.live.s3)
        except Exception as e:
            return self._send(503, {"error": f"{type(e).__name__}: {e}"})
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _send(self, status: int, body: dict[str, Any]) -> None:
        reply(self, status, body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        log.debug("sandbox endpoint: " + format, *args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, live: _Live, issuer: SandboxIssuer | None) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.live, self.issuer = live, issuer


class EndpointServer:
    """The fake endpoints on 127.0.0.1:``port`` (0: any free port), served by a daemon thread;
    with ``issuer``, also the sandbox's identity provider at ``<base_url>/oidc``."""

    def __init__(self, endpoint_url: str, fleet: Fleet, port: int, issuer: SandboxIssuer | None = None) -> None:
        self._server = _Server(port, _Live(endpoint_url, fleet), issuer)
        if issuer is not None:
            issuer.url = f"{self.base_url}/oidc"
        self._thread = threading.Thread(target=self._server.serve_forever, name="sandbox-endpoints",
                                        daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if self._thread.is_alive():  # shutdown() would wait forever for a loop never started
            self._server.shutdown()
            self._thread.join(timeout=10)
        self._server.server_close()
