"""Run ``python starter.py ARGS`` for tests without paying for its imports each time.

The CLI tests run starter.py about a hundred and fifty times, and most of each run's CPU was Python
importing temporalio, pydantic and our models (~0.6 s of a ~0.9 s run on 2 busy cores). Here one
helper process per pytest process imports all that once (by running starter.py's module code under
another name), then **forks** a child for each run. The child is a process of its own, as a
subprocess is: its own argv (``starter.py ARGS``), environment (replaced whole), working directory,
stdin (/dev/null), stdout and stderr (pipes to the test), exit code and signals (``kill()`` is
SIGKILL to it). It runs starter.py as ``__main__``, exactly as ``python starter.py`` does, so every
line of the CLI runs; only the interpreter's start and the imports are shared.

What it does not cover, and so the shell-run tests keep a real interpreter: the imports themselves
and the printed commands as typed (tests/test_quickstart.py, tests/test_production.py,
tests/test_make_run.py run ``.venv/bin/python starter.py ...`` through a shell).

The helper holds no threads when it forks (fork with threads is unsafe): it waits on a listening
socket and on pidfds, one per child, in one thread.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import os
import runpy
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "starter.py"


# --- the client side, in the test process -------------------------------------------------------

class Forked:
    """The parts of ``asyncio.subprocess.Process`` the tests use, for a forked starter.py run."""

    def __init__(self, pid: int, stdout: asyncio.StreamReader, stderr: asyncio.StreamReader,
                 control: asyncio.StreamReader, keep: asyncio.StreamWriter) -> None:
        self.pid, self.stdout, self.stderr = pid, stdout, stderr
        self.returncode: int | None = None
        self._control, self._keep = control, keep

    async def wait(self) -> int:
        if self.returncode is None:
            line = await self._control.readline()  # the helper writes the exit code when the child ends
            self.returncode = int(line) if line.strip() else -signal.SIGKILL
            self._keep.close()
        return self.returncode

    async def communicate(self) -> tuple[bytes, bytes]:
        out, err = await asyncio.gather(self.stdout.read(), self.stderr.read())
        await self.wait()
        return out, err

    def kill(self) -> None:
        if self.returncode is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


_helper: tuple[subprocess.Popen, str] | None = None


def _socket_path() -> str:
    """The helper's socket (started on first use; one per pytest process)."""
    global _helper
    if _helper is None or _helper[0].poll() is not None:
        path = os.path.join(tempfile.mkdtemp(prefix="starter-prefork-"), "sock")
        proc = subprocess.Popen([sys.executable, "-m", "tests.support.prefork", path], cwd=ROOT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        atexit.register(proc.kill)
        deadline = time.monotonic() + 60
        while not os.path.exists(path):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the starter.py prefork helper did not start (exit {proc.poll()})")
            time.sleep(0.02)
        _helper = (proc, path)
    return _helper[1]


async def spawn_starter(*args: str, env: dict[str, str], cwd: Path = ROOT) -> Forked:
    """``python starter.py *args`` with ``env`` in ``cwd``, stdout and stderr piped: a forked child."""
    loop = asyncio.get_running_loop()
    r_out, w_out = os.pipe()
    r_err, w_err = os.pipe()
    stdin = os.open(os.devnull, os.O_RDONLY)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(_socket_path())
        request = json.dumps({"argv": [str(SCRIPT), *args], "env": dict(env), "cwd": str(cwd)}).encode()
        socket.send_fds(sock, [len(request).to_bytes(4, "big") + request], [stdin, w_out, w_err])
    except BaseException:
        sock.close()
        os.close(r_out)
        os.close(r_err)
        raise
    finally:
        for fd in (stdin, w_out, w_err):
            os.close(fd)
    sock.setblocking(False)
    control, keep = await asyncio.open_unix_connection(sock=sock)
    pid = int(await control.readline())

    async def reader(fd: int) -> asyncio.StreamReader:
        stream = asyncio.StreamReader(limit=2**24)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stream), os.fdopen(fd, "rb", 0))
        return stream

    return Forked(pid, await reader(r_out), await reader(r_err), control, keep)


# --- the helper process -----------------------------------------------------------------------

def _run_child(fds: list[int], request: dict) -> None:
    """In the forked child: become ``python starter.py ARGS`` and never return."""
    code = 1
    try:
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        os.closerange(3, 65536)  # nothing of the helper's (its socket, other runs' connections) stays open
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        sys.argv = [request["argv"][0].rsplit("/", 1)[-1], *request["argv"][1:]]
        sys.path[0] = str(Path(request["argv"][0]).parent)
        runpy.run_path(request["argv"][0], run_name="__main__")  # starter.py ends with os._exit(code)
        code = 0
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            code = e.code or 0
        else:
            print(e.code, file=sys.stderr)
    except BaseException:  # noqa: BLE001 (what the interpreter would print)
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _serve(path: str) -> None:
    # starter.py's imports (its module code runs once here, under another name; its __main__ block does not)
    runpy.run_path(str(SCRIPT), run_name="starter_preloaded")
    sys.stdout.flush()
    sys.stderr.flush()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path + ".tmp")
    os.rename(path + ".tmp", path)  # the path appears once the helper is ready
    listener.listen(64)
    parent = os.getppid()
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ, None)
    while os.getppid() == parent:
        for key, _ in selector.select(timeout=1):
            if key.data is None:  # a run asked for
                conn, _ = listener.accept()
                message, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)  # the descriptors come with the first bytes
                size = int.from_bytes(message[:4], "big")
                while len(message) < 4 + size:
                    message += conn.recv(4 + size - len(message))
                message = message[4:]
                pid = os.fork()
                if pid == 0:
                    listener.close()
                    conn.close()
                    _run_child(fds, json.loads(message))
                for fd in fds:
                    os.close(fd)
                conn.sendall(f"{pid}\n".encode())
                pidfd = os.pidfd_open(pid)
                selector.register(pidfd, selectors.EVENT_READ, (pid, conn))
            else:  # a child ended: its exit code, as subprocess reports it
                pid, conn = key.data
                selector.unregister(key.fd)
                os.close(key.fd)
                _, status = os.waitpid(pid, 0)
                try:
                    conn.sendall(f"{os.waitstatus_to_exitcode(status)}\n".encode())
                except OSError:
                    pass  # the test went away
                conn.close()


if __name__ == "__main__":
    _serve(sys.argv[1])
