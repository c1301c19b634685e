"""Storage backends: bytes under keys, on a local directory or any S3-compatible object store.

Every write is atomic: a key holds either nothing or all of its bytes (a temporary file renamed
into place locally; a single PUT on S3). Messages name keys as URIs and never hold credentials.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit, urlunsplit


class StoreError(RuntimeError):
    """A storage operation that failed; the message names the key and what to do."""


class StoreUnavailable(StoreError):
    """The store could not be reached (after retries): nothing was lost, rerun once it is back."""


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
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

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


class S3Backend:
    """An S3 bucket and prefix through boto3; AWS S3, MinIO, Ceph or any S3-compatible server.

    Endpoint, region and credentials come from the standard AWS environment variables and config
    files (AWS_ENDPOINT_URL, AWS_DEFAULT_REGION, AWS_ACCESS_KEY_ID, AWS_PROFILE, ...). Transient
    faults (connection refused, timeouts, 5xx, throttling) are retried with exponential backoff
    by botocore's standard retry mode; AWS_MAX_ATTEMPTS sets how many tries (default 8).
    """

    def __init__(self, uri: str):
        import boto3
        from botocore.config import Config

        parts = urlsplit(uri)
        self.bucket, self.prefix = parts.netloc, parts.path.strip("/")
        if not self.bucket:
            raise StoreError(f"store {uri!r}: no bucket; use s3://BUCKET/PREFIX")
        self.attempts = int(os.environ.get("AWS_MAX_ATTEMPTS", "8"))
        config = Config(retries={"mode": "standard", "max_attempts": self.attempts}, connect_timeout=5, read_timeout=120)
        self.client = boto3.session.Session().client("s3", config=config)
        endpoint = urlsplit(self.client.meta.endpoint_url)
        # never show credentials that a URL might carry
        netloc = (endpoint.hostname or "") + (f":{endpoint.port}" if endpoint.port else "")
        self.endpoint = urlunsplit((endpoint.scheme, netloc, endpoint.path, "", ""))

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def describe(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    def _call(self, action: str, key: str, fn, **kwargs):
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(Bucket=self.bucket, **kwargs)
        except ClientError as e:
            code = str(e.response.get("Error", {}).get("Code", ""))
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if code in ("404", "NoSuchKey", "NotFound"):
                raise KeyMissing(f"{self.describe(key)} does not exist") from None
            if code == "NoSuchBucket":
                raise StoreError(f"bucket {self.bucket!r} does not exist at {self.endpoint}; create it first") from None
            if status >= 500 or code in ("SlowDown", "Throttling", "RequestTimeout"):
                raise StoreUnavailable(
                    f"S3 endpoint {self.endpoint}: {action} {self.describe(key)} failed after {self.attempts} "
                    f"attempts ({code}); finished work is kept, rerun once the store is healthy"
                ) from None
            raise StoreError(f"S3 endpoint {self.endpoint}: {action} {self.describe(key)} refused ({code}): {e}") from None
        except BotoCoreError as e:
            raise StoreUnavailable(
                f"S3 endpoint {self.endpoint} unreachable: {action} {self.describe(key)} failed after "
                f"{self.attempts} attempts ({type(e).__name__}); finished work is kept, rerun once the store is back"
            ) from None

    def read_bytes(self, key: str) -> bytes:
        response = self._call("reading", key, self.client.get_object, Key=self._key(key))
        return response["Body"].read()

    def write_bytes(self, key: str, data: bytes) -> None:
        self._call("writing", key, self.client.put_object, Key=self._key(key), Body=data)

    def exists(self, key: str) -> bool:
        try:
            self._call("checking", key, self.client.head_object, Key=self._key(key))
            return True
        except KeyMissing:
            return False

    def delete(self, key: str) -> None:
        self._call("deleting", key, self.client.delete_object, Key=self._key(key))

    def list(self, prefix: str) -> list[str]:
        keys, token = [], None
        full = self._key(prefix)
        while True:
            kwargs = {"Prefix": full, **({"ContinuationToken": token} if token else {})}
            page = self._call("listing", prefix, self.client.list_objects_v2, **kwargs)
            strip = len(self.prefix) + 1 if self.prefix else 0
            keys += [obj["Key"][strip:] for obj in page.get("Contents", [])]
            if not page.get("IsTruncated"):
                return sorted(keys)
            token = page["NextContinuationToken"]

    def matches(self, key: str, sha256: str, md5: str) -> bool:
        try:
            head = self._call("checking", key, self.client.head_object, Key=self._key(key))
        except KeyMissing:
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
