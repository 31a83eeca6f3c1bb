"""TEST FLEET, not product code: a shop's own fleet, deliberately NOT the sandbox's, for the production-mode
test (tests/test_production.py). Seeded into moto (behind tests/support/moto_faults.py) with boto3 only:

- ECS cluster ``shop-prod``, service ``checkout-svc`` of family ``checkout``: revision 1 = v3.0.0,
  revision 2 = v3.1.0 (deployed, the bad one); CloudWatch ``Shop/Checkout`` ErrorRate per version.
- RDS ``orders-db`` with the manual snapshot ``orders-pre-release``; its connection secret ``shop/prod/orders-db``.
- Bucket ``shop-storefront`` (versioned; releases r41 then r42 live) and ``shop-storefront-releases`` with
  ``r41/`` and ``r42/``; a CloudFront distribution in front.
- Lambda ``checkout-pricing``, versions 1..3, alias ``production`` on 3.
- AppConfig application ``shop``, environment ``prod``, feature flags ``shop-flags`` with the kill switch
  ``checkout_disabled`` (off), deployed.
- Secret ``shop/prod/payments-key``: two versions, AWSCURRENT the new one.

``CheckoutEndpoints`` is a STAND-IN for the shop's public endpoints (what a real deployment's load balancer
would answer): ``/checkout/health``, ``/checkout/version`` (read live from moto's ECS) and ``/storefront/``
(the live bucket's index.html).
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from sandbox.fleet import client
from sandbox.lambda_fleet import ensure_function, use_simple_lambda
from sandbox.metrics import put_datapoints

CLUSTER, FAMILY, SERVICE, CONTAINER = "shop-prod", "checkout", "checkout-svc", "checkout"
VERSIONS = {1: "v3.0.0", 2: "v3.1.0"}  # revision -> image tag; 2 is deployed
NAMESPACE, METRIC = "Shop/Checkout", "ErrorRate"
ERROR_RATE = {"v3.0.0": 0.1, "v3.1.0": 3.0}  # percent
DB, SNAPSHOT, DB_SECRET = "orders-db", "orders-pre-release", "shop/prod/orders-db"
SITE, RELEASES_BUCKET, RELEASES = "shop-storefront", "shop-storefront-releases", ("r41", "r42")
FUNCTION = "checkout-pricing"
APP, ENV, FLAGS_PROFILE, KILL_SWITCH = "shop", "prod", "shop-flags", "checkout_disabled"
PAYMENTS_KEY = "shop/prod/payments-key"
FLAGS = json.dumps({"version": "1", "flags": {KILL_SWITCH: {"name": "Checkout kill switch"}},
                    "values": {KILL_SWITCH: {"enabled": False}}}, indent=2)


def index_html(release: str) -> str:
    return f"<!doctype html><title>shop</title><h1>storefront {release}</h1>"


@dataclass
class Checkout:
    endpoint_url: str
    region: str
    distribution_id: str = ""
    db_host: str = ""

    def client(self, service: str) -> Any:
        return client(service, self.endpoint_url, self.region)


def seed(endpoint_url: str, region: str = "us-east-1") -> Checkout:
    shop = Checkout(endpoint_url, region)
    ecs = shop.client("ecs")
    ecs.create_cluster(clusterName=CLUSTER)
    arns = [ecs.register_task_definition(family=FAMILY, containerDefinitions=[{
        "name": CONTAINER, "image": f"shop/checkout:{VERSIONS[rev]}", "memory": 512, "essential": True}])
        ["taskDefinition"]["taskDefinitionArn"] for rev in sorted(VERSIONS)]
    ecs.create_service(cluster=CLUSTER, serviceName=SERVICE, taskDefinition=arns[-1], desiredCount=2)
    emit_metrics(shop)

    rds, sm = shop.client("rds"), shop.client("secretsmanager")
    db = rds.create_db_instance(DBInstanceIdentifier=DB, Engine="postgres", DBInstanceClass="db.t3.medium",
                                AllocatedStorage=20, MasterUsername="shop", MasterUserPassword="test-only")
    shop.db_host = db["DBInstance"]["Endpoint"]["Address"]
    rds.create_db_snapshot(DBSnapshotIdentifier=SNAPSHOT, DBInstanceIdentifier=DB)
    sm.create_secret(Name=DB_SECRET, SecretString=json.dumps({"host": shop.db_host, "port": 5432}))
    sm.create_secret(Name=PAYMENTS_KEY, SecretString="payments-key-old")
    sm.put_secret_value(SecretId=PAYMENTS_KEY, SecretString="payments-key-new")

    s3, cf = shop.client("s3"), shop.client("cloudfront")
    s3.create_bucket(Bucket=SITE)
    s3.put_bucket_versioning(Bucket=SITE, VersioningConfiguration={"Status": "Enabled"})
    s3.create_bucket(Bucket=RELEASES_BUCKET)
    for release in RELEASES:
        s3.put_object(Bucket=SITE, Key="index.html", Body=index_html(release).encode(), ContentType="text/html")
        s3.put_object(Bucket=RELEASES_BUCKET, Key=f"{release}/index.html", Body=index_html(release).encode(),
                      ContentType="text/html")
    shop.distribution_id = cf.create_distribution(DistributionConfig={
        "CallerReference": SITE, "Comment": SITE, "Enabled": True,
        "Origins": {"Quantity": 1, "Items": [{"Id": "s3", "DomainName": f"{SITE}.s3.amazonaws.com",
                                              "S3OriginConfig": {"OriginAccessIdentity": ""}}]},
        "DefaultCacheBehavior": {"TargetOriginId": "s3", "ViewerProtocolPolicy": "redirect-to-https", "MinTTL": 0,
                                 "ForwardedValues": {"QueryString": False, "Cookies": {"Forward": "none"}},
                                 "TrustedSigners": {"Enabled": False, "Quantity": 0}}})["Distribution"]["Id"]

    use_simple_lambda(endpoint_url)
    ensure_function(shop.client("lambda"), shop.client("iam"), FUNCTION, versions=3)

    ac = shop.client("appconfig")
    app = ac.create_application(Name=APP)["Id"]
    env = ac.create_environment(ApplicationId=app, Name=ENV)["Id"]
    profile = ac.create_configuration_profile(ApplicationId=app, Name=FLAGS_PROFILE, LocationUri="hosted",
                                              Type="AWS.AppConfig.FeatureFlags")["Id"]
    ac.create_hosted_configuration_version(ApplicationId=app, ConfigurationProfileId=profile,
                                           Content=FLAGS.encode(), ContentType="application/json")
    number = ac.start_deployment(ApplicationId=app, EnvironmentId=env, DeploymentStrategyId="AppConfig.AllAtOnce",
                                 ConfigurationProfileId=profile, ConfigurationVersion="1")["DeploymentNumber"]
    deadline = time.monotonic() + 30
    while ac.get_deployment(ApplicationId=app, EnvironmentId=env, DeploymentNumber=number)["State"] != "COMPLETE":
        assert time.monotonic() < deadline, "the seed deployment did not complete"
        time.sleep(0.2)
    return shop


def emit_metrics(shop: Checkout, minutes: int = 70) -> None:
    """A datapoint a minute per version for the last ``minutes`` (as CloudWatch would hold): the
    checks need at least policy.min_samples in their window and a measured baseline before it."""
    now = datetime.now(timezone.utc).replace(second=0, microsecond=0)
    data = [{"MetricName": METRIC, "Dimensions": [{"Name": "Service", "Value": "checkout"},
                                                  {"Name": "Version", "Value": version}],
             "Timestamp": now - timedelta(minutes=m), "Value": value, "Unit": "Percent"}
            for m in range(minutes, -1, -1) for version, value in ERROR_RATE.items()]
    put_datapoints(shop.client("cloudwatch"), NAMESPACE, data)


def running_version(shop: Checkout) -> str:
    ecs = shop.client("ecs")
    svc = ecs.describe_services(cluster=CLUSTER, services=[SERVICE])["services"][0]
    td = ecs.describe_task_definition(taskDefinition=svc["taskDefinition"])["taskDefinition"]
    return td["containerDefinitions"][0]["image"].rsplit(":", 1)[1]


class CheckoutEndpoints:
    """STAND-IN for the shop's public endpoints, answered from moto's live state."""

    def __init__(self, shop: Checkout) -> None:
        self.shop = shop
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                if self.path.startswith("/checkout/health"):
                    body, ctype = json.dumps({"status": "ok"}).encode(), "application/json"
                elif self.path.startswith("/checkout/version"):
                    body = json.dumps({"version": running_version(outer.shop)}).encode()
                    ctype = "application/json"
                elif self.path.startswith("/storefront/"):
                    body = outer.shop.client("s3").get_object(Bucket=SITE, Key="index.html")["Body"].read()
                    ctype = "text/html"
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
