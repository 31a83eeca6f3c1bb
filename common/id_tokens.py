"""Where a client (``starter.py``) gets the OIDC ID token that proves who its user is. The worker
checks it (activities/identity.py); this module only finds it. In order:

1. ``ROLLBACK_ID_TOKEN``: the token itself;
2. ``ROLLBACK_ID_TOKEN_FILE``: a file holding one (e.g. kept fresh by an SSO helper);
3. ``ROLLBACK_ID_TOKEN_COMMAND``: a command that prints one, e.g.
   ``gcloud auth print-identity-token --audiences=rollback-orchestrator`` (run with ROLLBACK_AS=<name>);
4. what ``starter.py login NAME`` stored for that person under ``<data dir>/tokens/`` (the sandbox's
   identity provider signs one for any catalog person; a real one is signed in to with its own tools).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from pathlib import Path

import httpx
import jwt

from common.identity import ago
from common.settings import Settings

HOW = ("'starter.py login NAME' (the sandbox), or ROLLBACK_ID_TOKEN, ROLLBACK_ID_TOKEN_FILE or "
       "ROLLBACK_ID_TOKEN_COMMAND (your identity provider; docs/identity.md)")


class TokenError(Exception):
    """A configured token source failed; the message says which and why (never the token)."""


def stored_path(settings: Settings, person: str) -> Path:
    return settings.data_dir / "tokens" / f"{Path(person).name}.jwt"


def store(settings: Settings, person: str, token: str) -> Path:
    path = stored_path(settings, person)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token)
    return path


def find(settings: Settings, person: str) -> tuple[str | None, str]:
    """(the token, where it came from), or (None, "") when no source has one for ``person``."""
    if settings.id_token is not None:
        return settings.id_token.get_secret_value().strip(), "ROLLBACK_ID_TOKEN"
    if settings.id_token_file is not None:
        try:
            return settings.id_token_file.read_text().strip(), f"ROLLBACK_ID_TOKEN_FILE ({settings.id_token_file})"
        except OSError as e:
            raise TokenError(f"ROLLBACK_ID_TOKEN_FILE {settings.id_token_file}: {e.strerror}") from None
    if settings.id_token_command:
        try:
            out = subprocess.run(shlex.split(settings.id_token_command), capture_output=True, text=True, timeout=60,
                                 env={**os.environ, "ROLLBACK_AS": person})
        except (OSError, subprocess.TimeoutExpired) as e:
            raise TokenError(f"ROLLBACK_ID_TOKEN_COMMAND failed to run: {e}") from None
        if out.returncode != 0 or not out.stdout.strip():
            tail = (out.stderr.strip().splitlines() or [""])[-1][:300]
            raise TokenError(f"ROLLBACK_ID_TOKEN_COMMAND exited {out.returncode} without a token: {tail}")
        return out.stdout.strip().split()[-1], "ROLLBACK_ID_TOKEN_COMMAND"
    path = stored_path(settings, person)
    if path.is_file():
        return path.read_text().strip(), f"'starter.py login {person}' ({path})"
    return None, ""


def expiry_note(token: str) -> str:
    """'' or a warning a person can act on, read from the token itself (the worker decides)."""
    try:
        exp = jwt.decode(token, options={"verify_signature": False}).get("exp")
    except jwt.InvalidTokenError:
        return "it is not a JWT"
    if isinstance(exp, (int, float)) and exp < time.time():
        return f"it expired {ago(time.time() - exp)}"
    return ""


def sandbox_login(issuer: str, person: str) -> str:
    """A token for ``person`` from the sandbox's identity provider (its discovery document names
    ``sandbox_login_endpoint``); TokenError for any other issuer or a refusal."""
    url = issuer.rstrip("/") + "/.well-known/openid-configuration"
    try:
        doc = httpx.get(url, timeout=10).raise_for_status().json()
        login = doc.get("sandbox_login_endpoint")
        if not login:
            raise TokenError(f"{issuer} is not the sandbox's identity provider: sign in with your provider's own "
                             "tools and set ROLLBACK_ID_TOKEN_COMMAND (e.g. gcloud auth print-identity-token "
                             "--audiences=<identity.oidc.audience>) or ROLLBACK_ID_TOKEN_FILE")
        resp = httpx.post(login, json={"person": person}, timeout=10)
    except httpx.HTTPError as e:
        raise TokenError(f"the identity provider at {issuer} did not answer ({type(e).__name__}): is 'make run' "
                         "running?") from None
    if resp.status_code != 200:
        raise TokenError(f"{issuer} refused: {resp.json().get('error', resp.text[:200])}")
    return resp.json()["id_token"]
