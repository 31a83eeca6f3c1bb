"""Run ``python starter.py ARGS`` and ``python worker.py`` for tests without paying for their imports
each time.

The CLI tests run starter.py about a hundred and fifty times, and most of each run's CPU was Python
importing temporalio, pydantic and our models (~0.6 s of a ~0.9 s run on 2 busy cores). Here one
helper process per pytest process imports all that once (by running starter.py's module code under
another name), then **forks** a child for each run. The child is a process of its own, as a
subprocess is: its own argv (``starter.py ARGS``), environment (replaced whole), working directory,
stdin (/dev/null), stdout and stderr (pipes to the test), exit code and signals (``kill()`` is
SIGKILL to it). It runs starter.py as ``__main__``, exactly as ``python starter.py`` does, so every
line of the CLI runs; only the interpreter's start and the imports are shared.

The crash and restart tests start ``python worker.py`` about thirty times a run, at 3-4 CPU-seconds of
imports each (SciPy alone is one): ``spawn_worker`` forks those from a helper of their own, as a
``subprocess.Popen`` with ``start_new_session=True`` would run them (``ForkedProcess`` has the parts of
Popen the tests use). A module that read the environment at import would see the helper's; ours read
it when called (Settings, the AWS clients): the make run tests give each worker its own ports and data
folder that way.

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
WORKER = ROOT / "worker.py"


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


class ForkedProcess:
    """The parts of ``subprocess.Popen`` the tests use, for a forked worker.py run."""

    def __init__(self, args: list[str], pid: int, control: socket.socket) -> None:
        self.args, self.pid, self.returncode = args, pid, None
        self._control, self._buffer = control, b""

    def _read_exit(self, timeout: float | None) -> None:
        self._control.settimeout(timeout)
        while b"\n" not in self._buffer:
            chunk = self._control.recv(64)  # the helper writes the exit code when the child ends
            if not chunk:
                break
            self._buffer += chunk
        self.returncode = int(self._buffer) if self._buffer.strip() else -signal.SIGKILL
        self._control.close()

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                self._read_exit(0)
            except (BlockingIOError, TimeoutError):
                pass
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            try:
                self._read_exit(timeout)
            except (BlockingIOError, TimeoutError):
                raise subprocess.TimeoutExpired(self.args, timeout) from None
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)


_helpers: dict[Path, tuple[subprocess.Popen, str]] = {}


def _socket_path(script: Path) -> str:
    """The socket of ``script``'s helper (started on first use; one per script and pytest process)."""
    helper = _helpers.get(script)
    if helper is None or helper[0].poll() is not None:
        path = os.path.join(tempfile.mkdtemp(prefix=f"{script.stem}-prefork-"), "sock")
        proc = subprocess.Popen([sys.executable, "-m", "tests.support.prefork", path, str(script)], cwd=ROOT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        atexit.register(proc.kill)
        deadline = time.monotonic() + 60
        while not os.path.exists(path):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the {script.name} prefork helper did not start (exit {proc.poll()})")
            time.sleep(0.02)
        helper = _helpers[script] = (proc, path)
    return helper[1]


def _request(script: Path, args: tuple[str, ...], env: dict[str, str], cwd: Path, fds: list[int],
             new_session: bool = False) -> tuple[socket.socket, list[str]]:
    """Ask ``script``'s helper for a child with ``fds`` as its stdin, stdout and stderr (closed here)."""
    argv = [str(script), *args]
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(_socket_path(script))
        request = json.dumps({"argv": argv, "env": dict(env), "cwd": str(cwd), "new_session": new_session}).encode()
        socket.send_fds(sock, [len(request).to_bytes(4, "big") + request], fds)
    except BaseException:
        sock.close()
        raise
    finally:
        for fd in fds:
            os.close(fd)
    return sock, argv


def spawn_worker(env: dict[str, str], stdout: int | None, stderr: int, cwd: Path = ROOT) -> ForkedProcess:
    """``python worker.py`` with ``env`` in ``cwd`` in a session of its own, as
    ``subprocess.Popen([sys.executable, "worker.py"], start_new_session=True, stdin=DEVNULL, ...)`` runs
    it: a forked child. ``stdout`` and ``stderr`` are descriptors (duplicated here: the caller keeps and
    closes its own); ``stdout`` None is /dev/null."""
    out = os.open(os.devnull, os.O_WRONLY) if stdout is None else os.dup(stdout)
    fds = [os.open(os.devnull, os.O_RDONLY), out, os.dup(stderr)]
    sock, argv = _request(WORKER, (), env, cwd, fds, new_session=True)
    buffer = b""
    while b"\n" not in buffer:
        chunk = sock.recv(64)
        if not chunk:
            raise RuntimeError("the worker.py prefork helper went away")
        buffer += chunk
    line, rest = buffer.split(b"\n", 1)
    proc = ForkedProcess(argv, int(line), sock)
    proc._buffer = rest
    return proc


async def spawn_starter(*args: str, env: dict[str, str], cwd: Path = ROOT) -> Forked:
    """``python starter.py *args`` with ``env`` in ``cwd``, stdout and stderr piped: a forked child."""
    loop = asyncio.get_running_loop()
    r_out, w_out = os.pipe()
    r_err, w_err = os.pipe()
    try:
        sock, _ = _request(SCRIPT, args, env, cwd, [os.open(os.devnull, os.O_RDONLY), w_out, w_err])
    except BaseException:
        os.close(r_out)
        os.close(r_err)
        raise
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
    """In the forked child: become ``python SCRIPT ARGS`` and never return."""
    code = 1
    try:
        if request.get("new_session"):
            os.setsid()
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


def _serve(path: str, script: str) -> None:
    # the script's imports (its module code runs once here, under another name; its __main__ block does not)
    runpy.run_path(script, run_name=f"{Path(script).stem}_preloaded")
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
    _serve(sys.argv[1], sys.argv[2])
