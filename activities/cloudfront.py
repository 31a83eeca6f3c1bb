"""CloudFront: cache invalidation after a frontend rollback."""

from __future__ import annotations

from pydantic import BaseModel
from temporalio import activity

from activities.aws import AwsClients, aws_call


class InvalidationRequest(BaseModel):
    distribution_id: str
    paths: list[str]
    caller_reference: str  # the same reference on a retry finds the same invalidation


class InvalidationRef(BaseModel):
    distribution_id: str
    invalidation_id: str


class CloudFrontActivities:
    def __init__(self, aws: AwsClients) -> None:
        self._aws = aws

    @activity.defn
    def create_invalidation(self, req: InvalidationRequest) -> str:
        """Create it once: an invalidation with our caller reference already there is returned."""
        cf = self._aws("cloudfront")
        with aws_call(f"cloudfront list-invalidations {req.distribution_id}"):
            items = cf.list_invalidations(DistributionId=req.distribution_id).get(
                "InvalidationList", {}).get("Items", []) or []
            for item in items[:50]:
                inv = cf.get_invalidation(DistributionId=req.distribution_id, Id=item["Id"])["Invalidation"]
                if inv["InvalidationBatch"]["CallerReference"] == req.caller_reference:
                    return inv["Id"]
        with aws_call(f"cloudfront create-invalidation {req.distribution_id}"):
            resp = self._aws.once("cloudfront").create_invalidation(DistributionId=req.distribution_id, InvalidationBatch={
                "Paths": {"Quantity": len(req.paths), "Items": req.paths},
                "CallerReference": req.caller_reference})
        return resp["Invalidation"]["Id"]

    @activity.defn
    def invalidation_done(self, ref: InvalidationRef) -> bool:
        with aws_call(f"cloudfront get-invalidation {ref.invalidation_id}"):
            inv = self._aws("cloudfront").get_invalidation(DistributionId=ref.distribution_id,
                                                           Id=ref.invalidation_id)["Invalidation"]
        return inv["Status"].lower() == "completed"  # moto says COMPLETED, AWS Completed
