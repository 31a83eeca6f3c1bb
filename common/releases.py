"""Releases: what a release changed, as a named set of component versions (issue 15).

A release is declared in the catalog (``releases:``) or recorded by the deploy pipeline
(``starter.py release record v1.2.3 --service api=v1.2.3 ...``), which keeps it in AWS SSM
Parameter Store, one parameter per release (``/rollback-orchestrator/releases/<name>``, JSON),
so it outlives the worker and every tool with read access can see it. A recorded release wins
over a catalog entry of the same name (the pipeline knows what it actually shipped).

``plan`` turns a release into the components a ``ReleaseRollback`` rolls back, in the runbook's
order: flags and kill switches first (the fastest lever), then services, Lambda functions, the
frontend, and a database last, only when the release says its rollback needs it. Pure: no I/O.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# SSM parameter names: letters, digits and . - _ (the release name is one path segment)
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"
PARAMETER_PREFIX = "/rollback-orchestrator/releases/"

ComponentKind = Literal["flag", "kill_switch", "service", "lambda", "frontend", "database"]
# The runbook's order: "Feature Flags (Fastest)", then the application, its functions, the frontend;
# "Database rollbacks are risky and should be avoided": last, and only when a component needs it.
ORDER: tuple[ComponentKind, ...] = ("flag", "kill_switch", "service", "lambda", "frontend", "database")
WAVE = {"flag": 0, "kill_switch": 0, "service": 1, "lambda": 2, "frontend": 3, "database": 4}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ReleaseDatabase(_Strict):
    """A migration the release shipped. Rolled back with the release only if ``required``."""

    steps: int = Field(1, ge=1, le=50, description="migrations the release added (rolled back with mode migration)")
    required: bool = Field(False, description="true: the release's rollback needs the migration undone too (the old "
                                              "code cannot run on the new schema); false (default): the migration "
                                              "stays, as the runbook prefers")


class Release(_Strict):
    """One release: what it shipped, by catalog name. Each component is rolled back to the last known
    good version before it (the procedure's default target: never a version a rollback left as bad)."""

    services: dict[str, str] = Field(default_factory=dict, description="service -> the image tag it shipped, "
                                                                       "e.g. api: v1.2.3")
    functions: dict[str, str] = Field(default_factory=dict, description="Lambda function -> the version it "
                                                                        "published, e.g. rastup-search-indexer: '4'")
    sites: dict[str, str] = Field(default_factory=dict, description="site -> its release prefix in the versions "
                                                                    "bucket, e.g. web: v1.2.3")
    flags: list[str] = Field(default_factory=list, description="flags it turned on: disabled in every city on "
                                                               "rollback")
    kill_switches: list[str] = Field(default_factory=list, description="kill switches to enable on rollback "
                                                                       "(the feature it shipped is switched off)")
    databases: dict[str, ReleaseDatabase] = Field(default_factory=dict, description="migrations it ran (rolled "
                                                                                    "back only when required)")
    recorded_by: str = Field("", description="who recorded it (the deploy pipeline)")
    recorded_at: datetime | None = None

    @field_validator("functions", mode="before")
    @classmethod
    def _versions_are_text(cls, v: object) -> object:
        return {k: str(x) for k, x in v.items()} if isinstance(v, dict) else v  # YAML reads 4 as a number

    def components(self) -> list["Component"]:
        """Every component, in the runbook's order (databases only if required)."""
        out = [Component(kind="flag", name=f) for f in self.flags]
        out += [Component(kind="kill_switch", name=f) for f in self.kill_switches]
        out += [Component(kind="service", name=n, version=v) for n, v in self.services.items()]
        out += [Component(kind="lambda", name=n, version=v) for n, v in self.functions.items()]
        out += [Component(kind="frontend", name=n, version=v) for n, v in self.sites.items()]
        out += [Component(kind="database", name=n, version=f"{d.steps} migration(s)")
                for n, d in self.databases.items() if d.required]
        return out

    def names(self) -> list[str]:
        return [*self.flags, *self.kill_switches, *self.services, *self.functions, *self.sites, *self.databases]


class Component(BaseModel):
    """One part of a release rollback."""

    kind: ComponentKind
    name: str
    version: str = Field("", description="what the release shipped (the version rolled back from)")

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.name}"


def valid_name(name: str) -> bool:
    return re.fullmatch(NAME_PATTERN, name) is not None


def parameter_name(release: str) -> str:
    return PARAMETER_PREFIX + release


def plan(release: Release, leave_out: list[str]) -> tuple[list[Component], list[str]]:
    """The components to roll back, in order, and the names in ``leave_out`` the release does not have."""
    unknown = [n for n in leave_out if n not in release.names()]
    return [c for c in release.components() if c.name not in leave_out], unknown


def waves(components: list[Component]) -> list[list[Component]]:
    """Components grouped by the runbook's order: each group runs at once, groups one after the other."""
    groups: dict[int, list[Component]] = {}
    for c in components:
        groups.setdefault(WAVE[c.kind], []).append(c)
    return [groups[k] for k in sorted(groups)]
