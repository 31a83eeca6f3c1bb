"""Production mode, as a platform engineer deploys it from the README alone: the worker, the CLI and the
receiver as real processes against a standalone Temporal server (the session's dev server, not started by
the worker) and an AWS endpoint (moto's server) seeded by the test with a shop's own fleet, NOT the
sandbox's (tests/support/checkout_fleet.py), using a catalog written here. Each procedure runs once, and
each preflight failure stops a real process at start with one paragraph that names the fix.

The README's production block is followed literally: its exports and commands are read from README.md,
only the values (addresses, paths, secrets) are this test's.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import httpx
import pytest
import yaml
from google.protobuf.duration_pb2 import Duration
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.api.workflowservice.v1 import RegisterNamespaceRequest
from temporalio.client import Client
from temporalio.service import RPCError

from common.models import RollbackStatus
from sandbox.oidc import IssuerServer, SandboxIssuer, load_or_create_key
from tests.fixtures.infra import DIRECTORY, TERRAFORM, TF_ENV, build_infra_repo
from tests.support import checkout_fleet as shop_fleet
from tests.helpers import stop_gently
from tests.support.checkout_fleet import Checkout, CheckoutEndpoints

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "prod-test-token-5d1e"
FAST = {"monitor_minutes": 0.05, "monitor_interval_minutes": 0.02, "settle_poll_seconds": 0.5,
        "validation_retry_seconds": 1, "db_poll_seconds": 0.5, "invalidation_poll_seconds": 0.5,
        "appconfig_poll_seconds": 0.5, "gradual_step_wait_minutes": 0.02}


def readme_production() -> tuple[list[str], list[str]]:
    """The README production block: the variables it exports, and its commands (without comments)."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"## Production\n.*?```bash\n(.*?)```", text, re.S)
    assert block, "README.md has no '## Production' section with a bash block"
    lines = [line.split("  #", 1)[0].strip() for line in block.group(1).splitlines()]
    exported = [name for line in lines if line.startswith("export ")
                for name in re.findall(r"([A-Z_]+)=", line)]
    return exported, [line for line in lines if ".venv/bin/python" in line]


@dataclass
class Deployment:
    shop: Checkout
    catalog: Path
    env: dict[str, str]  # the environment the README's exports give, with this test's values
    tmp: Path
    state: Path  # the infra stack's Terraform state

    def command(self, line: str) -> tuple[list[str], dict[str, str]]:
        """A README command line (``VAR=value ... .venv/bin/python script args``): argv and environment."""
        env, argv = dict(self.env), shlex.split(line)
        while "=" in argv[0] and not argv[0].startswith("."):
            name, _, value = argv.pop(0).partition("=")
            env[name] = value
        assert argv[0] == ".venv/bin/python", line
        return [sys.executable, *argv[1:]], env

    def run(self, line: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        argv, env = self.command(line)
        return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


PEOPLE = ("alice", "bob", "dana", "erin")


def write_catalog(path: Path, shop: Checkout, http: str, repo: Path, work: Path, issuer: str) -> None:
    """A catalog written from the README, docs/catalog.md and docs/identity.md, for the shop's fleet."""
    path.write_text(yaml.safe_dump({
        "people": {"approvers": ["alice", "bob"], "on_call": ["dana"], "dbas": ["erin"],
                   **{name: {"email": f"{name}@shop.example"} for name in PEOPLE}},
        "identity": {"mode": "oidc", "oidc": {"issuer": issuer, "audience": "rollback-orchestrator",
                                              "person_claim": "email"}},
        "policy": {"automation_may_proceed": ["alertmanager:checkout-exploit"], **FAST},
        "services": {"checkout": {
            "ecs": {"cluster": shop_fleet.CLUSTER, "service": shop_fleet.SERVICE, "container": shop_fleet.CONTAINER},
            "endpoints": {"health": f"{http}/checkout/health", "version": f"{http}/checkout/version"},
            "metrics": [{"name": "error_rate", "kind": "error_rate", "namespace": shop_fleet.NAMESPACE,
                         "metric": shop_fleet.METRIC, "dimensions": {"Service": "checkout", "Version": "{version}"},
                         "stat": "Average", "baseline": 0.1, "unit": "%"}]}},
        "databases": {"orders": {
            "dsn_env": "ORDERS_DB_DSN", "rds_instance": shop_fleet.DB,
            "cutover": {"kind": "secret", "secret_id": shop_fleet.DB_SECRET,
                        "restart_services": [{"cluster": shop_fleet.CLUSTER, "service": shop_fleet.SERVICE}]}}},
        "sites": {"storefront": {"bucket": shop_fleet.SITE, "versions_bucket": shop_fleet.RELEASES_BUCKET,
                                 "distribution_id": shop.distribution_id, "url": f"{http}/storefront/"}},
        "functions": {shop_fleet.FUNCTION: {"function_name": shop_fleet.FUNCTION}},
        "stacks": {"edge": {"repository": str(repo), "directory": DIRECTORY, "terraform": TERRAFORM,
                            "env": TF_ENV, "workdir": str(work)}},
        "flag_stores": {"main": {"provider": "appconfig", "application": shop_fleet.APP,
                                 "environment": shop_fleet.ENV, "profile": shop_fleet.FLAGS_PROFILE}},
        "flags": {shop_fleet.KILL_SWITCH: {"store": "main", "kill_switch": True}},
        "configs": {"payments-key": {"kind": "secret", "secret_id": shop_fleet.PAYMENTS_KEY,
                                     "consumers": [{"cluster": shop_fleet.CLUSTER, "service": shop_fleet.SERVICE}]}},
        "alert_rules": [{"name": "checkout-exploit", "match": {"alertname": "CheckoutExploit"}, "kind": "flag",
                         "input": {"flag": "{labels.flag}", "action": "kill_switch"},
                         "severity": {"map": {}, "default": "SEV-4"}}],
    }, sort_keys=False))


@pytest.fixture()
def deployment(dev_env, aws_server, tmp_path) -> Iterator[Deployment]:
    aws_server.faults.reset()
    aws_server.faults.clear()
    shop = shop_fleet.seed(aws_server.endpoint_url)
    endpoints = CheckoutEndpoints(shop)
    repo = build_infra_repo(tmp_path, "change")
    # the shop's identity provider (a stand-in serving discovery, JWKS and a password-less login)
    idp = IssuerServer(SandboxIssuer(load_or_create_key(tmp_path / "idp.pem"),
                                     {name: {"email": f"{name}@shop.example"} for name in PEOPLE}))
    catalog = tmp_path / "catalog.yaml"
    write_catalog(catalog, shop, endpoints.base_url, repo.path, tmp_path / "work", idp.issuer.url)
    # what the README's ROLLBACK_ID_TOKEN_COMMAND stands for (an SSO helper): a token for $ROLLBACK_AS
    helper = tmp_path / "print-id-token"
    helper.write_text(f"#!{sys.executable}\nimport os, httpx\nprint(httpx.post('{idp.issuer.url}/login', "
                      "json={'person': os.environ['ROLLBACK_AS']}).json()['id_token'])\n")
    helper.chmod(0o755)
    exported, _ = readme_production()
    values = {"TEMPORAL_ADDRESS": dev_env.client.service_client.config.target_host, "TEMPORAL_NAMESPACE": "default",
              "ROLLBACK_AWS": "real", "ROLLBACK_CATALOG": str(catalog), "AWS_DEFAULT_REGION": "us-east-1",
              "ROLLBACK_AUTOMATION_KEY": uuid.uuid4().hex + uuid.uuid4().hex, "ROLLBACK_ID_TOKEN_COMMAND": str(helper)}
    assert set(exported) == set(values), f"the README's production block exports {exported}"
    base = {k: v for k, v in os.environ.items() if not k.startswith(("TEMPORAL_", "ROLLBACK_", "AWS_"))}
    env = {**base, **{name: values[name] for name in exported},
           # the AWS endpoint and credentials by boto3's chain (README: "+ credentials"), and this test's own
           # task queue on the shared server
           "AWS_ENDPOINT_URL": aws_server.endpoint_url, "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "ROLLBACK_TASK_QUEUE": f"prod-{uuid.uuid4().hex[:8]}",
           "ROLLBACK_METRICS_PORT": "0", "ROLLBACK_DATA_DIR": str(tmp_path / "data"), "ROLLBACK_LOG_FORMAT": "json",
           "COLUMNS": "250"}
    try:
        yield Deployment(shop=shop, catalog=catalog, env=env, tmp=tmp_path, state=repo.state)
    finally:
        endpoints.stop()
        idp.stop()


@contextmanager
def serving(d: Deployment, command: str, name: str, ready: str) -> Iterator[subprocess.Popen]:
    """A long-running README command (the worker, the receiver) until ``ready`` shows in its log."""
    argv, env = d.command(command)
    log = d.tmp / f"{name}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while ready not in log.read_text(errors="replace"):
            assert proc.poll() is None, f"{name} exited {proc.returncode}:\n{log.read_text()[-4000:]}"
            assert time.monotonic() < deadline, f"{name} not ready:\n{log.read_text()[-4000:]}"
            time.sleep(0.2)
        yield proc
    finally:
        stop_gently(proc)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def final(client: Client, workflow_id: str, timeout: float = 120) -> RollbackStatus:
    result = await asyncio.wait_for(client.get_workflow_handle(workflow_id).result(), timeout)
    return RollbackStatus.model_validate(result)


def secret_current(shop: Checkout, secret_id: str) -> str:
    return shop.client("secretsmanager").get_secret_value(SecretId=secret_id, VersionStage="AWSCURRENT")["SecretString"]


async def test_the_readme_production_section_gives_a_working_worker_cli_and_receiver(deployment, dev_env):
    d, shop = deployment, deployment.shop
    _, commands = readme_production()
    doctor, worker, receiver, start = (next(c for c in commands if key in c) for key in
                                       ("starter.py doctor", "worker.py", "receiver.py", "starter.py start"))

    checked = await asyncio.to_thread(d.run, doctor)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "all checks passed" in checked.stdout and "mode: production" in checked.stdout
    for service in ("sts", "ecs", "cloudwatch", "rds", "secretsmanager", "s3", "cloudfront", "lambda", "appconfig"):
        assert f"ok   AWS {service} " in checked.stdout, checked.stdout

    port = free_port()
    d.env["ROLLBACK_RECEIVER_PORT"] = str(port)  # a free one: other tests run receivers too
    receiver = receiver.replace("<secret>", TOKEN)
    client = dev_env.client
    with serving(d, worker, "worker", '"worker started"'), serving(d, receiver, "receiver", '"receiver listening"'):
        # ServiceRollback: the README's own start command, as printed
        started = await asyncio.to_thread(d.run, start)
        assert started.returncode == 0, started.stdout + started.stderr
        assert "started rollback-service-checkout" in started.stdout
        s = await final(client, "rollback-service-checkout")
        assert (s.phase.value, s.from_version, s.to_version) == ("succeeded", "v3.1.0", "v3.0.0"), s.message
        assert shop_fleet.running_version(shop) == "v3.0.0"

        common = ("--severity", "SEV-2", "--requested-by", "dana", "--reason", "release r42 broke checkout")
        starts = {
            "rollback-database-orders": ("orders", "--kind", "database", "--set", "mode=snapshot_restore",
                                         "--set", f"snapshot_id={shop_fleet.SNAPSHOT}"),
            "rollback-frontend-storefront": ("storefront", "--kind", "frontend", "--set", "strategy=release_sync",
                                             "--set", "to_release=r41"),
            f"rollback-lambda-{shop_fleet.FUNCTION}": (shop_fleet.FUNCTION, "--kind", "lambda"),
            "rollback-infra-edge": ("edge", "--kind", "infra"),
        }
        # the secret's consumers include checkout, which the database cutover redeploys: one at a time
        # (issue 10: two rollbacks never act on one resource at once), so the secret goes after
        results = await asyncio.gather(*(asyncio.to_thread(
            d.run, shlex.join([".venv/bin/python", "starter.py", "start", *args, *common])) for args in starts.values()))
        for result in results:
            assert result.returncode == 0, result.stdout + result.stderr
        # the receiver: an Alertmanager alert starts the kill switch, which the catalog lists as automation
        labels = {"alertname": "CheckoutExploit", "flag": shop_fleet.KILL_SWITCH}
        answer = httpx.post(f"http://127.0.0.1:{port}/alerts/alertmanager", timeout=30,
                            headers={"Authorization": f"Bearer {TOKEN}"},
                            json={"version": "4", "groupKey": "{}:{}", "status": "firing", "receiver": "rollbacks",
                                  "alerts": [{"status": "firing", "labels": labels,
                                              "annotations": {"summary": "card testing on checkout"}}]})
        assert answer.status_code == 200 and answer.json()["started"] == 1, answer.text
        # the snapshot restore also needs a database administrator: erin approves from the CLI
        approved = await asyncio.to_thread(d.run, ".venv/bin/python starter.py approve orders --kind database "
                                                  "--as erin --comment 'snapshot checked'")
        assert approved.returncode == 0 and "counted" in approved.stdout, approved.stdout + approved.stderr

        done = dict(zip([*starts, f"rollback-flag-{shop_fleet.KILL_SWITCH}"], await asyncio.gather(
            *(final(client, wid) for wid in [*starts, f"rollback-flag-{shop_fleet.KILL_SWITCH}"]))))
        assert {wid: s.phase.value for wid, s in done.items()} == {wid: "succeeded" for wid in done}, \
            {wid: s.message for wid, s in done.items()}
        status = await asyncio.to_thread(d.run, ".venv/bin/python starter.py status orders --kind database --json")
        assert status.returncode == 0 and json.loads(status.stdout)["phase"] == "succeeded"
        started = await asyncio.to_thread(d.run, shlex.join([".venv/bin/python", "starter.py", "start", "payments-key",
                                                             "--kind", "config", *common]))
        assert started.returncode == 0, started.stdout + started.stderr
        secret = await final(client, "rollback-config-payments-key")
        assert secret.phase.value == "succeeded", secret.message

    # each change verified where it lives, with boto3 / the files, not with the workflow's word
    rds = shop.client("rds").describe_db_instances(DBInstanceIdentifier=f"{shop_fleet.DB}-rollback")["DBInstances"][0]
    assert json.loads(secret_current(shop, shop_fleet.DB_SECRET))["host"] == rds["Endpoint"]["Address"]
    index = shop.client("s3").get_object(Bucket=shop_fleet.SITE, Key="index.html")["Body"].read().decode()
    assert index == shop_fleet.index_html("r41")
    alias = shop.client("lambda").get_alias(FunctionName=shop_fleet.FUNCTION, Name="production")
    assert alias["FunctionVersion"] == "2"
    resources = {r["name"]: r["instances"][0]["attributes"]["input"]["value"]
                 for r in json.loads(d.state.read_text())["resources"]}
    assert resources == {"a": "alpha", "b": "v1"}
    assert secret_current(shop, shop_fleet.PAYMENTS_KEY) == "payments-key-old"
    flags = done[f"rollback-flag-{shop_fleet.KILL_SWITCH}"]
    assert flags.requested_by == "alertmanager:checkout-exploit" and flags.severity == "SEV-4"
    assert (flags.requester_proof.kind, flags.requester_proof.issuer) == ("automation", "receiver")
    # people proved who they are with the shop's identity provider, through ROLLBACK_ID_TOKEN_COMMAND
    orders = done["rollback-database-orders"]
    assert [(r.approver, r.proof.kind, r.proof.subject) for r in orders.approvals.received] == [
        ("dana", "oidc", "dana@shop.example"), ("erin", "oidc", "erin@shop.example")]


# --- each preflight failure, once: a real process refuses to start with one paragraph per problem ---

def refused(result: subprocess.CompletedProcess[str], code: int, who: str) -> list[str]:
    assert result.returncode == code, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    head, *paragraphs = result.stderr.strip().split("\n\n")
    assert head.startswith(f"{who} cannot start: {len(paragraphs)} problem"), result.stderr
    return paragraphs


def test_unreachable_temporal_an_empty_secret_and_only_aws_region(deployment):
    """The issue's worker: AWS_REGION alone (boto3 reads AWS_DEFAULT_REGION), an empty Slack URL (every
    notification failed), a wrong port; all three said at once."""
    d = deployment
    env = {k: v for k, v in d.env.items() if k != "AWS_DEFAULT_REGION"}
    d.env = {**env, "AWS_REGION": "us-east-1", "TEMPORAL_ADDRESS": "127.0.0.1:1", "ROLLBACK_SLACK_WEBHOOK_URL": ""}
    problems = refused(d.run(".venv/bin/python worker.py"), 3, "the rollback worker")
    assert problems[0].startswith("[secrets] ROLLBACK_SLACK_WEBHOOK_URL is set but empty.")
    assert problems[1].startswith("[Temporal] cannot reach Temporal at 127.0.0.1:1 (namespace default): ")
    assert "the port is the gRPC port (7233 by default" in problems[1]
    assert problems[2] == ("[AWS] no AWS region: AWS_REGION=us-east-1 is set, but boto3 reads AWS_DEFAULT_REGION; "
                           "set AWS_DEFAULT_REGION=us-east-1. Every AWS step would fail; see docs/production.md.")


def test_no_aws_credentials(deployment):
    d = deployment
    d.env = {k: v for k, v in d.env.items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    d.env.update(AWS_CONFIG_FILE=str(d.tmp / "none"), AWS_SHARED_CREDENTIALS_FILE=str(d.tmp / "none"),
                 AWS_EC2_METADATA_DISABLED="true")  # nothing anywhere in the chain
    problems = refused(d.run(".venv/bin/python worker.py"), 2, "the rollback worker")
    assert problems == ["[AWS] no AWS credentials found; give the worker credentials by the standard chain: "
                        "AWS_ACCESS_KEY_ID + AWS_SECRET_ACCESS_KEY, AWS_PROFILE with the worker's ~/.aws mounted, "
                        "or an instance/task role. Every AWS step would fail; see docs/production.md."]


def test_a_missing_namespace_and_a_missing_catalog(deployment):
    d = deployment
    d.env.update(TEMPORAL_NAMESPACE="shop-prod", ROLLBACK_CATALOG=str(d.tmp / "nope.yaml"))
    problems = refused(d.run(".venv/bin/python worker.py"), 2, "the rollback worker")
    assert problems[0] == (f"[catalog] {d.tmp / 'nope.yaml'}: catalog file not found; set ROLLBACK_CATALOG to "
                           "your catalog.yaml")
    address = d.env["TEMPORAL_ADDRESS"]
    assert problems[1] == (f"[namespace] namespace 'shop-prod' does not exist on {address}. Create it ('temporal "
                           f"operator namespace create --namespace shop-prod --address {address}') or set "
                           "TEMPORAL_NAMESPACE to an existing one.")


def test_an_invalid_catalog(deployment):
    d = deployment
    data = yaml.safe_load(d.catalog.read_text())
    data["alert_rules"][0]["kind"] = "flags"  # passed start-up validation before
    d.catalog.write_text(yaml.safe_dump(data))
    problems = refused(d.run(".venv/bin/python worker.py"), 2, "the rollback worker")
    assert problems == [f"[catalog] {d.catalog}: 1 problem(s) in the catalog (reference: docs/catalog.md):\n"
                        "  - alert_rules.0.kind: 'flags' is not a procedure; use one of: service, database, frontend, "
                        "lambda, infra, flag, config, release [docs/catalog.md#alertrule]"]


def test_aws_access_denied_and_a_missing_terraform(deployment, aws_server):
    d = deployment
    data = yaml.safe_load(d.catalog.read_text())
    data["stacks"]["edge"]["terraform"] = ["no-such-terraform"]
    d.catalog.write_text(yaml.safe_dump(data))
    aws_server.faults.inject("DescribeServices", "denied")
    problems = refused(d.run(".venv/bin/python worker.py"), 2, "the rollback worker")
    assert problems[0].startswith("[AWS] ecs describe-services shop-prod/checkout-svc (region us-east-1, endpoint "
                                  f"{aws_server.endpoint_url}) was denied: AccessDeniedException: ")
    assert problems[0].endswith("To fix: grant the worker's IAM role ecs:DescribeServices (and what "
                                "docs/production.md lists).")
    assert problems[1].startswith("[tools] no-such-terraform (stacks.edge.terraform) is not on the worker's PATH, so "
                                  "InfraRollback cannot run.")
    assert len(problems) == 2


async def test_search_attributes_the_server_refuses_print_the_command(deployment, dev_env):
    """A namespace whose Keyword slots are taken: the server refuses to register ours (as a cluster that
    does not let workers administer it would); the worker prints the command for a Temporal admin."""
    d, client = deployment, dev_env.client
    namespace = f"full-{uuid.uuid4().hex[:6]}"
    await client.workflow_service.register_namespace(RegisterNamespaceRequest(
        namespace=namespace, workflow_execution_retention_period=Duration(seconds=86400)))
    for i in range(10):
        for _ in range(50):  # a new namespace takes a moment to reach every service
            try:
                await client.operator_service.add_search_attributes(AddSearchAttributesRequest(
                    namespace=namespace, search_attributes={f"Other{i}": IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD}))
                break
            except RPCError:
                await asyncio.sleep(0.2)
    d.env["TEMPORAL_NAMESPACE"] = namespace
    problems = refused(await asyncio.to_thread(d.run, ".venv/bin/python worker.py"), 2, "the rollback worker")
    address = d.env["TEMPORAL_ADDRESS"]
    assert problems == [
        f"[search attributes] the workflows need the Keyword search attributes RollbackKind, RollbackTarget, "
        f"RollbackSeverity, RollbackPhase in namespace {namespace!r}, and registering them was refused "
        "(INVALID_ARGUMENT: Unable to create search attributes: cannot have more than 10 search attribute of type "
        f"Keyword.). Have a Temporal admin run: temporal operator search-attribute create --address {address} "
        f"--namespace {namespace} --name RollbackKind --type Keyword --name RollbackTarget --type Keyword --name "
        "RollbackSeverity --type Keyword --name RollbackPhase --type Keyword (Temporal Cloud: add them to the "
        "namespace in the Cloud UI or with tcld), then start again."]


def test_the_receiver_without_a_secret(deployment):
    """The compose file passed both secrets empty: the receiver started unauthenticated."""
    d = deployment
    d.env.update(ROLLBACK_RECEIVER_TOKEN="", ROLLBACK_RECEIVER_HMAC_SECRET="")
    problems = refused(d.run(".venv/bin/python receiver.py"), 2, "the alert receiver")
    assert [p.split("]")[0] + "]" for p in problems] == ["[secrets]", "[secrets]", "[receiver authentication]"]
    assert problems[2].startswith("[receiver authentication] neither ROLLBACK_RECEIVER_TOKEN nor "
                                  "ROLLBACK_RECEIVER_HMAC_SECRET has a value: set ROLLBACK_RECEIVER_TOKEN (bearer "
                                  "token) or ROLLBACK_RECEIVER_HMAC_SECRET (HMAC-SHA256 signatures), or both")
