"""Route53: a CNAME pointing the application's database name at another endpoint."""

from __future__ import annotations

from pydantic import BaseModel
from temporalio import activity

from activities.aws import AwsClients, aws_call


class Cname(BaseModel):
    hosted_zone_id: str
    name: str
    target: str
    ttl: int = 60


class Route53Activities:
    def __init__(self, aws: AwsClients) -> None:
        self._aws = aws

    @activity.defn
    def upsert_cname(self, c: Cname) -> bool:
        """UPSERT the record. Idempotent: False when it already points at the target."""
        r53 = self._aws("route53")
        name = c.name.rstrip(".") + "."
        with aws_call(f"route53 list-resource-record-sets {c.hosted_zone_id}"):
            sets = r53.list_resource_record_sets(HostedZoneId=c.hosted_zone_id, StartRecordName=name,
                                                 StartRecordType="CNAME", MaxItems="1")["ResourceRecordSets"]
        if sets and sets[0]["Name"] == name and sets[0]["Type"] == "CNAME" and \
                [r["Value"] for r in sets[0].get("ResourceRecords", [])] == [c.target]:
            return False
        with aws_call(f"route53 change-resource-record-sets {name}"):
            r53.change_resource_record_sets(HostedZoneId=c.hosted_zone_id, ChangeBatch={"Changes": [{
                "Action": "UPSERT",
                "ResourceRecordSet": {"Name": name, "Type": "CNAME", "TTL": c.ttl,
                                      "ResourceRecords": [{"Value": c.target}]}}]})
        return True
