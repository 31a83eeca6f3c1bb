"""The local AWS sandbox: the fleet is the runbook's incident, and it reacts to a rollback.

One sandbox (moto + endpoints) on free ports for the module; tests that change it put it back.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from common.catalog import Catalog, load_catalog
from sandbox import Fleet, Sandbox, SandboxInfo, aws_env
from sandbox.catalog import DEFAULT_HTTP_BASE, STATIC_CATALOG, full_catalog_dict
from sandbox.fleet import (BAD_VERSION, BLUE_SERVICE, CLUSTER, DB_INSTANCE, DB_SECRET, DB_SNAPSHOT,
                           DESIRED_COUNT, FAMILY, GOOD_VERSION, GREEN_SERVICE, SERVICE, client,
                           image_tag, seed)
from sandbox.appconfig_fleet import API_KEY_SECRET
from sandbox.metrics import emit_once


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxInfo]:
    """One sandbox for the module (moto's state is per process, so never two at once).

    Ports 0: the OS picks free ones. A long interval: only start()'s own emission runs here. No
    Prometheus (tests/test_prometheus.py runs the sandbox's own): latency_p95 is CloudWatch's.
    Teardown checks that stop() is idempotent and really closes both ports.
    """
    box = Sandbox(port=0, http_port=0, data_dir=tmp_path_factory.mktemp("data"), metrics_interval=600,
                  prometheus_port=None)
    info = box.start()
    yield info
    box.stop()
    box.stop()
    for url in (f"{info.http_base}/api/health", f"{info.endpoint_url}/moto-api/"):
        with pytest.raises(httpx.TransportError):
            httpx.get(url, timeout=2)


@pytest.fixture(scope="module")
def ecs(sandbox: SandboxInfo) -> Any:
    return client("ecs", sandbox.endpoint_url)


def _get(sandbox: SandboxInfo, path: str) -> dict[str, Any]:
    resp = httpx.get(f"{sandbox.http_base}{path}", timeout=10)
    assert resp.status_code == 200, resp.text
    return resp.json()


def _deploy(ecs: Any, service: str, revision: int) -> None:
    # By full ARN, as the product does: moto stores whatever string update_service was given
    # ("api-service:42" stays that), where real ECS answers with the ARN.
    arn = ecs.describe_task_definition(taskDefinition=f"{FAMILY}:{revision}")["taskDefinition"][
        "taskDefinitionArn"]
    ecs.update_service(cluster=CLUSTER, service=service, taskDefinition=arn)


def _set_weights(sandbox: SandboxInfo, blue: int, green: int) -> None:
    fleet = sandbox.fleet
    client("elbv2", sandbox.endpoint_url).modify_listener(
        ListenerArn=fleet.listener_arn,
        DefaultActions=[{"Type": "forward", "ForwardConfig": {"TargetGroups": [
            {"TargetGroupArn": fleet.blue_target_group_arn, "Weight": blue},
            {"TargetGroupArn": fleet.green_target_group_arn, "Weight": green},
        ]}}])


def test_api_service_runs_the_bad_release_and_is_settled(sandbox: SandboxInfo, ecs: Any) -> None:
    svc = ecs.describe_services(cluster=CLUSTER, services=[SERVICE])["services"][0]
    td = ecs.describe_task_definition(taskDefinition=svc["taskDefinition"])["taskDefinition"]
    assert (td["revision"], image_tag(td)) == (43, BAD_VERSION)
    assert svc["desiredCount"] == svc["runningCount"] == DESIRED_COUNT
    previous = ecs.describe_task_definition(taskDefinition=f"{FAMILY}:42")["taskDefinition"]
    assert image_tag(previous) == GOOD_VERSION


def test_endpoints_answer_and_version_follows_a_rollback(sandbox: SandboxInfo, ecs: Any) -> None:
    assert _get(sandbox, "/api/health") == {"status": "ok"}
    assert _get(sandbox, "/api/ready") == {"ready": True}
    assert _get(sandbox, "/api/search")["results"]
    assert _get(sandbox, "/api/version")["version"] == BAD_VERSION
    _deploy(ecs, SERVICE, 42)
    try:
        answer = _get(sandbox, "/api/version")
        assert (answer["version"], answer["revision"]) == (GOOD_VERSION, 42)
    finally:
        _deploy(ecs, SERVICE, 43)
    assert httpx.get(f"{sandbox.http_base}/nope/version").status_code == 404


def test_blue_green_listener_starts_all_blue_and_version_follows_weights(
        sandbox: SandboxInfo, ecs: Any) -> None:
    listener = client("elbv2", sandbox.endpoint_url).describe_listeners(
        ListenerArns=[sandbox.fleet.listener_arn])["Listeners"][0]
    groups = listener["DefaultActions"][0]["ForwardConfig"]["TargetGroups"]
    assert {g["TargetGroupArn"]: g["Weight"] for g in groups} == {
        sandbox.fleet.blue_target_group_arn: 100, sandbox.fleet.green_target_group_arn: 0}
    assert _get(sandbox, "/api-bg/version")["service"] == BLUE_SERVICE

    _deploy(ecs, GREEN_SERVICE, 42)  # a gradual rollback: green gets the good release ...
    _set_weights(sandbox, blue=10, green=90)  # ... and most of the traffic
    try:
        answer = _get(sandbox, "/api-bg/version")
        assert (answer["service"], answer["version"]) == (GREEN_SERVICE, GOOD_VERSION)
    finally:
        _set_weights(sandbox, blue=100, green=0)
        _deploy(ecs, GREEN_SERVICE, 43)


def _average(sandbox: SandboxInfo, metric: str, version: str) -> float:
    """Read like the product does (activities/metrics.py): Average over the last 5 minutes."""
    end = datetime.now(timezone.utc)
    resp = client("cloudwatch", sandbox.endpoint_url).get_metric_data(
        MetricDataQueries=[{"Id": "m", "ReturnData": True, "MetricStat": {
            "Metric": {"Namespace": "Rastup/API", "MetricName": metric, "Dimensions": [
                {"Name": "Service", "Value": "api"}, {"Name": "Version", "Value": version}]},
            "Period": 300, "Stat": "Average"}}],
        StartTime=end - timedelta(minutes=5), EndTime=end + timedelta(minutes=1))
    values = resp["MetricDataResults"][0]["Values"]
    assert values, f"no {metric} datapoints for {version}"
    return sum(values) / len(values)


def test_metrics_show_the_incident_only_for_the_bad_release(sandbox: SandboxInfo) -> None:
    versions = emit_once(sandbox.endpoint_url)
    assert len(versions) == 43 and versions[-2:] == [GOOD_VERSION, BAD_VERSION]
    assert _average(sandbox, "ErrorRate", BAD_VERSION) == pytest.approx(2.4)
    assert _average(sandbox, "ErrorRate", GOOD_VERSION) == pytest.approx(0.2)
    assert _average(sandbox, "Latency", BAD_VERSION) == pytest.approx(420)
    assert _average(sandbox, "Latency", GOOD_VERSION) == pytest.approx(180)
    assert _average(sandbox, "ErrorRate", "v1.1.7") == pytest.approx(0.2)


def test_rendered_catalog_validates_and_names_this_fleet(sandbox: SandboxInfo) -> None:
    catalog = load_catalog(sandbox.catalog_path)
    assert set(catalog.services) == {"api", "api-bg"}
    db = catalog.database(DB_INSTANCE)
    assert db.rds_instance == DB_INSTANCE and db.app_service == "api"
    assert db.cutover is not None and db.cutover.secret_id == DB_SECRET
    assert db.migrations is None and not db.integrity_checks  # no PostgreSQL behind moto
    assert db.smoke_checks[0].url == f"{sandbox.http_base}/api/health"
    assert "no PostgreSQL" in sandbox.catalog_path.read_text()  # the comment says why
    bg = catalog.service("api-bg").blue_green
    assert bg is not None and bg.listener_arn == sandbox.fleet.listener_arn
    assert bg.green.ecs.service == GREEN_SERVICE
    assert catalog.service("api").endpoints.version == f"{sandbox.http_base}/api/version"
    assert catalog.people.on_call == ["dana"]
    # without Prometheus, latency_p95 is CloudWatch's Average, and the catalog and the banner say why
    latency = next(m for m in catalog.service("api").metrics if m.name == "latency_p95")
    assert (latency.provider, latency.stat, catalog.prometheus) == ("cloudwatch", "Average", None)
    assert "moto cannot compute percentiles" in sandbox.catalog_path.read_text()
    assert sandbox.latency_source == "CloudWatch Average, not a p95 (no Prometheus: ROLLBACK_SANDBOX_PROMETHEUS_PORT is off)"


def test_static_catalog_is_current_and_valid() -> None:
    """sandbox/catalog.yaml is generated: regenerate with python -m sandbox --write-static-catalog."""
    on_disk = yaml.safe_load(STATIC_CATALOG.read_text())
    assert on_disk == full_catalog_dict(DEFAULT_HTTP_BASE, None)
    catalog = Catalog.model_validate(on_disk)
    assert set(catalog.services) == {"api"} and set(catalog.databases) == {DB_INSTANCE}


def test_seeding_twice_changes_nothing(sandbox: SandboxInfo, ecs: Any) -> None:
    def inventory() -> tuple[int, ...]:
        elbv2, ec2 = client("elbv2", sandbox.endpoint_url), client("ec2", sandbox.endpoint_url)
        albs = elbv2.describe_load_balancers()["LoadBalancers"]
        return (len(ecs.list_task_definitions(familyPrefix=FAMILY)["taskDefinitionArns"]),
                len(ecs.list_services(cluster=CLUSTER)["serviceArns"]),
                len(ecs.list_clusters()["clusterArns"]),
                len(albs), len(elbv2.describe_target_groups()["TargetGroups"]),
                len(elbv2.describe_listeners(LoadBalancerArn=albs[0]["LoadBalancerArn"])["Listeners"]),
                len(ec2.describe_vpcs()["Vpcs"]))

    def databases() -> tuple[list, list, list]:
        rds, sm = client("rds", sandbox.endpoint_url), client("secretsmanager", sandbox.endpoint_url)
        return ([i["DBInstanceIdentifier"] for i in rds.describe_db_instances()["DBInstances"]],
                sorted(s["DBSnapshotIdentifier"] for s in rds.describe_db_snapshots()["DBSnapshots"]),
                [(s["Name"], [v["VersionId"] for v in sm.list_secret_version_ids(SecretId=s["Name"])[
                    "Versions"]]) for s in sm.list_secrets()["SecretList"]])

    before, dbs_before = inventory(), databases()
    assert before[:6] == (43, 3, 1, 1, 2, 1)
    assert dbs_before[0] == [DB_INSTANCE] and DB_SNAPSHOT in dbs_before[1]
    assert sorted(name for name, _ in dbs_before[2]) == sorted([DB_SECRET, API_KEY_SECRET])
    again: Fleet = seed(sandbox.endpoint_url)
    assert again == sandbox.fleet
    assert inventory() == before
    assert databases() == dbs_before  # same instance, snapshots, secret (and secret version)


def test_aws_env_points_boto3_at_the_sandbox(sandbox: SandboxInfo, monkeypatch: pytest.MonkeyPatch) -> None:
    import boto3

    for key, value in aws_env(sandbox.endpoint_url).items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    services = boto3.client("ecs").describe_services(cluster=CLUSTER, services=[SERVICE])["services"]
    assert services[0]["serviceName"] == SERVICE


def test_database_instance_and_its_manual_pre_deploy_snapshot(sandbox: SandboxInfo) -> None:
    rds = client("rds", sandbox.endpoint_url)
    instance = rds.describe_db_instances(DBInstanceIdentifier=DB_INSTANCE)["DBInstances"][0]
    assert (instance["Engine"], instance["DBInstanceClass"], instance["MultiAZ"]) == (
        "postgres", "db.r6g.2xlarge", True)
    assert instance["DBInstanceStatus"] == "available"
    assert instance["Endpoint"] == {"Address": sandbox.fleet.db_endpoint, "Port": sandbox.fleet.db_port}

    snapshots = rds.describe_db_snapshots(DBInstanceIdentifier=DB_INSTANCE)["DBSnapshots"]
    by_type = {s["DBSnapshotIdentifier"]: s["SnapshotType"] for s in snapshots}
    assert by_type[DB_SNAPSHOT] == "manual"
    # moto also takes an automated one of its own when it creates the instance, as RDS does.
    assert [t for n, t in by_type.items() if n != DB_SNAPSHOT] == ["automated"]
    snapshot = next(s for s in snapshots if s["DBSnapshotIdentifier"] == DB_SNAPSHOT)
    assert snapshot["Status"] == "available"
    # moto stamps the time of seeding, whatever the name says (2025-11-18 14:00).
    assert snapshot["SnapshotCreateTime"] >= instance["InstanceCreateTime"]


def test_connection_secret_points_at_the_database_instance(sandbox: SandboxInfo) -> None:
    secret = client("secretsmanager", sandbox.endpoint_url).get_secret_value(
        SecretId=DB_SECRET, VersionStage="AWSCURRENT")
    value = json.loads(secret["SecretString"])
    assert value == {"host": sandbox.fleet.db_endpoint, "port": 5432, "username": "rastup",
                     "password": "sandbox-only", "dbname": "rastup"}
    assert value["host"].startswith(f"{DB_INSTANCE}.")


def test_a_busy_moto_port_fails_fast(tmp_path: Path) -> None:
    """ThreadedMotoServer alone would hang on a busy port (e.g. LocalStack on 4566)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(OSError, match="in use"):
            Sandbox(port=taken.getsockname()[1], http_port=0, data_dir=tmp_path).start()
