"""Identity: who sent a decision, and how that is proven. The one module for it (pure: no I/O,
no clocks), used by the catalog, the workflows (through ``workflows/base.py`` and
``workflows/gate.py``), the verification activity (``activities/identity.py``), the CLI and the
receiver.

A name typed into a JSON field grants nothing. A decision (approve, reject, a severity change)
or a requester privilege (the on-call engineer's own auto-approval, ``automation_may_proceed``,
``kill_switch_immediate``) counts only with a proof the worker verifies:

- ``oidc``: an OpenID Connect ID token (a JWT) from the identity provider the catalog names
  (``identity.oidc``); its ``person_claim`` (e.g. ``email``) maps to a person under ``people:``;
- ``slack``: a Slack interactive callback (Approve / Reject buttons), signed by Slack with the
  app's signing secret; its user id maps to ``people.<name>.slack_id``;
- ``automation``: a start by the alert receiver or the auto-rollback check, signed with the key
  only they and the worker hold (``ROLLBACK_AUTOMATION_KEY``); a parent rollback vouches for its
  child's requester the same way (the proof then keeps the person's own kind, ``via`` the parent).

``unverified`` is what a catalog with ``identity.mode: unverified`` gives every name: it counts as
typed, and every status and notification says so.

The status records the verified person, the proof's kind and issuer (a ``ProofRecord``), never the
token or signature itself.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from common.policy import SEVERITIES

ProofKind = Literal["oidc", "slack", "automation", "unverified"]
Action = Literal["approve", "reject", "escalate", "start"]

# Asymmetric JWS algorithms only: an ID token is signed by the identity provider's private key
# and checked with its published public keys. "none" and the HS* family (a shared secret anyone
# holding the JWKS could not check, and a classic confusion attack) are never accepted.
ASYMMETRIC_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512",
                         "EdDSA")
MAX_TOKEN_CHARS = 16_384  # bounded: proofs travel in signal and start payloads
SLACK_WINDOW_SECONDS = 5 * 60  # Slack's documented replay window for its v0 request signatures
# The receiver's and the auto-rollback check's starts (worker-signed, HS256 with ROLLBACK_AUTOMATION_KEY).
AUTOMATION_ISSUER = "rollback-orchestrator"
AUTOMATION_AUDIENCE = "rollback-start"
AUTOMATION_TOKEN_MINUTES = 5  # a start is verified within seconds; a replay later counts for nothing


# --- the catalog's identity: section -----------------------------------------------------

class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OidcConfig(_Strict):
    """The company's identity provider. ``jwks_url`` defaults to the one its discovery document
    (``<issuer>/.well-known/openid-configuration``) names."""

    issuer: str = Field(min_length=1, description="the tokens' iss, e.g. https://login.rastup.com/")
    audience: str = Field(min_length=1, description="the tokens' aud: this orchestrator's client id")
    jwks_url: str | None = Field(None, description="the provider's public keys; default: from discovery")
    person_claim: str = Field("email", min_length=1,
                              description="the claim naming the person; each person under people: has it")
    max_token_age_minutes: float = Field(60, gt=0, le=24 * 60,
                                         description="older tokens (by iat) are refused, even if not expired")
    algorithms: list[str] = Field(default_factory=lambda: ["RS256", "ES256"], min_length=1,
                                  description="accepted signature algorithms: asymmetric only, never none or HS*")
    leeway_seconds: float = Field(30, ge=0, le=300, description="clock skew allowed on exp / nbf / iat")

    @field_validator("algorithms")
    @classmethod
    def _asymmetric(cls, v: list[str]) -> list[str]:
        bad = [a for a in v if a not in ASYMMETRIC_ALGORITHMS]
        if bad:
            raise ValueError(f"{', '.join(map(repr, bad))} not allowed: ID tokens are checked with the provider's "
                             f"public keys, so only {', '.join(ASYMMETRIC_ALGORITHMS)}")
        return v


class SlackConfig(_Strict):
    """Slack interactive approvals. The signing secret is a secret: ROLLBACK_SLACK_SIGNING_SECRET."""

    team_id: str | None = Field(None, description="when set, callbacks from any other workspace are refused")


class IdentityConfig(_Strict):
    """How decisions are proven (catalog ``identity:``). ``unverified`` must be said explicitly."""

    mode: Literal["oidc", "unverified"] = Field(
        description="oidc: decisions count only with a verified proof; unverified: typed names count (said everywhere)")
    oidc: OidcConfig | None = Field(None, description="the identity provider whose ID tokens prove people")
    slack: SlackConfig | None = Field(None, description="Approve / Reject buttons in #incidents (people's slack_id)")

    @model_validator(mode="after")
    def _complete(self) -> "IdentityConfig":
        if self.mode == "oidc" and self.oidc is None:
            raise ValueError("mode oidc needs oidc: {issuer: ..., audience: ..., person_claim: email}")
        return self

    @property
    def verified(self) -> bool:
        return self.mode != "unverified"


class Person(BaseModel):
    """A person's entry under ``people:`` (next to the role lists): how they prove who they are.

    ``slack_id`` for Slack approvals, plus the OIDC claim ``identity.oidc.person_claim`` names,
    e.g. ``email: alice@rastup.com`` (any other field is an error, checked with the catalog).
    """

    model_config = ConfigDict(extra="allow")

    slack_id: str | None = Field(None, min_length=1, description="Slack user id, e.g. U024BE7LH")

    @model_validator(mode="after")
    def _claims_are_text(self) -> "Person":
        for key, value in (self.model_extra or {}).items():
            if not isinstance(value, str) or not value:
                raise ValueError(f"{key}: expected the person's {key} claim as text, e.g. {key}: alice@rastup.com")
        return self

    def claim(self, name: str) -> str | None:
        return (self.model_extra or {}).get(name)


# --- proofs as they travel, and as they are recorded ----------------------------------------

class SlackCallback(BaseModel):
    """A Slack interactive callback exactly as Slack sent it, re-verified by the worker."""

    model_config = ConfigDict(extra="forbid")

    body: str = Field(max_length=MAX_TOKEN_CHARS * 4, repr=False, description="the raw form-encoded body")
    timestamp: str = Field(max_length=32, description="X-Slack-Request-Timestamp")
    signature: str = Field(max_length=128, repr=False, description="X-Slack-Signature (v0=...)")


class ProofRecord(BaseModel):
    """How a decision or a requester was proven: never the token or signature itself."""

    kind: ProofKind
    issuer: str = Field("", description="OIDC issuer, slack:<team>, or the automation that signed")
    subject: str = Field("", description="the claim value, Slack user id or automation name")
    via: str = Field("", description="a parent rollback that vouched for its child's requester")
    approved_by: list[str] = Field(default_factory=list, description="a parent rollback's approval, vouched for "
                                   "its child by the worker: the child asks no one again (a release rollback)")
    expires_at: datetime | None = None

    def describe(self) -> str:
        if self.kind == "unverified":
            return "not verified (identity.mode: unverified)"
        how = {"oidc": "OIDC token", "slack": "Slack", "automation": "automation key"}[self.kind]
        text = f"{how} from {self.issuer}" + (f" ({self.subject})" if self.subject else "")
        return text + (f", via {self.via}" if self.via else "") + (
            f", approved there by {', '.join(self.approved_by)}" if self.approved_by else "")


class ProofCheck(BaseModel):
    """What the workflow asks the verification activity: does this proof make ``claimed`` a person
    (or automation) for ``action`` on this workflow run?"""

    claimed: str
    action: Action
    workflow_id: str
    run_id: str = ""
    id_token: str | None = Field(None, repr=False)
    slack: SlackCallback | None = Field(None, repr=False)
    automation_token: str | None = Field(None, repr=False)
    # what a worker-signed start proof is bound to
    kind: str = ""
    target: str = ""
    request_digest: str = ""


class Vouch(BaseModel):
    """A parent rollback asks the worker to sign its child's start for the requester it verified."""

    requested_by: str
    kind: str
    target: str
    digest: str
    via: str
    proof: ProofRecord | None = Field(None, description="the requester's proof; None: not proven (automation)")
    approved_by: list[str] = Field(default_factory=list, description="the parent's approval covers this child")


class Verified(BaseModel):
    """The verification's answer: the catalog person (or automation) proven, or why not."""

    ok: bool
    person: str = ""
    proof: ProofRecord | None = None
    reason: str = Field("", description="why not, for a person: e.g. 'token expired 3 min ago'")

    @classmethod
    def refused(cls, reason: str) -> "Verified":
        return cls(ok=False, reason=reason)


class SeverityChange(BaseModel):
    """A severity change that took effect (status.severity_changes)."""

    at: datetime
    from_severity: str
    to_severity: str
    by: str
    reason: str
    proof: ProofRecord | None = None


# --- pure rules ----------------------------------------------------------------------------

PROOF_FIELDS = frozenset({"id_token", "automation_token"})


def request_digest(request: BaseModel) -> str:
    """The SHA-256 of a start request as the workflow receives it, without its proofs: what a
    worker-signed start proof is bound to (so it cannot be reused for any other request)."""
    data: dict[str, Any] = request.model_dump(mode="json", exclude=set(PROOF_FIELDS))
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def lowers_the_bar(old: str, new: str) -> bool:
    """The runbook's scale runs from SEV-0 (informational: two approvers) to SEV-4 (complete outage:
    the on-call engineer alone), so any move toward SEV-4 asks less of the approval."""
    return SEVERITIES.index(new) > SEVERITIES.index(old)


def ago(seconds: float) -> str:
    """'3 min ago' / '40 s ago' / 'in 2 min': how people read a token's times."""
    later = seconds < 0
    seconds = abs(seconds)
    text = f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"
    return f"in {text}" if later else f"{text} ago"
