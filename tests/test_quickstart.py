"""The README's first screen, run as written, against the sandbox as ``make run`` starts it (free ports and
a data dir of its own, passed through the environment as ROLLBACK_* variables): the quick start's
commands, the ``temporal`` CLI examples, the gradual ``api-bg`` rollback from the CLI and from an alert,
and every hint the CLI prints along the way, each run as printed. If the README drifts from the product,
this fails.

The commands run in a directory laid out like a fresh clone (``.venv`` and the sources linked from this
one, ``.data`` the sandbox's data dir), so ``.venv/bin/...`` and ``.data/...`` in them resolve as they do
for a reader.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import httpx
import pytest

from tests.helpers import stop_gently
from tests.support import prefork
from tests.test_make_run import ROOT, Run, _dev_servers_of, free_ports, version, wait_banner
from tests.test_receiver import alertmanager

README = ROOT / "README.md"
# a hint: a quoted command, or the rest of the line after "follow it:"
HINT = re.compile(r"'((?:\S*/)?python3? starter\.py [^']+)'|follow it: ((?:\S*/)?python3? starter\.py .+)$", re.M)


def readme_section(title: str) -> str:
    return README.read_text().split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def code_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, re.S)


def quick_start_commands() -> list[str]:
    """The commands the quick start tells a reader to paste (its second code block), comments dropped."""
    return [line for line in code_blocks(readme_section("Quick start"))[1].splitlines() if line.strip()]


class Sandbox:
    def __init__(self, run: Run, clone: Path, proc: subprocess.Popen) -> None:
        self.run, self.clone, self.proc = run, clone, proc

    def sh(self, command: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess:
        """A command line as printed (shell words; comments dropped), run in the clone."""
        return subprocess.run(shlex.split(command, comments=True), cwd=self.clone, env={**self.run.env, **env},
                              capture_output=True, text=True, timeout=timeout)

    def bash(self, script: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", "-c", script], cwd=self.clone, env={**self.run.env, **env},
                              capture_output=True, text=True, timeout=timeout)

    def cli(self, *args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess:
        return self.sh(shlex.join([".venv/bin/python", "starter.py", *args]), timeout, **env)

    def follow(self, command: str, until: Callable[[str], bool], timeout: float = 90) -> str:
        """Run a command that goes on (``--watch``) until its output satisfies ``until``; then Ctrl-C it."""
        proc = subprocess.Popen(shlex.split(command, comments=True), cwd=self.clone, env=self.run.env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
        reader.start()
        deadline = time.monotonic() + timeout
        try:
            while not until("".join(lines)):
                if proc.poll() is not None or time.monotonic() > deadline:
                    reader.join(2)
                    raise AssertionError(f"{command!r} (exit {proc.poll()}) never satisfied the test; output:\n"
                                         + "".join(lines))
                time.sleep(0.2)
        finally:
            stop_gently(proc)
        return "".join(lines)


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory) -> Iterator[Sandbox]:
    tmp = tmp_path_factory.mktemp("quickstart")
    run = Run(tmp)
    run.data_dir.mkdir()
    clone = tmp / "clone"  # a fresh clone's layout: the sources and .venv, and .data as the sandbox's data dir
    clone.mkdir()
    for entry in ROOT.iterdir():
        if entry.name not in (".data", ".git"):
            (clone / entry.name).symlink_to(entry)
    (clone / ".data").symlink_to(run.data_dir)
    run.starts += 1
    with open(run.stderr_path(run.starts), "wb") as err:
        proc = prefork.spawn_worker(run.env, stdout=None, stderr=err.fileno())  # as Popen(start_new_session=True)
    try:
        wait_banner(run, proc, timeout=90)
        yield Sandbox(run, clone, proc)
    finally:
        stop_gently(proc)
        for pid in _dev_servers_of(run.data_dir):
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass


def hints(text: str) -> list[str]:
    return [(m.group(1) or m.group(2)).strip() for m in HINT.finditer(text)]


def test_quick_start_as_written(sandbox: Sandbox):
    login, start, watch = quick_start_commands()
    assert login.startswith(".venv/bin/python starter.py login ")

    done = sandbox.sh(login)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("logged in as dana with ")

    started = sandbox.sh(start)
    assert started.returncode == 0, started.stdout + started.stderr
    assert "started rollback-service-api (SEV-2, requested by dana, with proof)" in started.stdout
    # the hint it prints is the quick start's next command, and it works as printed
    assert hints(started.stdout) == [shlex.join(shlex.split(watch))]

    # each step as it happens, then, while monitoring, the round, the values and the next check
    out = sandbox.follow(watch, lambda text: "next check at" in text)
    assert re.search(r"^\d\d:\d\d:\d\d api: .+: running", out, re.M), out
    assert re.search(r"^\d\d:\d\d:\d\d api: .+: succeeded", out, re.M), out
    monitoring = next(line for line in out.splitlines() if "next check at" in line)
    assert re.search(r"api: monitoring - round 0 of 6; latest: .*error_rate [\d.]+ \((limit|baseline) [\d.]+\).*; "
                     r"next check at \d\d:\d\d:\d\d; monitoring ends at \d\d:\d\d:\d\d", monitoring), monitoring
    # what the quick start promises: the service is back within seconds, monitoring goes on for 30 minutes
    assert version(sandbox.run) == "v1.2.2"
    assert "monitors the service for 30 minutes" in readme_section("Quick start")
    status = json.loads(sandbox.cli("status", "api", "--json").stdout)
    m = status["monitoring"]
    assert status["phase"] == "monitoring" and m["rounds"] == 6
    assert 29 * 60 < (_ts(m["ends_at"]) - _ts(status["steps"][0]["started_at"])) < 32 * 60

    stopped = sandbox.cli("cancel", "api")
    assert stopped.returncode == 0 and "api: cancelled" in stopped.stdout, stopped.stdout + stopped.stderr


def _ts(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def test_temporal_cli_examples_work_as_printed(sandbox: Sandbox):
    section = readme_section("starter.py")
    block = code_blocks(section.split("From the `temporal` CLI", 1)[1])[0]
    commands = [c.strip() for c in block.replace("\\\n", " ").splitlines() if c.strip()]
    assert [c.split()[0] for c in commands] == [".venv/bin/temporal"] * 3
    address = {"TEMPORAL_ADDRESS": f"127.0.0.1:{sandbox.run.dev_port}"}  # the README's 7233, on this test's port
    assert sandbox.cli("login", "dana").returncode == 0
    for command in commands[:2]:
        done = sandbox.bash(command, **address)
        assert done.returncode == 0, f"{command}\n{done.stdout}{done.stderr}"
    deadline = time.monotonic() + 30
    while True:
        queried = sandbox.bash(commands[2] + " --output json", **address)
        assert queried.returncode == 0, queried.stdout + queried.stderr
        if '"approver": "dana"' in queried.stdout or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert '"approver": "dana"' in queried.stdout and '"kind": "oidc"' in queried.stdout, queried.stdout
    stopped = sandbox.cli("cancel", "api")
    assert stopped.returncode in (0, 1), stopped.stdout + stopped.stderr  # (it may have finished already)


def test_every_hint_works_as_printed_and_kinds_resolve_themselves(sandbox: Sandbox):
    for person in ("zoe", "alice"):
        assert sandbox.cli("login", person).returncode == 0
    start = ("start", "payments_disabled", "--kind", "flag", "--severity", "SEV-0", "--requested-by", "zoe",
             "--reason", "checkout errors", "--set", "action=kill_switch")
    started = sandbox.cli(*start)
    assert started.returncode == 0, started.stdout + started.stderr
    [follow] = hints(started.stdout)
    assert follow == ".venv/bin/python starter.py status payments_disabled --watch"  # no --kind needed
    out = sandbox.follow(follow, lambda text: "awaiting_approval" in text)
    assert "waiting for 2 approvers (SEV-0) of alice, bob, carol" in out, out  # plural

    again = sandbox.cli(*start)
    assert again.returncode == 1 and "already running" in again.stderr, again.stderr
    [shown] = hints(again.stderr)
    done = sandbox.sh(shown)
    assert done.returncode == 0 and "flag rollback of payments_disabled" in done.stdout, done.stdout + done.stderr

    # a rejection needs a reason; control characters in it never reach the terminal
    empty = sandbox.cli("reject", "payments_disabled", "--as", "alice")
    assert empty.returncode == 2 and "a rejection needs a reason" in empty.stderr, empty.stderr
    rejected = sandbox.cli("reject", "payments_disabled", "--as", "alice", "--reason", "\x1b]0;owned\x07not now\x1b[2J")
    assert rejected.returncode == 0, rejected.stdout + rejected.stderr
    status = sandbox.cli("status", "payments_disabled")
    assert "rejected by alice: ]0;ownednot now[2J" in status.stdout, status.stdout
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f]", status.stdout + status.stderr)

    late = sandbox.cli("approve", "payments_disabled", "--as", "alice")
    assert late.returncode == 1 and "already ended" in late.stderr, late.stderr
    [shown] = hints(late.stderr)
    done = sandbox.sh(shown)
    assert done.returncode == 1 and "rejected" in done.stdout, done.stdout + done.stderr  # as the hint says: how it ended

    # the list never cuts a workflow id, in a pipe or a narrow terminal
    listed = sandbox.cli("list", "--all", COLUMNS="40")
    assert "rollback-flag-payments_disabled" in listed.stdout, listed.stdout


def test_gradual_api_bg_from_the_cli_and_from_an_alert(sandbox: Sandbox):
    """The sandbox's catalog is every entry point's: the blue/green api-bg is known to the CLI and the receiver."""
    port, = free_ports(1)
    env = {**sandbox.run.env, "ROLLBACK_RECEIVER_TOKEN": "t0ken-for-the-quick-start-test",
           "ROLLBACK_RECEIVER_PORT": str(port)}
    receiver = subprocess.Popen([sys.executable, "receiver.py"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                answer = httpx.post(f"http://127.0.0.1:{port}/alerts/alertmanager",
                                    json=alertmanager("api-bg", alertname="HighLatencyP95"),
                                    headers={"Authorization": "Bearer t0ken-for-the-quick-start-test"}, timeout=30)
                break
            except httpx.TransportError:
                assert receiver.poll() is None and time.monotonic() < deadline, receiver.stderr.read().decode()
                time.sleep(0.3)
        assert answer.status_code == 200 and answer.json()["started"] == 1, answer.text
    finally:
        stop_gently(receiver)
    status = sandbox.cli("status", "api-bg", "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["requested_by"] == "alertmanager:high-latency"
    assert sandbox.cli("cancel", "api-bg").returncode == 0

    assert sandbox.cli("login", "dana").returncode == 0
    started = sandbox.cli("start", "api-bg", "--rollout", "50,100", "--severity", "SEV-2", "--requested-by", "dana",
                          "--reason", "latency after v1.2.3", "--wait-until", "changed")
    assert started.returncode == 0, started.stdout + started.stderr
    assert "started rollback-service-api-bg" in started.stdout
    # --wait-until changed returns after the first shift, while the gradual rollback waits 5 min to go on.
    # (The target is v1.2.2 unless an earlier test here rolled api, which shares api-bg's task definitions,
    # back from v1.2.2: then v1.2.2 is known-bad and the default target is the one before it.)
    changed = re.search(r"api-bg: changed \(v1\.2\.3 -> (v1\.2\.2|v1\.1\.41), now ", started.stdout)
    assert changed, started.stdout
    shown = sandbox.cli("status", "api-bg")
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert "service rollback of api-bg" in shown.stdout, shown.stdout
    assert f"v1.2.3 -> {changed.group(1)}" in shown.stdout, shown.stdout
    status = json.loads(sandbox.cli("status", "api-bg", "--json").stdout)
    assert status["phase"] in ("rolling_back", "validating", "monitoring") and status["requested_by"] == "dana"
    assert sandbox.cli("cancel", "api-bg").returncode == 0
