"""Storage backends: bytes under keys, on a local directory or any S3-compatible object store.

Every write is atomic: a key holds either nothing or all of its bytes (a temporary file renamed
into place locally; a single PUT on S3). Messages name keys as URIs and never hold credentials.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar
from urllib.parse import urlsplit, urlunsplit

from semdpo_core.store.atomic_files import atomic_write, remove_empty_folders


class StoreError(RuntimeError):
    """A storage operation that failed; the message names the key and what to do."""


class StoreUnavailable(StoreError):
    """The store stayed unreachable for the whole retry budget: nothing was lost, rerun once it is back."""


class KeyMissing(StoreError, FileNotFoundError):
    """No object under that key."""


class Backend(Protocol):
    def read_bytes(self, key: str) -> bytes: ...
    def write_bytes(self, key: str, data: bytes) -> None: ...
    def exists(self, key: str) -> bool: ...
    def delete(self, key: str) -> None: ...
    def list(self, prefix: str) -> list[str]: ...
    def matches(self, key: str, sha256: str, md5: str) -> bool: ...
    def describe(self, key: str) -> str: ...
    def sizes(self, prefix: str) -> dict[str, int]: ...


def digests(data: bytes) -> dict[str, str]:
    """sha256 (what readers verify) and md5 (what S3 reports as the ETag of a single PUT)."""
    return {"sha256": hashlib.sha256(data).hexdigest(), "md5": hashlib.md5(data, usedforsecurity=False).hexdigest()}


class LocalBackend:
    """A directory on this machine (the default: no server needed)."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().resolve()

    def path(self, key: str) -> Path:
        return self.root / key

    def read_bytes(self, key: str) -> bytes:
        try:
            return self.path(key).read_bytes()
        except FileNotFoundError:
            raise KeyMissing(f"{self.describe(key)} does not exist") from None

    def write_bytes(self, key: str, data: bytes) -> None:
        atomic_write(self.path(key), data)

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def delete(self, key: str) -> None:
        path = self.path(key)
        path.unlink(missing_ok=True)
        remove_empty_folders(path.parent, self.root)  # a deleted checkpoint leaves no empty step-N folder

    def list(self, prefix: str) -> list[str]:
        base = self.path(prefix)
        if not base.is_dir():
            return []
        return sorted(
            str(p.relative_to(self.root)) for p in base.rglob("*") if p.is_file() and not p.name.startswith(".")
        )

    def matches(self, key: str, sha256: str, md5: str) -> bool:
        path = self.path(key)
        if not path.is_file():
            return False
        h = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest() == sha256

    def describe(self, key: str) -> str:
        return str(self.path(key))

    def sizes(self, prefix: str) -> dict[str, int]:
        """{key: bytes} of every key under `prefix` (what `semdpo gc` weighs)."""
        return {key: self.path(key).stat().st_size for key in self.list(prefix)}


# Transient S3 faults are retried for a time budget, not a count (botocore's retry configuration
# counts attempts only, so the loop around it stays ours): a store restarting for minutes
# must not stop a day-long run. Each call gets a few botocore attempts; around it, backoff from
# RETRY_FIRST_S doubling to RETRY_CAP_S until the budget has passed since the call first failed.
RETRY_SECONDS_VAR = "SEMDPO_STORE_RETRY_SECONDS"
DEFAULT_RETRY_SECONDS = 300.0
FIRST_CONTACT_SECONDS = 30.0  # the budget until the endpoint has answered once: a mistyped one fails fast
RETRY_FIRST_S, RETRY_CAP_S = 0.5, 15.0
WARN_EVERY_S = 30.0
DEFAULT_CALL_ATTEMPTS = 2  # botocore's own tries per call (AWS_MAX_ATTEMPTS overrides)
THROTTLING_CODES = frozenset({
    "SlowDown", "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottled",
    "RequestThrottledException", "TooManyRequestsException", "RequestLimitExceeded", "BandwidthLimitExceeded",
})
TRANSIENT_CODES = THROTTLING_CODES | {"RequestTimeout", "RequestTimeoutException", "PriorRequestNotComplete",
                                      "InternalError", "ServiceUnavailable"}
CREDENTIAL_CODES = frozenset({"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
                              "InvalidToken", "TokenRefreshRequired"})

log = logging.getLogger("semdpo.store")

T = TypeVar("T")

# the clock and the wait of the retries, module attributes so that tests can run them on a fake clock
_clock: Callable[[], float] = time.monotonic
_sleep: Callable[[float], None] = time.sleep


def retry_seconds_from_env() -> float:
    """The transient-fault budget in seconds: SEMDPO_STORE_RETRY_SECONDS, default 300."""
    raw = os.environ.get(RETRY_SECONDS_VAR, "").strip()
    if not raw:
        return DEFAULT_RETRY_SECONDS
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:  # also refuses nan
        raise StoreError(f"{RETRY_SECONDS_VAR}={raw!r} is not a number of seconds; set it to e.g. 300, or unset it")
    return seconds


@dataclass
class Outage:
    """One call's run of transient faults: when it began, the next backoff, when it was last reported."""

    budget: float
    started: float = field(default_factory=lambda: _clock())
    delay: float = RETRY_FIRST_S
    warned: float | None = None

    def elapsed(self) -> float:
        return _clock() - self.started

    def left(self) -> float:
        return max(0.0, self.budget - self.elapsed())

    def due_warning(self) -> bool:
        """True on the first fault and then at most every WARN_EVERY_S (one log line, not one per try)."""
        now = _clock()
        if self.warned is not None and now - self.warned < WARN_EVERY_S:
            return False
        self.warned = now
        return True

    def pause(self) -> float:
        """Seconds to wait before the next try: the backoff, never past the budget."""
        wait = min(self.delay, self.left())
        self.delay = min(self.delay * 2, RETRY_CAP_S)
        return wait


class S3Backend:
    """An S3 bucket and prefix through boto3; AWS S3, MinIO, Ceph or any S3-compatible server.

    Endpoint, region and credentials come from the standard AWS environment variables and config
    files (AWS_ENDPOINT_URL, AWS_DEFAULT_REGION, AWS_ACCESS_KEY_ID, AWS_PROFILE, ...). Transient
    faults (connection refused or reset, timeouts, 5xx, throttling) are retried for a time, not a
    count: botocore tries each call a few times (AWS_MAX_ATTEMPTS, default 2), and around that
    each operation backs off (0.5 s doubling to 15 s) until `retry_seconds` have passed since it
    first failed (SEMDPO_STORE_RETRY_SECONDS, default 300, read when the backend is created), so
    an endpoint that restarts for minutes does not stop a run. Every operation is idempotent (one
    PUT, GET, HEAD, DELETE or list page), so a retry never leaves half a change. Other errors
    (missing key or bucket, access denied) are not retried.
    """

    def __init__(self, uri: str, retry_seconds: float | None = None):
        import boto3
        from botocore.config import Config

        parts = urlsplit(uri)
        self.bucket, self.prefix = parts.netloc, parts.path.strip("/")
        if not self.bucket:
            raise StoreError(f"store {uri!r}: no bucket; use s3://BUCKET/PREFIX")
        self.retry_seconds = retry_seconds_from_env() if retry_seconds is None else float(retry_seconds)
        self.answered = False  # until a call succeeds, faults get FIRST_CONTACT_SECONDS at most
        raw_attempts = os.environ.get("AWS_MAX_ATTEMPTS") or str(DEFAULT_CALL_ATTEMPTS)
        if not raw_attempts.strip().isdigit() or int(raw_attempts) < 1:
            raise StoreError(f"AWS_MAX_ATTEMPTS={raw_attempts!r} is not a count of tries; "
                             "set it to e.g. 2, or unset it")
        self.attempts = int(raw_attempts)
        # total_max_attempts counts the first try, as AWS_MAX_ATTEMPTS does (botocore's max_attempts does not)
        retries = {"mode": "standard", "total_max_attempts": self.attempts}
        config = Config(retries=retries, connect_timeout=5, read_timeout=120)
        self.client = boto3.session.Session().client("s3", config=config)
        endpoint = urlsplit(self.client.meta.endpoint_url)
        # never show credentials that a URL might carry
        netloc = (endpoint.hostname or "") + (f":{endpoint.port}" if endpoint.port else "")
        self.endpoint = urlunsplit((endpoint.scheme, netloc, endpoint.path, "", ""))

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def describe(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    def _call(self, action: str, key: str, op: Callable[[], T]) -> T:
        """`op()`, retrying transient faults with backoff until `retry_seconds` have passed since
        its first failure; any other error becomes a StoreError that says what to do."""
        from botocore.exceptions import BotoCoreError, ClientError

        outage: Outage | None = None
        while True:
            try:
                result = op()
            except (ClientError, BotoCoreError) as e:
                fault = self._transient_fault(e)
                if fault is None:
                    raise self._refusal(action, key, e) from None
                outage = outage or Outage(self.retry_seconds if self.answered
                                          else min(self.retry_seconds, FIRST_CONTACT_SECONDS))
                if outage.left() <= 0:
                    raise self._unavailable(action, key, fault, outage) from None
                if outage.due_warning():
                    log.warning("S3 endpoint %s unreachable (%s): retrying the %s of %s for up to %.0f s more",
                                self.endpoint, fault, action, self.describe(key), outage.left())
                _sleep(outage.pause())
                continue
            self.answered = True
            if outage is not None:
                log.info("S3 endpoint %s answers again: the %s of %s succeeded after %.0f s",
                         self.endpoint, action, self.describe(key), outage.elapsed())
            return result

    @staticmethod
    def _transient_fault(e: Exception) -> str | None:
        """The fault's name when it is worth retrying (the endpoint is down, slow or overloaded), else None."""
        from botocore.exceptions import (
            ClientError,
            ConnectionError,
            HTTPClientError,
            IncompleteReadError,
            SSLError,
        )

        if isinstance(e, ClientError):
            code = str(e.response.get("Error", {}).get("Code", ""))
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0
            return (code or f"HTTP {status}") if status >= 500 or status == 429 or code in TRANSIENT_CODES else None
        if isinstance(e, SSLError) and "CERTIFICATE_VERIFY_FAILED" in str(e):
            return None  # a configuration fault: retrying cannot fix it
        return type(e).__name__ if isinstance(e, (ConnectionError, HTTPClientError, IncompleteReadError)) else None

    def _refusal(self, action: str, key: str, e: Exception) -> StoreError:
        """A non-transient error as one sentence naming the key and what to do."""
        from botocore.exceptions import (
            ClientError,
            NoCredentialsError,
            PartialCredentialsError,
            SSLError,
        )

        where = self.describe(key)
        if isinstance(e, ClientError):
            code = str(e.response.get("Error", {}).get("Code", ""))
            if code in ("404", "NoSuchKey", "NotFound"):
                return KeyMissing(f"{where} does not exist")
            if code == "NoSuchBucket":
                return StoreError(f"bucket {self.bucket!r} does not exist at {self.endpoint}; create it first")
            if code in CREDENTIAL_CODES:
                return StoreError(f"S3 endpoint {self.endpoint} refused the {action} of {where} ({code}); check the "
                                  "credentials (AWS_ACCESS_KEY_ID, AWS_PROFILE) and the bucket's permissions")
            return StoreError(f"S3 endpoint {self.endpoint} refused the {action} of {where} ({code}): {e}")
        if isinstance(e, (NoCredentialsError, PartialCredentialsError)):
            return StoreError(f"no S3 credentials for the {action} of {where}; set AWS_ACCESS_KEY_ID and "
                              "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE")
        if isinstance(e, SSLError):
            return StoreError(f"S3 endpoint {self.endpoint}: the {action} of {where} failed TLS verification ({e}); "
                              "point AWS_CA_BUNDLE at the endpoint's CA certificate")
        return StoreError(f"S3 endpoint {self.endpoint}: the {action} of {where} failed ({type(e).__name__}: {e})")

    def _unavailable(self, action: str, key: str, fault: str, outage: Outage) -> StoreUnavailable:
        """The budget is spent: one sentence naming the endpoint, key, how long it retried and what to do."""
        if not self.answered:
            return StoreUnavailable(
                f"S3 endpoint {self.endpoint} does not answer ({fault}): the {action} of {self.describe(key)} failed "
                f"for {outage.elapsed():.0f} s and the endpoint has not answered once since this process started; "
                "check AWS_ENDPOINT_URL (and that the server runs); nothing was written"
            )
        return StoreUnavailable(
            f"S3 endpoint {self.endpoint} unreachable ({fault}): the {action} of {self.describe(key)} still failed "
            f"after {outage.elapsed():.0f} s of retries; finished work is kept in the store; rerun once the "
            f"endpoint answers, or raise {RETRY_SECONDS_VAR} (now {self.retry_seconds:g})"
        )

    def read_bytes(self, key: str) -> bytes:
        # the body is read inside the retried call: a connection cut mid-download is retried too
        return self._call(
            "read", key, lambda: self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
        )

    def write_bytes(self, key: str, data: bytes) -> None:
        self._call("write", key, lambda: self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data))

    def _head(self, key: str) -> dict | None:
        """The object's metadata, or None when there is none."""
        try:
            return self._call("check", key, lambda: self.client.head_object(Bucket=self.bucket, Key=self._key(key)))
        except KeyMissing:
            return None

    def exists(self, key: str) -> bool:
        return self._head(key) is not None

    def delete(self, key: str) -> None:
        self._call("delete", key, lambda: self.client.delete_object(Bucket=self.bucket, Key=self._key(key)))

    def list(self, prefix: str) -> list[str]:
        return sorted(self.sizes(prefix))

    def sizes(self, prefix: str) -> dict[str, int]:
        """{key: bytes} of every key under `prefix`, from the listing (no object is read)."""
        sizes: dict[str, int] = {}
        token = None
        full = self._key(prefix)
        strip = len(self.prefix) + 1 if self.prefix else 0
        while True:
            kwargs = {"Bucket": self.bucket, "Prefix": full, **({"ContinuationToken": token} if token else {})}
            page = self._call("list", prefix, lambda kwargs=kwargs: self.client.list_objects_v2(**kwargs))
            sizes.update({obj["Key"][strip:]: obj["Size"] for obj in page.get("Contents", [])})
            if not page.get("IsTruncated"):
                return sizes
            token = page["NextContinuationToken"]

    def matches(self, key: str, sha256: str, md5: str) -> bool:
        head = self._head(key)
        if head is None:
            return False
        etag = head.get("ETag", "").strip('"')
        if etag and "-" not in etag:  # a single-PUT ETag is the MD5 of the bytes: no download needed
            return etag == md5
        return hashlib.sha256(self.read_bytes(key)).hexdigest() == sha256


def open_backend(root: str) -> Backend:
    """The backend for a store root: `s3://bucket/prefix`, or a local directory."""
    if root.startswith("s3://"):
        return S3Backend(root)
    if "://" in root and not root.startswith("file://"):
        raise StoreError(f"store {root!r}: use a local directory or s3://bucket/prefix")
    return LocalBackend(root.removeprefix("file://"))
