"""The runbook's Lambda function in moto: ``rastup-search-indexer`` with published versions
and a ``production`` alias on the newest (the release being rolled back).

Version numbers differ from the runbook's: moto (like Lambda) numbers a function's published
versions from 1, so the sandbox has versions 1..4 with ``production`` on 4 and 3 as the
previous one, where the runbook's example goes back to 42.

moto can only *invoke* a function without Docker in its "simple" Lambda mode, switched on by
``POST /moto-api/config {"lambda": {"use_docker": false}}``. That switch picks a different
backend, so functions created before it are not seen after it: ``seed_lambda`` sets it
first, on every call (it survives ``/moto-api/reset``, but another process may have reset it).
A simple-mode invocation does not run the code: it answers the event it was given.
"""

from __future__ import annotations

import io
import json
import zipfile
from typing import Any

import httpx
from botocore.exceptions import ClientError

FUNCTION = "rastup-search-indexer"
ALIAS = "production"
VERSIONS = 4  # published versions 1..4; the alias is on the last
BAD_VERSION = str(VERSIONS)  # the release being rolled back
GOOD_VERSION = str(VERSIONS - 1)  # the rollback target
ROLE = "rastup-lambda-sandbox"  # moto checks that a function's role exists in its IAM
RUNTIME = "python3.12"

TRUST = {"Version": "2012-10-17", "Statement": [{
    "Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}]}


def code(release: int) -> bytes:
    """A tiny zip, in memory, that differs per release (Lambda publishes only changed code)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("handler.py", "def handler(event, context):\n"
                                 f"    return {{'release': {release}, 'event': event}}\n")
    return buf.getvalue()


def use_simple_lambda(endpoint_url: str) -> None:
    """moto's Docker-free Lambda (see the module docstring): before any function is created."""
    httpx.post(f"{endpoint_url}/moto-api/config", json={"lambda": {"use_docker": False}},
               timeout=10).raise_for_status()


def _role(iam: Any) -> str:
    try:
        return iam.get_role(RoleName=ROLE)["Role"]["Arn"]
    except ClientError as e:
        if e.response["Error"]["Code"] != "NoSuchEntity":
            raise
    return iam.create_role(RoleName=ROLE, AssumeRolePolicyDocument=json.dumps(TRUST))["Role"]["Arn"]


def ensure_function(lam: Any, iam: Any, name: str, versions: int, alias: str = ALIAS) -> None:
    """The function with published versions 1..``versions`` and ``alias`` on the last; what is
    there already is kept (an alias moved by a rollback stays where it is)."""
    try:
        lam.get_function(FunctionName=name)
    except ClientError as e:
        if e.response["Error"]["Code"] != "ResourceNotFoundException":
            raise
        lam.create_function(FunctionName=name, Runtime=RUNTIME, Role=_role(iam), Handler="handler.handler",
                            Code={"ZipFile": code(1)}, Description="sandbox: a rollback stand-in")
    published = [v["Version"] for page in lam.get_paginator("list_versions_by_function").paginate(FunctionName=name)
                 for v in page["Versions"] if v["Version"].isdigit()]
    for release in range(len(published) + 1, versions + 1):
        if release > 1:
            lam.update_function_code(FunctionName=name, ZipFile=code(release))
        lam.publish_version(FunctionName=name, Description=f"release {release}")
    try:
        lam.get_alias(FunctionName=name, Name=alias)
    except ClientError as e:
        if e.response["Error"]["Code"] != "ResourceNotFoundException":
            raise
        lam.create_alias(FunctionName=name, Name=alias, FunctionVersion=str(versions))


def seed_lambda(endpoint_url: str, region: str = "us-east-1") -> None:
    """Create ``rastup-search-indexer`` (versions 1..4, ``production`` on 4) or find it."""
    from sandbox.fleet import client  # here: sandbox.fleet's seed() imports this module

    use_simple_lambda(endpoint_url)
    ensure_function(client("lambda", endpoint_url, region), client("iam", endpoint_url, region), FUNCTION, VERSIONS)


def catalog_entry() -> dict[str, Any]:
    """The function as the catalog describes it (see sandbox/catalog.py)."""
    return {"function_name": FUNCTION, "smoke_invoke": True, "smoke_payload": {"query": "rollback smoke test"}}
