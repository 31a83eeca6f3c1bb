"""ALB listener weights for blue/green services (runbook: --rollout-percentage)."""

from __future__ import annotations

from pydantic import BaseModel
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.aws import AwsClients, aws_call


class Weights(BaseModel):
    listener_arn: str
    weights: dict[str, int]  # target group ARN -> weight


def _forward_weights(listener: dict) -> dict[str, int]:
    for action in listener.get("DefaultActions", []):
        if action.get("Type") != "forward":
            continue
        groups = (action.get("ForwardConfig") or {}).get("TargetGroups")
        if groups:
            return {g["TargetGroupArn"]: int(g.get("Weight", 1)) for g in groups}
        if action.get("TargetGroupArn"):
            return {action["TargetGroupArn"]: 1}
    raise ApplicationError(f"listener {listener.get('ListenerArn')} has no forward action",
                           non_retryable=True, type="InvalidListener")


class Elbv2Activities:
    def __init__(self, aws: AwsClients) -> None:
        self._aws = aws

    def _listener(self, arn: str) -> dict:
        with aws_call(f"elbv2 describe-listeners {arn}"):
            listeners = self._aws("elbv2").describe_listeners(ListenerArns=[arn])["Listeners"]
        return listeners[0]

    @activity.defn
    def get_weights(self, listener_arn: str) -> Weights:
        return Weights(listener_arn=listener_arn, weights=_forward_weights(self._listener(listener_arn)))

    @activity.defn
    def set_weights(self, target: Weights) -> bool:
        """Set the forward weights. Idempotent: returns False when they already were so."""
        if _forward_weights(self._listener(target.listener_arn)) == target.weights:
            return False
        groups = [{"TargetGroupArn": arn, "Weight": w} for arn, w in target.weights.items()]
        with aws_call(f"elbv2 modify-listener {target.listener_arn}"):
            self._aws("elbv2").modify_listener(
                ListenerArn=target.listener_arn,
                DefaultActions=[{"Type": "forward", "ForwardConfig": {"TargetGroups": groups}}],
            )
        activity.logger.info("listener weights now %s", target.weights)
        return True
