"""Reading the sandbox's AppConfig state the way an operator would (boto3, by name), for assertions."""

from __future__ import annotations

import json
import time
from typing import Any

from sandbox.appconfig_fleet import APPLICATION, ENVIRONMENT


class AppConfigState:
    def __init__(self, aws: Any) -> None:
        self.ac, self.data = aws.client("appconfig"), aws.client("appconfigdata")
        self.app = next(a["Id"] for a in self.ac.list_applications()["Items"] if a["Name"] == APPLICATION)
        self.env = next(e["Id"] for e in self.ac.list_environments(ApplicationId=self.app)["Items"]
                        if e["Name"] == ENVIRONMENT)
        profiles = self.ac.list_configuration_profiles(ApplicationId=self.app)["Items"]
        self.profiles = {p["Name"]: p["Id"] for p in profiles}

    def versions(self, profile: str) -> list[int]:
        items = self.ac.list_hosted_configuration_versions(ApplicationId=self.app,
                                                           ConfigurationProfileId=self.profiles[profile])["Items"]
        return sorted(i["VersionNumber"] for i in items)

    def raw(self, profile: str, version: int) -> str:
        return self.ac.get_hosted_configuration_version(
            ApplicationId=self.app, ConfigurationProfileId=self.profiles[profile], VersionNumber=version,
        )["Content"].read().decode()

    def deployments(self, profile: str) -> list[dict[str, Any]]:
        """This profile's deployments, newest first, with their strategy and description."""
        items = self.ac.list_deployments(ApplicationId=self.app, EnvironmentId=self.env)["Items"]
        return [self.ac.get_deployment(ApplicationId=self.app, EnvironmentId=self.env,
                                       DeploymentNumber=d["DeploymentNumber"])
                for d in items if d["ConfigurationProfileId"] == self.profiles[profile]]

    def served(self, profile: str) -> bytes:
        token = self.data.start_configuration_session(
            ApplicationIdentifier=APPLICATION, EnvironmentIdentifier=ENVIRONMENT,
            ConfigurationProfileIdentifier=profile)["InitialConfigurationToken"]
        return self.data.get_latest_configuration(ConfigurationToken=token)["Configuration"].read()

    def served_flags(self) -> dict[str, Any]:
        return json.loads(self.served("feature-flags"))

    def publish(self, profile: str, content: str) -> int:
        """What someone else might do: a new hosted version, deployed all at once and completed."""
        pid = self.profiles[profile]
        version = self.ac.create_hosted_configuration_version(
            ApplicationId=self.app, ConfigurationProfileId=pid, Content=content.encode(),
            ContentType="application/json")["VersionNumber"]
        number = self.ac.start_deployment(ApplicationId=self.app, EnvironmentId=self.env, ConfigurationProfileId=pid,
                                          DeploymentStrategyId="AppConfig.AllAtOnce",
                                          ConfigurationVersion=str(version))["DeploymentNumber"]
        for _ in range(100):  # the stand-in moves a stage per poll
            if self.ac.get_deployment(ApplicationId=self.app, EnvironmentId=self.env,
                                      DeploymentNumber=number)["State"] == "COMPLETE":
                return version
            time.sleep(0.05)
        raise AssertionError(f"deployment {number} did not complete")
