"""Test settings: every cache and store in a temporary folder, Prefect on a throwaway local server."""

import os
import tempfile

_root = tempfile.mkdtemp(prefix="semdpo-tests-")
os.environ.setdefault("SEMDPO_MODEL_CACHE", os.path.join(_root, "models"))
os.environ["SEMDPO_STORE"] = os.path.join(_root, "store")
os.environ["PREFECT_HOME"] = os.path.join(_root, "prefect")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TQDM_DISABLE"] = "1"

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def prefect_server():
    """One temporary Prefect API server (SQLite) for the session's flow tests."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
