"""Terraform and the infrastructure repository (runbook section 3, "Terraform/CDK Changes").

The operator's checkout is never touched: the repository is mirrored (read only) under the
worker's work folder, and each rollback gets its own worktree at the target commit, where
``terraform init``, ``plan -out=rollback.plan`` and ``apply rollback.plan`` run. The binary is
the stack's (``terraform``, ``tofu`` or any command). Output tails go to the status with the
stack's env values redacted.

Idempotency: a checkout is per workflow run and reused by a retry; a plan is simply made
again; the apply checks the plan file's sha256, and a marker written just before it tells a
retry that an earlier attempt may have applied already (then the state is compared with the
plan instead of applying twice). A stale plan (the state moved since the plan) is never
retried: terraform refuses it and a person decides.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import uuid
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.migrations import _tail as tail
from common.catalog import Stack

PLAN_FILE = "rollback.plan"
APPLYING = "rollback.plan.applying"  # written just before apply; kept after it
GIT_TIMEOUT_S = 600
HEARTBEAT_S = 5
INTERRUPT_GRACE_S = 60  # terraform finishes what it is doing and writes the state on SIGINT


def _fail(message: str, type: str, retry: bool = False) -> ApplicationError:
    return ApplicationError(message, type=type, non_retryable=not retry)


# --- models --------------------------------------------------------------------------


class Commit(BaseModel):
    sha: str
    short: str
    subject: str

    def __str__(self) -> str:
        return f"{self.short} ({self.subject})"


class ResolveRequest(BaseModel):
    name: str
    stack: Stack
    to_commit: str  # a sha or ref, or "previous"


class Resolved(BaseModel):
    head: Commit
    target: Commit
    on_branch: bool  # the target is an ancestor of the branch's HEAD
    recent: list[str]  # git log --oneline -10 of the branch


class CheckoutRequest(BaseModel):
    name: str
    stack: Stack
    commit: str
    run_id: str


class Checkout(BaseModel):
    worktree: str
    config_dir: str
    reused: bool = False


class TfState(BaseModel):
    """Which state a plan was made against (None/None: no state yet)."""

    serial: int | None = None
    lineage: str | None = None

    def __str__(self) -> str:
        return "no state yet" if self.serial is None else f"serial {self.serial} (lineage {self.lineage})"


class PlanRequest(BaseModel):
    stack: Stack
    config_dir: str


class PlanSummary(BaseModel):
    plan_file: str
    sha256: str
    create: list[str] = []
    update: list[str] = []
    delete: list[str] = []
    replace: list[str] = []
    outputs_change: bool = False
    state: TfState  # the state the plan was made against: apply expects exactly it
    terraform_version: str = ""
    output: str = ""  # the plan as terraform printed it (tail, redacted)

    @property
    def add(self) -> int:
        return len(self.create) + len(self.replace)

    @property
    def change(self) -> int:
        return len(self.update)

    @property
    def destroy(self) -> int:
        return len(self.delete) + len(self.replace)

    @property
    def has_changes(self) -> bool:
        return bool(self.add or self.change or self.destroy or self.outputs_change)

    @property
    def counts(self) -> str:
        return f"{self.add} to add, {self.change} to change, {self.destroy} to destroy"


class ApplyRequest(BaseModel):
    stack: Stack
    config_dir: str
    sha256: str  # of the approved plan
    state: TfState  # the state the approved plan was made against


class Applied(BaseModel):
    state: TfState  # after the apply
    output: str
    already: bool = False  # an earlier attempt had applied it


class ValidateRequest(BaseModel):
    stack: Stack
    config_dir: str


class CommandOutcome(BaseModel):
    ok: bool
    exit_code: int | None
    output: str


# --- running things --------------------------------------------------------------------


def stack_env(stack: Stack) -> tuple[dict[str, str], list[str]]:
    """The env for terraform and the validation command, and the values to redact from output."""
    extra = {k: os.path.expandvars(v) for k, v in stack.env.items()}
    env = {**os.environ, "TF_IN_AUTOMATION": "1", "TF_INPUT": "0"}
    env.setdefault("CHECKPOINT_DISABLE", "1")  # a rollback worker does not phone home
    if "TF_CLI_CONFIG_FILE" not in env and not (Path.home() / ".terraformrc").exists():
        env["TF_CLI_CONFIG_FILE"] = "/dev/null"  # no CLI config: say so, rather than let it be searched
    env.update(extra)
    return env, [v for v in extra.values() if len(v) >= 4]


def _run(cmd: list[str], cwd: str | Path, env: dict[str, str], timeout_s: float,
         what: str) -> tuple[int, str, str]:
    """Run ``cmd`` to the end, heartbeating; (exit code, stdout, stderr). Stopped gently on timeout."""
    try:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    except FileNotFoundError:
        raise _fail(f"{what}: {cmd[0]!r} not found on the worker's PATH; install it or fix the catalog",
                    "InvalidRequest") from None
    waited = 0.0
    while True:
        try:
            out, err = proc.communicate(timeout=HEARTBEAT_S)
            return proc.returncode, out, err
        except subprocess.TimeoutExpired:
            waited += HEARTBEAT_S
            if activity.in_activity():
                activity.heartbeat(what)
            if waited >= timeout_s:
                break
    proc.send_signal(signal.SIGINT)
    try:
        proc.communicate(timeout=INTERRUPT_GRACE_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
    raise _fail(f"{what} ran over {timeout_s / 60:g} min and was stopped", "Timeout")


def _git(args: list[str], cwd: str | Path | None = None, check: bool = True, retry: bool = False) -> tuple[int, str]:
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"}
    try:
        proc = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=GIT_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise _fail("git is not installed on the worker", "InvalidRequest") from None
    except subprocess.TimeoutExpired:
        raise _fail(f"git {args[0]} ran over {GIT_TIMEOUT_S // 60} min", "Timeout", retry=True) from None
    if check and proc.returncode != 0:
        raise _fail(f"git {' '.join(args)} failed: {proc.stderr.strip() or proc.stdout.strip()}", "GitFailed", retry)
    return proc.returncode, proc.stdout.strip()


class Terraform:
    """One stack's terraform command in one configuration directory."""

    def __init__(self, stack: Stack, config_dir: str) -> None:
        self.stack, self.dir = stack, config_dir
        self.env, self.secrets = stack_env(stack)

    def run(self, *args: str, what: str = "") -> tuple[int, str, str]:
        what = what or f"terraform {args[0]}"
        return _run([*self.stack.terraform, *args], self.dir, self.env, self.stack.timeout_minutes * 60, what)

    def must(self, *args: str) -> str:
        """Run; a non-zero exit fails the activity (not retried) with the output tail."""
        code, out, err = self.run(*args)
        if code != 0:
            raise _fail(f"terraform {args[0]} exited {code}:\n{self.tail(out + err)}", "TerraformFailed")
        return out

    def tail(self, text: str, lines: int = 40) -> str:
        return tail(text, self.secrets, lines)

    def state(self) -> TfState:
        raw = self.must("state", "pull").strip()
        if not raw:
            return TfState()
        data = json.loads(raw)
        return TfState(serial=data.get("serial"), lineage=data.get("lineage"))

    def show_json(self, *args: str) -> dict[str, Any]:
        return json.loads(self.must("show", "-json", "-no-color", *args) or "{}")


def _moved_on(now: TfState, planned: TfState) -> bool:
    """The state is newer than the one the plan was made against (same lineage, higher serial)."""
    if planned.serial is None:
        return now.serial is not None
    return now.lineage == planned.lineage and (now.serial or 0) > planned.serial


def _drift(planned: TfState, now: TfState) -> str:
    if planned.lineage and now.lineage and planned.lineage != now.lineage:
        return f"lineage {planned.lineage} -> {now.lineage}: another state entirely"
    return f"state serial {planned.serial} -> {now.serial}"


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _resources(module: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """address -> values of the managed resources of a (planned or current) module tree."""
    found: dict[str, dict[str, Any]] = {}
    stack = [module or {}]
    while stack:
        m = stack.pop()
        for r in m.get("resources", []):
            if r.get("mode") == "managed":
                found[r["address"]] = r.get("values") or {}
        stack.extend(m.get("child_modules", []))
    return found


def summarize(show: dict[str, Any]) -> dict[str, Any]:
    """Resource addresses by action, from ``terraform show -json <plan>``."""
    buckets: dict[str, list[str]] = {"create": [], "update": [], "delete": [], "replace": []}
    for rc in show.get("resource_changes", []):
        if rc.get("mode") == "data":
            continue
        actions = rc.get("change", {}).get("actions", [])
        if set(actions) == {"create", "delete"}:
            buckets["replace"].append(rc["address"])
        elif actions in (["create"], ["update"], ["delete"]):
            buckets[actions[0]].append(rc["address"])
        elif actions == ["forget"]:
            buckets["update"].append(rc["address"])  # leaves the state, not the world
    outputs = any(c.get("actions") not in (["no-op"], None) for c in show.get("output_changes", {}).values())
    return {**buckets, "outputs_change": outputs}


# --- activities ----------------------------------------------------------------------


class TerraformActivities:
    def __init__(self, default_workdir: Path) -> None:
        self._default_workdir = default_workdir

    def _base(self, name: str, stack: Stack) -> Path:
        return Path(stack.workdir or self._default_workdir) / name

    def _mirror(self, name: str, stack: Stack) -> Path:
        """A read-only mirror of the stack's repository, fetched now."""
        mirror = self._base(name, stack) / "repo.git"
        if not (mirror / "HEAD").exists():
            mirror.parent.mkdir(parents=True, exist_ok=True)
            tmp = mirror.with_name(f"repo.git.{uuid.uuid4().hex}.tmp")
            code, _ = _git(["clone", "--mirror", "--quiet", "--", stack.repository, str(tmp)], check=False)
            if code != 0:
                shutil.rmtree(tmp, ignore_errors=True)
                raise _fail(f"cannot read the infrastructure repository {stack.repository!r}: is the path or URL "
                            "right and can the worker read it? (stacks.<name>.repository)", "InvalidRequest")
            try:
                tmp.rename(mirror)
            except OSError:  # another activity made it meanwhile
                shutil.rmtree(tmp, ignore_errors=True)
        else:
            _git(["remote", "set-url", "origin", stack.repository], cwd=mirror)
            _git(["fetch", "--prune", "--quiet", "origin"], cwd=mirror, retry=True)  # network, a concurrent fetch
        return mirror

    @activity.defn
    def resolve_stack_commits(self, req: ResolveRequest) -> Resolved:
        """Runbook: "git log --oneline -10": the branch's HEAD and the commit to return to."""
        mirror = self._mirror(req.name, req.stack)
        branch = req.stack.branch

        def rev(ref: str) -> str | None:
            code, out = _git(["rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"], cwd=mirror, check=False)
            return out if code == 0 and out else None

        def commit(sha: str) -> Commit:
            _, out = _git(["log", "-1", "--format=%h%x00%s", sha], cwd=mirror)
            short, subject = out.split("\0", 1)
            return Commit(sha=sha, short=short, subject=subject)

        head = rev(f"refs/heads/{branch}")
        if head is None:
            _, branches = _git(["for-each-ref", "--format=%(refname:short)", "refs/heads"], cwd=mirror)
            raise _fail(f"branch {branch!r} is not in {req.stack.repository} (branches: "
                        f"{', '.join(branches.split()) or 'none'}); fix stacks.{req.name}.branch", "InvalidRequest")
        _, log = _git(["log", "--format=%h %s", "-n", "10", head], cwd=mirror)
        recent = log.splitlines()
        if req.to_commit == "previous":
            target = rev(f"{head}^")
            if target is None:
                raise _fail(f"{branch} has a single commit ({recent[0]}): there is no previous one to return to",
                            "UnknownCommit")
        else:
            target = rev(req.to_commit)
            if target is None:
                raise _fail(f"commit {req.to_commit!r} is not in {req.stack.repository} (fetched just now); "
                            f"nothing was changed. Recent commits on {branch}:\n  " + "\n  ".join(recent),
                            "UnknownCommit")
        on_branch = _git(["merge-base", "--is-ancestor", target, head], cwd=mirror, check=False)[0] == 0
        return Resolved(head=commit(head), target=commit(target), on_branch=on_branch, recent=recent)

    @activity.defn
    def checkout_stack(self, req: CheckoutRequest) -> Checkout:
        """Runbook: "git checkout <previous-commit>", in a worktree of this workflow run's own."""
        mirror = self._mirror(req.name, req.stack)
        path = self._base(req.name, req.stack) / "runs" / req.run_id
        reused = False
        if path.exists():
            code, head = _git(["rev-parse", "HEAD"], cwd=path, check=False)
            reused = code == 0 and head == req.commit
            if not reused:  # a half-made checkout of an earlier attempt
                shutil.rmtree(path)
                _git(["worktree", "prune"], cwd=mirror)
        if not reused:
            path.parent.mkdir(parents=True, exist_ok=True)
            _git(["worktree", "add", "--detach", "--force", str(path), req.commit], cwd=mirror)
        config = (path / req.stack.directory).resolve()
        if not config.is_dir() or not config.is_relative_to(path.resolve()):
            raise _fail(f"directory {req.stack.directory!r} is not in the repository at {req.commit[:12]}; "
                        f"fix stacks.{req.name}.directory", "InvalidRequest")
        return Checkout(worktree=str(path), config_dir=str(config), reused=reused)

    @activity.defn
    def plan_stack(self, req: PlanRequest) -> PlanSummary:
        """Runbook: "terraform plan -out=rollback.plan", then "terraform show" it as a summary."""
        tf = Terraform(req.stack, req.config_dir)
        plan = Path(req.config_dir) / PLAN_FILE
        plan.unlink(missing_ok=True)
        tf.must("init", "-input=false", "-no-color")
        before = tf.state()
        code, out, err = tf.run("plan", "-input=false", "-no-color", "-lock-timeout=5m", f"-out={PLAN_FILE}")
        if code != 0:
            raise _fail(f"terraform plan exited {code}:\n{tf.tail(out + err)}", "TerraformFailed")
        if tf.state() != before:
            raise _fail("the state changed while planning; planning again", "StateChanged", retry=True)
        show = tf.show_json(PLAN_FILE)
        return PlanSummary(plan_file=str(plan), sha256=sha256_of(plan), state=before,
                           terraform_version=show.get("terraform_version", ""), output=tf.tail(out, 60),
                           **summarize(show))

    @activity.defn
    def apply_stack_plan(self, req: ApplyRequest) -> Applied:
        """Runbook: "terraform apply rollback.plan": the approved plan file, nothing planned again."""
        tf = Terraform(req.stack, req.config_dir)
        plan = Path(req.config_dir) / PLAN_FILE
        marker = Path(req.config_dir) / APPLYING
        if not plan.exists():
            raise _fail(f"{plan} is gone: nothing was applied; start a new rollback to plan again", "PlanChanged")
        digest = sha256_of(plan)
        if digest != req.sha256:
            raise _fail(f"{PLAN_FILE} is not the approved plan (sha256 {digest[:16]}..., approved "
                        f"{req.sha256[:16]}...): nothing was applied", "PlanChanged")
        now = tf.state()
        if marker.exists() and _moved_on(now, req.state):
            # An earlier attempt ran apply and its answer was lost: never apply twice.
            if self._state_matches_plan(tf):
                return Applied(state=now, output=f"already applied by an earlier attempt (state {now})",
                               already=True)
            raise _fail(f"an earlier apply of this plan was interrupted: the state is now {now}, which does not "
                        f"match the plan (made against {req.state}). Nothing more was applied; inspect the "
                        "state and start a new rollback to plan again", "ApplyInterrupted")
        marker.write_text(json.dumps({"sha256": req.sha256, "state": req.state.model_dump()}))
        code, out, err = tf.run("apply", "-input=false", "-no-color", "-lock-timeout=5m", PLAN_FILE)
        if code != 0:
            text = out + err
            if "Saved plan is stale" in text or "plan is stale" in text.lower():
                marker.unlink(missing_ok=True)
                raise _fail(f"the stack's state changed after the plan was made ({_drift(req.state, tf.state())}): "
                            "something else applied a change in between. Terraform refused the stale plan; "
                            "nothing was applied and it is not retried. Find out what changed, then start a new "
                            f"rollback to plan against the current state.\nterraform: {tf.tail(text, 6)}",
                            "StalePlan")
            raise _fail(f"terraform apply exited {code}; the state may be partly changed (now {tf.state()}):\n"
                        f"{tf.tail(text)}", "ApplyFailed")
        return Applied(state=tf.state(), output=tf.tail(out))

    def _state_matches_plan(self, tf: Terraform) -> bool:
        planned = _resources(tf.show_json(PLAN_FILE).get("planned_values", {}).get("root_module"))
        current = _resources(tf.show_json().get("values", {}).get("root_module"))
        if set(planned) != set(current):
            return False
        return all(current[a].get(k) == v for a, values in planned.items() for k, v in values.items())

    @activity.defn
    def validate_stack(self, req: ValidateRequest) -> CommandOutcome:
        """Runbook: "npm run infra:validate": the catalog's command, in the checked-out configuration."""
        command = req.stack.validation.command
        assert command, "no validation command"
        env, secrets = stack_env(req.stack)
        try:
            code, out, err = _run(command, req.config_dir, env, req.stack.validation.timeout_minutes * 60,
                                  f"validation command {command[0]}")
        except ApplicationError as e:
            if e.type == "Timeout":
                return CommandOutcome(ok=False, exit_code=None, output=str(e))
            raise
        return CommandOutcome(ok=code == 0, exit_code=code, output=tail(out + err, secrets))
