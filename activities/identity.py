"""Identity verification, in the worker: the one place a proof (common/identity.py) is checked.

- OIDC ID tokens with PyJWT: the signature against the issuer's published keys (``PyJWKClient``,
  cached), ``iss``, ``aud``, ``exp``, ``nbf``, ``iat`` (and a maximum age), asymmetric algorithms
  only; the ``person_claim`` maps to a person under ``people:``.
- Slack callbacks with ``slack_sdk.signature.SignatureVerifier`` (v0: HMAC-SHA256 of
  ``v0:timestamp:body``, refused more than 5 minutes off); the user id maps to ``slack_id``; the
  button must be for this workflow run and this decision.
- Automation starts: an HS256 token the receiver or the auto-rollback check signed with
  ROLLBACK_AUTOMATION_KEY, bound to the requester, the procedure, the target and the request.

The catalog is read at each check (cached until the file changes), so removing a person takes
effect at once. Answers are ``Verified``: ok with the person and a ``ProofRecord``, or the reason.
Only an unreachable identity provider is an error (retried). Tokens and signatures are never logged.
"""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import jwt
from pydantic import SecretStr
from slack_sdk.signature import SignatureVerifier
from temporalio import activity
from temporalio.exceptions import ApplicationError

from common.catalog import Catalog, CatalogError
from common.identity import (
    AUTOMATION_AUDIENCE, AUTOMATION_ISSUER, AUTOMATION_TOKEN_MINUTES, MAX_TOKEN_CHARS, SLACK_WINDOW_SECONDS,
    OidcConfig, ProofCheck, ProofRecord, Verified, Vouch, ago,
)

NO_PROOF = ("no proof was sent: send id_token (an OIDC ID token: 'starter.py login', ROLLBACK_ID_TOKEN, "
            "ROLLBACK_ID_TOKEN_FILE or ROLLBACK_ID_TOKEN_COMMAND) or use the Slack buttons")


class Unreachable(Exception):
    """The identity provider did not answer: retried, then the decision is refused saying so."""


# --- worker-signed start proofs (the receiver, the auto-rollback check, a parent rollback) ----

def mint_automation_token(key: SecretStr, *, requested_by: str, kind: str, target: str, digest: str, via: str,
                          vouch: ProofRecord | None = None, approved_by: list[str] | None = None,
                          now: float | None = None) -> str:
    """A short-lived proof that ``via`` (e.g. "receiver") made exactly this start request.
    ``vouch``: the requester is a person already proven (a parent rollback starting its child);
    ``approved_by``: the parent's approval gate was satisfied by them for this request."""
    iat = int(now if now is not None else time.time())
    claims: dict[str, Any] = {"iss": AUTOMATION_ISSUER, "aud": AUTOMATION_AUDIENCE, "sub": requested_by,
                              "kind": kind, "target": target, "digest": digest, "via": via,
                              "iat": iat, "exp": iat + AUTOMATION_TOKEN_MINUTES * 60}
    if vouch is not None:
        claims["proof"] = vouch.model_dump(mode="json", exclude={"expires_at", "approved_by"})
    if approved_by:
        claims["approved_by"] = list(approved_by)
    return jwt.encode(claims, key.get_secret_value(), algorithm="HS256")


def _automation(check: ProofCheck, key: SecretStr | None) -> Verified:
    if key is None:
        return Verified.refused("automation proofs cannot be checked: ROLLBACK_AUTOMATION_KEY is not set on the worker")
    try:
        claims = jwt.decode(check.automation_token or "", key.get_secret_value(), algorithms=["HS256"],
                            audience=AUTOMATION_AUDIENCE, issuer=AUTOMATION_ISSUER, leeway=30,
                            options={"require": ["exp", "iat", "sub", "iss", "aud"]})
    except jwt.ExpiredSignatureError:
        return Verified.refused(f"automation token {_expired(check.automation_token)}: it is only good for "
                                f"{AUTOMATION_TOKEN_MINUTES} minutes after the start")
    except jwt.InvalidSignatureError:
        return Verified.refused("automation token not signed with the worker's ROLLBACK_AUTOMATION_KEY")
    except jwt.InvalidTokenError as e:
        return Verified.refused(f"invalid automation token: {e}")
    for field, want in (("sub", check.claimed), ("kind", check.kind), ("target", check.target),
                        ("digest", check.request_digest)):
        if claims.get(field) != want:
            what = {"sub": "requested_by", "kind": "procedure", "target": "target", "digest": "request"}[field]
            return Verified.refused(f"automation token was signed for another {what} "
                                    + (f"({claims.get(field)!r}, not {want!r})" if field != "digest" else
                                       "(this one was changed after it was signed)"))
    expires = datetime.fromtimestamp(claims["exp"], timezone.utc)
    vouched = claims.get("proof")
    if vouched:  # a parent rollback's verified requester
        proof = ProofRecord.model_validate({**vouched, "via": claims.get("via", ""), "expires_at": expires})
    else:
        proof = ProofRecord(kind="automation", issuer=claims.get("via", ""), subject=check.claimed, expires_at=expires)
    approved = claims.get("approved_by")
    if approved and isinstance(approved, list):  # signed with the key: a parent's approval covers this request
        proof.approved_by = [str(a) for a in approved]
        proof.via = proof.via or claims.get("via", "")
    return Verified(ok=True, person=check.claimed, proof=proof)


def _expired(token: str | None) -> str:
    try:
        exp = jwt.decode(token or "", options={"verify_signature": False}).get("exp")
        return f"expired {ago(time.time() - float(exp))}"
    except (jwt.InvalidTokenError, TypeError, ValueError):
        return "expired"


class IdentityActivities:
    def __init__(self, catalog_path: Path, slack_signing_secret: SecretStr | None = None,
                 automation_key: SecretStr | None = None) -> None:
        self._catalog_path = catalog_path
        self._slack_secret = slack_signing_secret
        self._automation_key = automation_key
        self._lock = threading.Lock()
        self._jwks: dict[str, jwt.PyJWKClient] = {}  # JWKS URL -> client (caches the key set)
        self._discovered: dict[str, tuple[float, str]] = {}  # issuer -> (fetched at, jwks_uri)

    @activity.defn
    def verify_identity(self, check: ProofCheck) -> Verified:
        """Is ``check.claimed`` proven by the proof sent? Never raises for a bad proof: says why."""
        from common.api import read_catalog  # the catalog cache shared with the API

        try:
            catalog: Catalog = read_catalog(self._catalog_path, strict=True)  # type: ignore[assignment]
        except CatalogError as e:
            raise ApplicationError(str(e), type="CatalogError", non_retryable=True) from None
        ident = catalog.identity
        if ident is None:
            return Verified.refused("the catalog has no identity: section, so nothing can be proven")
        if not ident.verified:
            return Verified(ok=True, person=check.claimed, proof=ProofRecord(kind="unverified"))
        try:
            if check.slack is not None:
                verified = self._slack(check, catalog)
            elif check.id_token:
                assert ident.oidc is not None  # mode oidc requires it
                verified = self._oidc(check, catalog, ident.oidc)
            elif check.automation_token:
                verified = _automation(check, self._automation_key)
            else:
                verified = Verified.refused(NO_PROOF)
        except Unreachable as e:
            raise ApplicationError(str(e), type="IdentityProviderUnreachable") from None
        activity.logger.info("identity %s for %s by %s: %s", "proven" if verified.ok else "NOT proven",
                             check.action, check.claimed, verified.proof.describe() if verified.proof else
                             verified.reason)
        return verified

    @activity.defn
    def vouch(self, v: Vouch) -> str | None:
        """Sign a child rollback's start for the parent's verified requester (None: no key set)."""
        if self._automation_key is None:
            return None
        return mint_automation_token(self._automation_key, requested_by=v.requested_by, kind=v.kind,
                                     target=v.target, digest=v.digest, via=v.via, vouch=v.proof,
                                     approved_by=v.approved_by)

    # --- OIDC ---

    def _oidc(self, check: ProofCheck, catalog: Catalog, cfg: OidcConfig) -> Verified:
        token = check.id_token or ""
        if len(token) > MAX_TOKEN_CHARS:
            return Verified.refused("id_token is too long to be an ID token")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as e:
            return Verified.refused(f"id_token is not a JWT ({e})")
        alg = header.get("alg")
        if alg not in cfg.algorithms:
            return Verified.refused(f"token signed with alg {alg!r}; accepted: {', '.join(cfg.algorithms)} "
                                    "(identity.oidc.algorithms)")
        try:
            key = self._jwks_client(cfg).get_signing_key_from_jwt(token)
        except jwt.PyJWKClientConnectionError as e:
            raise Unreachable(f"the identity provider's keys ({self._jwks_url(cfg)}) are unreachable: {e}") from None
        except (jwt.PyJWKClientError, jwt.InvalidTokenError) as e:
            return Verified.refused(f"token signed with a key the issuer does not publish (kid "
                                    f"{header.get('kid')!r}): {e}")
        try:
            claims = jwt.decode(token, key, algorithms=cfg.algorithms, audience=cfg.audience, issuer=cfg.issuer,
                                leeway=cfg.leeway_seconds, options={"require": ["exp", "iat", "iss", "aud"]})
        except jwt.ExpiredSignatureError:
            return Verified.refused(f"token {_expired(token)}")
        except jwt.ImmatureSignatureError:
            nbf = jwt.decode(token, options={"verify_signature": False}).get("nbf", 0)
            return Verified.refused(f"token not valid yet (nbf {ago(time.time() - float(nbf))})")
        except jwt.InvalidAudienceError:
            aud = jwt.decode(token, options={"verify_signature": False}).get("aud")
            return Verified.refused(f"token is for audience {aud!r}, not {cfg.audience!r} (identity.oidc.audience)")
        except jwt.InvalidIssuerError:
            iss = jwt.decode(token, options={"verify_signature": False}).get("iss")
            return Verified.refused(f"token issued by {iss!r}, not the catalog's issuer {cfg.issuer!r}")
        except jwt.InvalidSignatureError:
            return Verified.refused("token signature does not verify with the issuer's keys (forged or altered)")
        except jwt.MissingRequiredClaimError as e:
            return Verified.refused(f"token lacks the {e.claim!r} claim")
        except jwt.InvalidTokenError as e:
            return Verified.refused(f"invalid token: {e}")
        age = time.time() - float(claims["iat"])
        if age > cfg.max_token_age_minutes * 60 + cfg.leeway_seconds:
            return Verified.refused(f"token issued {ago(age)}; tokens up to {cfg.max_token_age_minutes:g} min old "
                                    "are accepted (identity.oidc.max_token_age_minutes): get a fresh one")
        if claims.get("email_verified") is False and cfg.person_claim == "email":
            return Verified.refused("the identity provider says this e-mail address is not verified")
        value = claims.get(cfg.person_claim)
        if not isinstance(value, str) or not value:
            return Verified.refused(f"token has no {cfg.person_claim!r} claim (identity.oidc.person_claim)")
        person = catalog.people.by_claim(cfg.person_claim, value)
        if person is None:
            return Verified.refused(f"{value} is not in the catalog: nobody under people: has {cfg.person_claim} "
                                    f"{value}")
        if person != check.claimed:
            return Verified.refused(f"the token proves {person} ({value}), not {check.claimed}")
        return Verified(ok=True, person=person, proof=ProofRecord(
            kind="oidc", issuer=cfg.issuer, subject=value,
            expires_at=datetime.fromtimestamp(float(claims["exp"]), timezone.utc)))

    def _jwks_url(self, cfg: OidcConfig) -> str:
        if cfg.jwks_url:
            return cfg.jwks_url
        with self._lock:
            found = self._discovered.get(cfg.issuer)
            if found and time.monotonic() - found[0] < 3600:
                return found[1]
        url = cfg.issuer.rstrip("/") + "/.well-known/openid-configuration"
        try:
            resp = httpx.get(url, timeout=10)
            resp.raise_for_status()
            doc = resp.json()
        except (httpx.HTTPError, ValueError) as e:
            raise Unreachable(f"the identity provider's discovery document ({url}) is unreachable: {e}") from None
        if doc.get("issuer") != cfg.issuer or not doc.get("jwks_uri"):
            raise ApplicationError(f"{url} names issuer {doc.get('issuer')!r} (the catalog says {cfg.issuer!r}) "
                                   "or no jwks_uri: fix identity.oidc.issuer or set identity.oidc.jwks_url",
                                   type="CatalogError", non_retryable=True)
        with self._lock:
            self._discovered[cfg.issuer] = (time.monotonic(), doc["jwks_uri"])
        return doc["jwks_uri"]

    def _jwks_client(self, cfg: OidcConfig) -> jwt.PyJWKClient:
        url = self._jwks_url(cfg)
        with self._lock:
            client = self._jwks.get(url)
            if client is None:  # keys cached for 5 minutes; an unknown kid refetches (key rotation)
                client = self._jwks[url] = jwt.PyJWKClient(url, cache_keys=True, lifespan=300, timeout=10)
            return client

    # --- Slack ---

    def _slack(self, check: ProofCheck, catalog: Catalog) -> Verified:
        cb = check.slack
        assert cb is not None
        if self._slack_secret is None:
            return Verified.refused("Slack callbacks cannot be checked: ROLLBACK_SLACK_SIGNING_SECRET is not set "
                                    "on the worker")
        try:
            age = time.time() - int(cb.timestamp)
        except ValueError:
            return Verified.refused("Slack callback has no valid timestamp")
        if abs(age) > SLACK_WINDOW_SECONDS:
            return Verified.refused(f"Slack callback signed {ago(age)}; Slack's signatures are good for 5 minutes "
                                    "(stale or replayed)")
        verifier = SignatureVerifier(self._slack_secret.get_secret_value())
        if not verifier.is_valid(body=cb.body, timestamp=cb.timestamp, signature=cb.signature):
            return Verified.refused("Slack signature does not match the body (tampered, or not from our Slack app)")
        try:
            payload = json.loads(parse_qs(cb.body).get("payload", [""])[0])
            user, team = payload["user"]["id"], (payload.get("team") or {}).get("id", "")
            action = payload["actions"][0]
            decision, value = action.get("action_id"), action.get("value", "")
        except (ValueError, KeyError, IndexError, TypeError, RecursionError):
            return Verified.refused("Slack callback is not a block_actions payload with an Approve/Reject button")
        slack_cfg = catalog.identity.slack if catalog.identity else None
        if slack_cfg is None:
            return Verified.refused("the catalog does not enable Slack approvals (identity.slack)")
        if slack_cfg.team_id and team != slack_cfg.team_id:
            return Verified.refused(f"Slack callback from workspace {team!r}, not {slack_cfg.team_id!r}")
        run = f"{check.workflow_id}/{check.run_id}"
        if value != run:
            return Verified.refused(f"the Slack button was for {value!r}, not this rollback ({run})")
        if decision != check.action:
            return Verified.refused(f"the Slack button pressed was {decision!r}, not {check.action!r}")
        person = catalog.people.by_slack_id(user)
        if person is None:
            return Verified.refused(f"Slack user {user} is not in the catalog: nobody under people: has slack_id {user}")
        if person != check.claimed:
            return Verified.refused(f"the Slack callback proves {person} ({user}), not {check.claimed}")
        return Verified(ok=True, person=person, proof=ProofRecord(
            kind="slack", issuer=f"slack:{team}" if team else "slack", subject=user))
