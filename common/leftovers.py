"""Processes a worker starts in their own session (the Temporal dev server, the sandbox's
Prometheus) outlive it when it is killed (SIGKILL, OOM, a closed laptop). The worker records them
in the data folder; the next ``make run`` stops those a dead worker left, so their ports are free
again (never a "port in use" dead end), and refuses to share the folder with a worker still alive.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

FILE_NAME = "processes.json"


class FolderInUse(RuntimeError):
    """Another worker, still running, uses this data folder."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _pids_running(marker: str) -> list[int]:
    """Processes whose command line contains ``marker``."""
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and marker in _cmdline(int(p.name))]


class Leftovers:
    """``data_dir/processes.json``: this worker's pid and the processes it started (pid + a string
    their command line contains, so a recycled pid is never mistaken for one of ours)."""

    def __init__(self, data_dir: Path) -> None:
        self.path = Path(data_dir) / FILE_NAME

    def _read(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}

    def _write(self, state: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, self.path)

    def clean_up(self) -> list[str]:
        """Stop what a dead worker left running; returns what was stopped, for the log.
        Raises FolderInUse if the worker that recorded them still runs."""
        state = self._read()
        worker = int(state.get("worker") or 0)
        if worker and worker != os.getpid() and _alive(worker) and "worker" in _cmdline(worker):
            raise FolderInUse(f"another rollback worker (pid {worker}) is running on the data folder "
                              f"{self.path.parent}: stop it first (Ctrl-C in its terminal, or 'kill {worker}')")
        stopped = []
        children = dict(state.get("children", {}))
        # a dev server on this folder's database that was never recorded (e.g. left before this file existed)
        db = str(self.path.parent / "temporal.db")
        for pid in _pids_running(db) if self.path.is_absolute() else []:  # relative: could be another checkout's
            if "start-dev" in _cmdline(pid) and all(int(e["pid"]) != pid for e in children.values()):
                children[f"the Temporal dev server on {db}"] = {"pid": pid, "marker": db}
        for name, entry in children.items():
            pid, marker = int(entry["pid"]), entry["marker"]
            if _alive(pid) and marker in _cmdline(pid):
                _stop(pid)
                stopped.append(f"{name} (pid {pid})")
        self._write({"worker": os.getpid(), "children": {}})
        return stopped

    def record(self, name: str, pid: int, marker: str) -> None:
        state = self._read() or {"worker": os.getpid(), "children": {}}
        state.setdefault("children", {})[name] = {"pid": pid, "marker": marker}
        self._write(state)

    def forget(self) -> None:
        """A clean stop: everything recorded was stopped."""
        self.path.unlink(missing_ok=True)


def _stop(pid: int, timeout: float = 10) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not _alive(pid):
                return
            try:  # our child's zombie (not the case after a restart, but cheap)
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
            time.sleep(0.05)
