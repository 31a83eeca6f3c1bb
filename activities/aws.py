"""boto3 clients for the worker and the one place AWS errors are classified."""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from typing import Any, Iterator

import boto3
import botocore.session
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    CredentialRetrievalError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
    ProfileNotFound,
)
from temporalio.exceptions import ApplicationError

THROTTLING = {
    "Throttling", "ThrottlingException", "ThrottledException", "RequestLimitExceeded",
    "TooManyRequestsException", "RequestThrottled", "SlowDown", "PriorRequestNotComplete",
}
ACCESS_DENIED = {
    "AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "UnrecognizedClientException",
    "InvalidClientTokenId", "ExpiredToken", "ExpiredTokenException", "AuthFailure",
}


# Configuration problems: nothing a retry can fix. Each message says what to set.
CONFIG_ERRORS = (NoRegionError, NoCredentialsError, PartialCredentialsError, ProfileNotFound,
                 CredentialRetrievalError)


def config_problem(e: BaseException) -> str:
    """What is wrong with the worker's AWS configuration, and the fix (no secrets in it)."""
    chain = ("AWS_ACCESS_KEY_ID + AWS_SECRET_ACCESS_KEY, AWS_PROFILE with the worker's ~/.aws mounted, "
             "or an instance/task role")
    if isinstance(e, NoRegionError):
        if os.environ.get("AWS_REGION") and not os.environ.get("AWS_DEFAULT_REGION"):
            return (f"no AWS region: AWS_REGION={os.environ['AWS_REGION']} is set, but boto3 reads "
                    f"AWS_DEFAULT_REGION; set AWS_DEFAULT_REGION={os.environ['AWS_REGION']}")
        return "no AWS region: set AWS_DEFAULT_REGION (e.g. us-east-1) in the worker's environment"
    if isinstance(e, ProfileNotFound):
        return (f"{e}: AWS_PROFILE names a profile the worker's ~/.aws/config and ~/.aws/credentials do not "
                "have; mount those files into the worker (docs/production.md) or fix AWS_PROFILE")
    if isinstance(e, NoCredentialsError):
        return f"no AWS credentials found; give the worker credentials by the standard chain: {chain}"
    if isinstance(e, PartialCredentialsError):
        return f"incomplete AWS credentials ({e}); set both halves, or use {chain}"
    return f"AWS credentials could not be loaded ({e}); check the worker's credential source: {chain}"


def config_error(what: str, e: BaseException) -> ApplicationError:
    return ApplicationError(f"{what}: {config_problem(e)}. Nothing was changed by this call; fix the worker's "
                            "configuration, restart it, then start the rollback again.",
                            type="AwsConfigError", non_retryable=True)


_LOADERS: dict[Any, Any] = {}  # botocore's model loader per data path, shared by this process's sessions
_LOADERS_LOCK = threading.Lock()


def new_session(region: str | None) -> boto3.session.Session:
    """A boto3 session (credentials, profile and region from the environment, as boto3's own) whose
    model loader is the process's: botocore reads and parses its JSON models (endpoints.json, each
    service's API) once per loader, so a process that builds more than one worker (the tests, make
    bench) parsed them again for each one, about 0.2 s of CPU a worker."""
    core = botocore.session.get_session()
    data_path = core.get_config_variable("data_path")
    with _LOADERS_LOCK:
        loader = _LOADERS.get(data_path)
        if loader is None:
            loader = _LOADERS[data_path] = core.get_component("data_loader")
        else:
            core.register_component("data_loader", loader)
        session = boto3.session.Session(botocore_session=core, region_name=region)
        loader.search_paths[:] = dict.fromkeys(loader.search_paths)  # boto3 adds its data folder each time
    return session


class AwsClients:
    """One boto3 session per worker; clients made once each (boto3 clients are thread-safe).

    The session and clients are made on first use, inside the error classification: a missing
    region or an unknown profile fails the step at once as ``AwsConfigError`` (not retried for
    10 minutes), with the fix in the message."""

    def __init__(self, region: str | None = None, concurrency: int = 32) -> None:
        """``concurrency``: the worker's activity threads. Each client's connection pool is that big, so
        no thread waits for, or throws away, a connection (botocore's default pool of 10 under 32
        threads logged thousands of "Connection pool is full, discarding connection")."""
        self._region = region
        self._session: boto3.session.Session | None = None
        self._clients: dict[str, Any] = {}
        self._lock = threading.Lock()
        # Activities retry with backoff; botocore only smooths over a single blip.
        self._config = Config(
            retries={"mode": "standard", "max_attempts": 2},
            connect_timeout=5,
            read_timeout=30,
            max_pool_connections=max(10, concurrency),
        )

    def __call__(self, service: str) -> Any:
        return self._client(service, self._config)

    def once(self, service: str) -> Any:
        """A client that never re-sends: for creates that are not idempotent on the server side
        (botocore's retry after a lost answer would create twice). The activity's own retry,
        which looks before it creates, takes over."""
        return self._client(service, self._config.merge(Config(retries={"total_max_attempts": 1})), "once")

    def _client(self, service: str, config: Config, flavour: str = "") -> Any:
        with self._lock:
            key = f"{service}:{flavour}"
            if key not in self._clients:
                try:
                    if self._session is None:
                        self._session = new_session(self._region)
                    self._clients[key] = self._session.client(service, config=config)
                except CONFIG_ERRORS as e:
                    raise config_error(f"{service} client", e) from None
            return self._clients[key]


@contextmanager
def aws_call(what: str) -> Iterator[None]:
    """Turn botocore errors into retryable or non-retryable activity errors naming ``what``."""
    try:
        yield
    except ClientError as e:
        err = e.response.get("Error", {})
        code = err.get("Code", "Unknown")
        message = err.get("Message", "") or str(e)
        status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if code in THROTTLING or status >= 500 or status == 429:
            raise ApplicationError(f"{what}: {code}: {message} (transient, retrying)",
                                   type="AwsTransient") from None
        if code in ACCESS_DENIED or status == 403:
            raise ApplicationError(
                f"{what}: access denied ({code}): {message}. Grant the worker's IAM role "
                "permission for this call, then start the rollback again.",
                type="AccessDenied", non_retryable=True) from None
        raise ApplicationError(f"{what}: {code}: {message}", type="AwsRequestError",
                               non_retryable=True) from None
    except CONFIG_ERRORS as e:
        raise config_error(what, e) from None
    except BotoCoreError as e:  # connection errors, timeouts
        raise ApplicationError(f"{what}: {e} (transient, retrying)", type="AwsTransient") from None
