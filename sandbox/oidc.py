"""The sandbox's identity provider: a small, honest OpenID Connect issuer (a stand-in for the
company's IdP, never used by product code outside the sandbox and tests).

It publishes what the worker's verification reads from any IdP, over HTTP on the sandbox's
endpoint server (``sandbox/endpoints.py``):

    GET  <issuer>/.well-known/openid-configuration   the discovery document (issuer, jwks_uri, ...)
    GET  <issuer>/jwks.json                          its public key (RS256, with a kid)
    POST <issuer>/login   {"person": "alice"}        a signed ID token for a catalog person

There are no passwords: it is the sandbox's stand-in for signing in, so ``starter.py login NAME``
exercises the real verification path (signature, iss, aud, exp, the email claim -> the person).
The signing key is made once and kept under the data dir, so tokens survive a restart.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

AUDIENCE = "rollback-orchestrator"
TOKEN_MINUTES = 30
PERSON_CLAIM = "email"


def load_or_create_key(path: Path) -> rsa.RSAPrivateKey:
    """The issuer's RSA key from ``path`` (PEM), made and stored (mode 0600) the first time."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(pem)
        except FileExistsError:
            pass  # made meanwhile by another process: use that one
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey), f"{path} does not hold an RSA key"
    return key


class SandboxIssuer:
    """Signs ID tokens for ``people`` (name -> claims such as email); ``url`` is set once served."""

    def __init__(self, key: rsa.RSAPrivateKey, people: dict[str, dict[str, Any]] | None = None,
                 audience: str = AUDIENCE) -> None:
        self.key, self.people, self.audience = key, dict(people or {}), audience
        self.url = ""
        public = key.public_key().public_numbers()
        self.kid = uuid.uuid5(uuid.NAMESPACE_OID, str(public.n)).hex[:16]  # stable for the key

    def discovery(self) -> dict[str, Any]:
        return {
            "issuer": self.url, "jwks_uri": f"{self.url}/jwks.json", "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["id_token"], "subject_types_supported": ["public"],
            "claims_supported": ["sub", "email", "name"], "sandbox_login_endpoint": f"{self.url}/login",
        }

    def jwks(self) -> dict[str, Any]:
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        return {"keys": [{**jwk, "kid": self.kid, "use": "sig", "alg": "RS256"}]}

    def mint(self, claims: dict[str, Any], *, minutes: float = TOKEN_MINUTES, issued: float | None = None,
             key: rsa.RSAPrivateKey | None = None, headers: dict[str, Any] | None = None) -> str:
        """An ID token with the standard claims (iss, aud, iat, exp) under ``claims``. Tests pass
        ``issued`` in the past, another ``key`` or ``headers`` to forge the bad ones."""
        iat = int(issued if issued is not None else time.time())
        body = {"iss": self.url, "aud": self.audience, "iat": iat, "exp": int(iat + minutes * 60), **claims}
        return jwt.encode(body, key or self.key, algorithm="RS256", headers={"kid": self.kid, **(headers or {})})

    def login(self, person: str) -> str:
        """A token for a person of the sandbox catalog; KeyError naming who exists otherwise."""
        claims = self.people.get(person)
        if claims is None:
            raise KeyError(f"{person!r} is not a person of the sandbox catalog "
                           f"(people: {', '.join(sorted(self.people)) or 'none'})")
        return self.mint({"sub": person, "name": person, **claims})

    def answer(self, method: str, path: str, body: bytes) -> tuple[int, dict[str, Any]]:
        """The HTTP answer to ``method path`` (``path`` below the issuer, e.g. ``/jwks.json``)."""
        path = "/" + path.strip("/")
        if method == "GET" and path == "/.well-known/openid-configuration":
            return 200, self.discovery()
        if method == "GET" and path == "/jwks.json":
            return 200, self.jwks()
        if method == "POST" and path == "/login":  # {"person": "alice"}
            try:
                token = self.login(str(json.loads(body[:4096] or b"{}").get("person", "")))
            except KeyError as e:
                return 404, {"error": e.args[0]}
            except (ValueError, AttributeError):
                return 400, {"error": 'send {"person": "<name in the catalog>"}'}
            return 200, {"id_token": token, "token_type": "id_token", "expires_in": TOKEN_MINUTES * 60}
        return 404, {"error": f"no such endpoint: {path}"}


def reply(handler: BaseHTTPRequestHandler, status: int, body: dict[str, Any]) -> None:
    data = json.dumps(body).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


class IssuerServer:
    """The issuer alone on 127.0.0.1:``port`` (0: a free one), for tests that play a company's own
    identity provider (tests/test_production.py); the sandbox serves it on its endpoint server."""

    def __init__(self, issuer: SandboxIssuer, port: int = 0) -> None:
        self.issuer = issuer

        class Handler(BaseHTTPRequestHandler):
            def _any(self) -> None:
                length = min(int(self.headers.get("Content-Length") or 0), 4096)
                reply(self, *issuer.answer(self.command, self.path.split("?")[0], self.rfile.read(length)))

            do_GET = do_POST = _any

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._server.daemon_threads = True
        host, real_port = self._server.server_address[:2]
        issuer.url = f"http://{host}:{real_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="oidc-issuer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
