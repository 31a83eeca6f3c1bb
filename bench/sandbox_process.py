"""The bench's sandbox in a process of its own (``SandboxProcess``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _serve_sandbox(data_dir: Path, conn: Any) -> None:
    """The sandbox in a process of its own (see SandboxProcess): its info out, then serve until told to stop."""
    from sandbox import Sandbox

    # persist=False: `make run`'s sandbox saves all of moto to disk after every change, one request at a
    # time (sandbox/state.py), a stand-in's cost real AWS does not have
    sandbox = Sandbox(port=0, http_port=0, data_dir=data_dir, prometheus_port=None, persist=False)
    try:
        conn.send(sandbox.start().model_dump_json())
        conn.recv()  # until the bench is done
    finally:
        sandbox.stop()


class SandboxProcess:
    """The sandbox (moto, the endpoints, the identity provider) in a child process: AWS is not in the
    worker's process, and moto in it would share the worker's interpreter lock (every AWS call then
    waits for the worker's Python, and the worker for moto's), which a real deployment never does."""

    def __init__(self, data_dir: Path) -> None:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")  # never fork a process with threads and an event loop
        self._conn, child = ctx.Pipe()
        self._process = ctx.Process(target=_serve_sandbox, args=(data_dir, child), daemon=True)

    def start(self) -> Any:
        from sandbox import SandboxInfo

        self._process.start()
        if not self._conn.poll(120):
            raise SystemExit("bench: the sandbox did not start within 2 minutes")
        try:
            return SandboxInfo.model_validate_json(self._conn.recv())
        except EOFError:
            raise SystemExit("bench: the sandbox's process ended while starting (its error is above)") from None

    def stop(self) -> None:
        try:
            self._conn.send("stop")
        except OSError:
            pass
        self._process.join(30)
        if self._process.is_alive():
            self._process.kill()
