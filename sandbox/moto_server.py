"""moto in server mode: a real HTTP endpoint speaking the AWS APIs the product uses.

It runs in a thread of the calling process, so its state is in memory and lives as long as
the process does (``reset`` empties it), unless it is given a state file (``sandbox.state``). Boto3 clients anywhere reach it via its endpoint URL.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from typing import Any

import httpx
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from moto.server import ThreadedMotoServer
from werkzeug.serving import make_server

from sandbox.appconfig_standin import AppConfigStandIn
from sandbox.fleet import DESIRED_COUNT
from sandbox.state import Persisted

# The sandbox's AppConfig deployments take a stage (DEPLOYING -> BAKING -> COMPLETE) per poll
# of GetDeployment or per this many seconds (see sandbox/appconfig_standin.py).
APPCONFIG_SECONDS_PER_STAGE = 3.0


class MotoDispatcher(DomainDispatcherApplication):
    """moto's dispatcher, remembering which backend serves a host. moto finds it again on every
    request, under one lock for all of them: it lists its own package folder (a directory read and
    ~170 isdir calls) and tries its URL patterns, about 1 ms a request, which serialised the
    sandbox's requests (a 200-function fleet waited mostly on it). The answer for a host never
    changes, so it is looked up once."""

    def __init__(self) -> None:
        super().__init__(create_backend_app)
        self._hosts: dict[str | None, Any] = {}

    def get_backend_for_host(self, host: str | None) -> Any:  # called under self.lock
        try:
            return self._hosts[host]
        except KeyError:
            backend = self._hosts[host] = super().get_backend_for_host(host)
            return backend


class _MotoServer(ThreadedMotoServer):
    """ThreadedMotoServer with the AppConfig stand-in in front of moto's app (moto lacks
    AppConfig environments, deployments and the AppConfig Data plane)."""

    appconfig: AppConfigStandIn | None = None
    state_file: Path | None = None  # where sandbox/state.py keeps moto's state across restarts
    persisted: Persisted | None = None

    def _server_entry(self) -> None:  # ThreadedMotoServer's own, with the app wrapped
        self.appconfig = AppConfigStandIn(MotoDispatcher(),
                                          seconds_per_stage=APPCONFIG_SECONDS_PER_STAGE)
        app: Any = self.appconfig
        if self.state_file is not None:
            app = self.persisted = Persisted(self.appconfig, self.appconfig, self.state_file)
        self._server = make_server(self._ip_address, self._port, app, True,
                                   request_handler=MotoRequestHandler)
        self._server_ready_event.set()
        self._server.serve_forever()


def start_moto(port: int, state_file: Path | None = None) -> tuple[_MotoServer, str]:
    """Start moto on 127.0.0.1:``port`` (0: any free port); returns the server and its URL.

    Sets ``MOTO_ECS_SERVICE_RUNNING`` in this process's environment: moto reads it (with
    os.getenv) whenever an ECS service is created, and without it every service reports
    runningCount 0, so it never looks settled. It must be set before the fleet is seeded.
    Also quiets the ``werkzeug`` logger (request lines), unless it already has a level.
    In front of moto runs the AppConfig stand-in (``sandbox.appconfig_standin``).
    ``state_file``: every change is saved there (``sandbox.state``); see ``Sandbox`` for loading it.
    """
    _check_free(port)
    os.environ["MOTO_ECS_SERVICE_RUNNING"] = str(DESIRED_COUNT)
    werkzeug = logging.getLogger("werkzeug")
    if werkzeug.level == logging.NOTSET:
        werkzeug.setLevel(logging.WARNING)
    server = _MotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.state_file = state_file
    server.start()
    host, bound = server.get_host_and_port()
    return server, f"http://{host}:{bound}"


def _check_free(port: int) -> None:
    """Fail now on a busy port: ThreadedMotoServer.start() would wait forever (its thread exits)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as werkzeug binds
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as e:
            raise OSError(e.errno, f"sandbox: port {port} for moto is in use ({e.strerror}); "
                                   "stop whatever holds it or set ROLLBACK_SANDBOX_PORT") from None


def reset(endpoint_url: str) -> None:
    """Forget every AWS resource moto holds (all services, all regions)."""
    httpx.post(f"{endpoint_url}/moto-api/reset", timeout=10).raise_for_status()
