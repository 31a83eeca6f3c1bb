"""The runbook's configuration in the sandbox (sections 3 and 4): AWS AppConfig feature flags and a
freeform configuration, and the Secrets Manager secret ``rastup/prod/api-key``.

What ``seed_config`` creates (idempotently) in moto + the AppConfig stand-in:

- AppConfig application ``rastup`` with environment ``production``.
- Feature-flag profile ``feature-flags`` (``AWS.AppConfig.FeatureFlags``), version 1 deployed:
  ``new_feature_enabled`` (on; rollout per city as number attributes: los-angeles 50,
  new-york 25, chicago 100), ``payments_disabled`` (the kill switch, off) and ``search_v2``
  (on, ``variant: "b"``), in the document text ``FLAGS_DOCUMENT``.
- Freeform profile ``app-settings``: version 1 deployed first, then version 2 (deployed now).
- Secret ``rastup/prod/api-key`` with two versions: AWSCURRENT the new key, AWSPREVIOUS the old.
  The values are sandbox dummies; the product never reads them.
"""

from __future__ import annotations

import json
import time
from typing import Any

from botocore.exceptions import ClientError

APPLICATION = "rastup"
ENVIRONMENT = "production"
FLAGS_PROFILE = "feature-flags"
SETTINGS_PROFILE = "app-settings"
API_KEY_SECRET = "rastup/prod/api-key"
API_KEY_OLD = "sandbox-api-key-OLD-5c1e9f"  # dummies, so tests can prove no value leaks anywhere
API_KEY_NEW = "sandbox-api-key-NEW-a7d042"
CITIES = ["los-angeles", "new-york", "chicago"]


def _pct() -> dict[str, Any]:
    return {"constraints": {"type": "number", "minimum": 0, "maximum": 100, "required": True}}


# Written as text, indented by hand with a non-ASCII character: a rollback must leave every byte
# it does not change as it was (a re-serialised document would not).
FLAGS_DOCUMENT = """{
  "version": "1",
  "flags": {
    "new_feature_enabled": {
      "name": "New booking flow",
      "description": "Rolled out city by city \u2014 percentage of users per city",
      "attributes": {
        "los-angeles": %(pct)s,
        "new-york": %(pct)s,
        "chicago": %(pct)s
      }
    },
    "payments_disabled": {
      "name": "Payments kill switch",
      "description": "On: payments are switched off everywhere"
    },
    "search_v2": {
      "name": "Search v2",
      "attributes": {"variant": {"constraints": {"type": "string", "enum": ["a", "b"]}}}
    }
  },
  "values": {
    "new_feature_enabled": {
      "enabled": true,
      "los-angeles": 50,
      "new-york": 25,
      "chicago": 100
    },
    "payments_disabled": {
      "enabled": false
    },
    "search_v2": {"enabled": true, "variant": "b"}
  }
}
""" % {"pct": json.dumps(_pct())}

SETTINGS = [  # app-settings versions 1 and 2 (2 is deployed: the change being rolled back)
    json.dumps({"search": {"page_size": 20}, "timeouts_ms": {"payments": 3000}}, indent=2),
    json.dumps({"search": {"page_size": 50}, "timeouts_ms": {"payments": 1500}}, indent=2),
]


def seed_config(endpoint_url: str, region: str = "us-east-1") -> None:
    """Create the AppConfig application, profiles, versions and deployments and the secret, or find them."""
    from sandbox.fleet import client  # here: sandbox.fleet's seed() imports this module

    ac = client("appconfig", endpoint_url, region)
    app = _find_or_create(ac.list_applications()["Items"], APPLICATION,
                          lambda: ac.create_application(Name=APPLICATION, Description="rastup (sandbox)"))
    env = _find_or_create(ac.list_environments(ApplicationId=app)["Items"], ENVIRONMENT,
                          lambda: ac.create_environment(ApplicationId=app, Name=ENVIRONMENT))
    profiles = ac.list_configuration_profiles(ApplicationId=app)["Items"]
    flags = _find_or_create(profiles, FLAGS_PROFILE, lambda: ac.create_configuration_profile(
        ApplicationId=app, Name=FLAGS_PROFILE, LocationUri="hosted", Type="AWS.AppConfig.FeatureFlags"))
    settings = _find_or_create(profiles, SETTINGS_PROFILE, lambda: ac.create_configuration_profile(
        ApplicationId=app, Name=SETTINGS_PROFILE, LocationUri="hosted", Type="AWS.Freeform"))
    _versions(ac, app, flags, [FLAGS_DOCUMENT])
    _versions(ac, app, settings, SETTINGS)
    deployed = {d["ConfigurationProfileId"] for d in ac.list_deployments(ApplicationId=app, EnvironmentId=env)["Items"]}
    if flags not in deployed:
        _deploy(ac, app, env, flags, "1")
    if settings not in deployed:
        _deploy(ac, app, env, settings, "1")
        _deploy(ac, app, env, settings, "2")
    _api_key(client("secretsmanager", endpoint_url, region))


def _find_or_create(items: list[dict[str, Any]], name: str, create: Any) -> str:
    found = next((i["Id"] for i in items if i["Name"] == name), None)
    return found or create()["Id"]


def _versions(ac: Any, app: str, profile: str, contents: list[str]) -> None:
    have = ac.list_hosted_configuration_versions(ApplicationId=app, ConfigurationProfileId=profile)["Items"]
    for content in contents[len(have):]:
        ac.create_hosted_configuration_version(ApplicationId=app, ConfigurationProfileId=profile,
                                               Content=content.encode(), ContentType="application/json")


def _deploy(ac: Any, app: str, env: str, profile: str, version: str) -> None:
    number = ac.start_deployment(ApplicationId=app, EnvironmentId=env, DeploymentStrategyId="AppConfig.AllAtOnce",
                                 ConfigurationProfileId=profile, ConfigurationVersion=version,
                                 Description="sandbox seed")["DeploymentNumber"]
    for attempt in range(100):  # the stand-in moves a stage per poll (or per few seconds)
        if ac.get_deployment(ApplicationId=app, EnvironmentId=env, DeploymentNumber=number)["State"] == "COMPLETE":
            return
        time.sleep(0.05 if attempt >= 3 else 0)
    raise RuntimeError(f"sandbox: AppConfig deployment {number} did not complete")


def _api_key(sm: Any) -> None:
    """Two versions, the new one current. Left as found if it exists (a rollback stays rolled back)."""
    try:
        sm.describe_secret(SecretId=API_KEY_SECRET)
        return
    except ClientError as e:
        if e.response["Error"]["Code"] != "ResourceNotFoundException":
            raise
    sm.create_secret(Name=API_KEY_SECRET, SecretString=API_KEY_OLD, Description="the payments API key (sandbox)")
    sm.put_secret_value(SecretId=API_KEY_SECRET, SecretString=API_KEY_NEW)


def catalog_entries() -> dict[str, Any]:
    """The flag store, the flags and the configurations, as the catalog describes them."""
    return {
        "flag_stores": {"main": {
            "provider": "appconfig", "application": APPLICATION, "environment": ENVIRONMENT,
            "profile": FLAGS_PROFILE, "strategy": "AppConfig.Linear50PercentEvery30Seconds",
            "kill_switch_strategy": "AppConfig.AllAtOnce"}},
        "flags": {
            "new_feature_enabled": {"store": "main", "key": "new_feature_enabled", "cities": list(CITIES)},
            "payments_disabled": {"store": "main", "key": "payments_disabled", "kill_switch": True},
        },
        "configs": {
            SETTINGS_PROFILE: {"kind": "appconfig", "application": APPLICATION, "environment": ENVIRONMENT,
                               "profile": SETTINGS_PROFILE, "strategy": "AppConfig.AllAtOnce"},
            "api-key": {"kind": "secret", "secret_id": API_KEY_SECRET,
                        "consumers": [{"cluster": "rastup-prod", "service": "api-service"}]},
        },
    }
