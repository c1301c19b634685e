"""Test settings: every cache and store in a temporary folder, Prefect on a throwaway local server."""

import os
import tempfile

_root = tempfile.mkdtemp(prefix="semdpo-tests-")
os.environ.setdefault("SEMDPO_MODEL_CACHE", os.path.join(_root, "models"))
os.environ["SEMDPO_STORE"] = os.path.join(_root, "store")
os.environ["PREFECT_HOME"] = os.path.join(_root, "prefect")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_CACHE"] = os.path.join(_root, "datasets")
os.environ["TQDM_DISABLE"] = "1"
# S3 credentials for the local moto server only; never real ones.
os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
for _var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
    os.environ.pop(_var, None)

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def prefect_server():
    """One temporary Prefect API server (SQLite) for the session's flow tests."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server on 127.0.0.1, reached through a proxy that tests can cut."""
    from tests.servers import MotoServer, Proxy

    server = MotoServer()
    proxy = Proxy(server.port)
    proxy.start()
    os.environ["AWS_ENDPOINT_URL"] = proxy.url
    yield proxy
    proxy.stop()
    server.stop()
    os.environ.pop("AWS_ENDPOINT_URL", None)


@pytest.fixture
def s3_bucket(s3_server):
    """A fresh bucket; returns its s3:// URI with a prefix."""
    import uuid

    import boto3

    name = f"semdpo-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=name)
    return f"s3://{name}/artifacts"
