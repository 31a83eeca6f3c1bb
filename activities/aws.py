"""boto3 clients for the worker and the one place AWS errors are classified."""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Any, Iterator

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    NoCredentialsError,
    NoRegionError,
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


class AwsClients:
    """One boto3 session per worker; clients made once each (boto3 clients are thread-safe)."""

    def __init__(self, region: str | None = None) -> None:
        self._session = boto3.session.Session(region_name=region)
        self._clients: dict[str, Any] = {}
        self._lock = threading.Lock()
        # Activities retry with backoff; botocore only smooths over a single blip.
        self._config = Config(
            retries={"mode": "standard", "max_attempts": 2},
            connect_timeout=5,
            read_timeout=30,
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
                self._clients[key] = self._session.client(service, config=config)
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
    except (NoCredentialsError, NoRegionError) as e:
        raise ApplicationError(f"{what}: {e}. Configure AWS credentials/region for the worker.",
                               type="AwsConfigError", non_retryable=True) from None
    except BotoCoreError as e:  # connection errors, timeouts

        raise ApplicationError(f"{what}: {e} (transient, retrying)", type="AwsTransient") from None
