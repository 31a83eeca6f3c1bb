"""moto in server mode: a real HTTP endpoint speaking the AWS APIs the product uses.

It runs in a thread of the calling process, so its state is in memory and lives as long as
the process does (``reset`` empties it). Boto3 clients anywhere reach it via its endpoint URL.
"""

from __future__ import annotations

import logging
import os
import socket

import httpx
from moto.server import ThreadedMotoServer

from sandbox.fleet import DESIRED_COUNT


def start_moto(port: int) -> tuple[ThreadedMotoServer, str]:
    """Start moto on 127.0.0.1:``port`` (0: any free port); returns the server and its URL.

    Sets ``MOTO_ECS_SERVICE_RUNNING`` in this process's environment: moto reads it (with
    os.getenv) whenever an ECS service is created, and without it every service reports
    runningCount 0, so it never looks settled. It must be set before the fleet is seeded.
    Also quiets the ``werkzeug`` logger (request lines), unless it already has a level.
    """
    _check_free(port)
    os.environ["MOTO_ECS_SERVICE_RUNNING"] = str(DESIRED_COUNT)
    werkzeug = logging.getLogger("werkzeug")
    if werkzeug.level == logging.NOTSET:
        werkzeug.setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
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
