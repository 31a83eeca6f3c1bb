"""Recorded releases, in AWS SSM Parameter Store: one String parameter per release
(``/rollback-orchestrator/releases/<name>``), its value the release as JSON (common/releases.py).

The deploy pipeline writes them (``starter.py release record``); ``find_release`` reads one for
a ``ReleaseRollback``, falling back to the catalog's ``releases:``. Parameters outlive the worker
and can be read by any tool (``aws ssm get-parameter``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError
from pydantic import BaseModel, ValidationError
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.aws import AwsClients, aws_call
from common.catalog import CatalogError, load_catalog
from common.releases import PARAMETER_PREFIX, Release, parameter_name

MAX_VALUE = 4096  # a Standard parameter's limit


class FoundRelease(BaseModel):
    name: str
    release: Release
    source: str  # "ssm parameter <name>" or "catalog"


class ReleaseNotFound(LookupError):
    pass


def write_release(ssm: Any, name: str, release: Release) -> str:
    """Record (or re-record) a release; returns the parameter's name."""
    value = release.model_dump_json(exclude_defaults=True)
    if len(value) > MAX_VALUE:
        raise ValueError(f"release {name} is {len(value)} characters as JSON; a parameter holds {MAX_VALUE}")
    ssm.put_parameter(Name=parameter_name(name), Value=value, Type="String", Overwrite=True,
                      Description=f"release {name}, recorded for rollbacks")
    return parameter_name(name)


def read_release(ssm: Any, name: str) -> Release | None:
    try:
        value = ssm.get_parameter(Name=parameter_name(name))["Parameter"]["Value"]
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") == "ParameterNotFound":
            return None
        raise
    return Release.model_validate_json(value)


def recorded_names(ssm: Any) -> list[str]:
    names: list[str] = []
    for page in ssm.get_paginator("get_parameters_by_path").paginate(Path=PARAMETER_PREFIX.rstrip("/")):
        names += [p["Name"][len(PARAMETER_PREFIX):] for p in page.get("Parameters", [])]
    return sorted(names)


def find(ssm: Any, catalog_releases: dict[str, Release], name: str) -> FoundRelease:
    """The recorded release, else the catalog's; ReleaseNotFound naming every release known."""
    try:
        recorded = read_release(ssm, name)
    except ValidationError as e:
        raise ReleaseNotFound(f"release {name!r}: the parameter {parameter_name(name)} is not a release: {e}") from None
    if recorded is not None:
        return FoundRelease(name=name, release=recorded, source=f"ssm parameter {parameter_name(name)}")
    if name in catalog_releases:
        return FoundRelease(name=name, release=catalog_releases[name], source="catalog")
    known = sorted(set(recorded_names(ssm)) | set(catalog_releases))
    raise ReleaseNotFound(f"release {name!r} is not known: not recorded (no parameter {parameter_name(name)}) and "
                          f"not under releases: in the catalog (known: {', '.join(known) or 'none'}); record it "
                          f"with 'starter.py release record {name} --service NAME=VERSION ...'")


class ReleaseActivities:
    def __init__(self, aws: AwsClients, catalog_path: Path) -> None:
        self._aws = aws
        self._catalog_path = catalog_path

    @activity.defn
    def find_release(self, name: str) -> FoundRelease:
        """What release ``name`` shipped (recorded, else the catalog's). Unknown: non-retryable, naming the known."""
        try:
            catalog = load_catalog(self._catalog_path)
        except CatalogError as e:
            raise ApplicationError(str(e), type="CatalogError", non_retryable=True) from None
        with aws_call(f"ssm get-parameter {parameter_name(name)}"):
            try:
                return find(self._aws("ssm"), catalog.releases, name)
            except ReleaseNotFound as e:
                raise ApplicationError(str(e), type="UnknownRelease", non_retryable=True) from None

    @activity.defn
    def release_prefixes(self, bucket: str) -> list[str]:
        """The release prefixes (top-level "folders", e.g. v1.2.2) of a site's versions bucket."""
        prefixes: list[str] = []
        with aws_call(f"s3 list-objects-v2 s3://{bucket}/ --delimiter /"):
            for page in self._aws("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket, Delimiter="/"):
                prefixes += [p["Prefix"].rstrip("/") for p in page.get("CommonPrefixes", [])]
        return prefixes
