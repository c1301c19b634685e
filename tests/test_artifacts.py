"""Artifacts are views: a failure to publish one is logged and never fails or holds up the run; while
the Prefect API is unreachable they are skipped for a while instead of being retried one by one."""

import logging
import time

import pytest
from prefect.artifacts import create_markdown_artifact
from prefect.settings import PREFECT_API_URL, temporary_settings

import tasks.artifacts as artifacts
from tests.servers import free_port


@pytest.fixture
def api_up_again(monkeypatch):
    """Each test starts with the API taken as reachable."""
    monkeypatch.setattr(artifacts, "_api_down_until", 0.0)


def test_an_unreachable_api_is_skipped_for_a_while_not_retried_per_artifact(api_up_again, caplog):
    calls = []

    def make() -> str:
        calls.append(1)
        return create_markdown_artifact(key="semdpo-test", markdown="# hello")

    dead = f"http://127.0.0.1:{free_port()}/api"  # nothing listens there
    with temporary_settings(updates={PREFECT_API_URL: dead}), caplog.at_level(logging.WARNING, "semdpo.stages"):
        started = time.monotonic()
        assert artifacts.publish("test", make) is None
        assert time.monotonic() - started < 10  # not Prefect's minute of client retries
        assert artifacts.publish("test", make) is None and len(calls) == 1  # skipped: not tried again
    [warning] = [r.getMessage() for r in caplog.records]
    assert "the Prefect API did not answer" in warning and "skipped for 30 s, the run goes on" in warning


def test_a_failing_artifact_is_logged_and_the_next_one_is_still_tried(api_up_again, caplog):
    def broken() -> None:
        raise ValueError("bad table")

    with caplog.at_level(logging.DEBUG, "semdpo.stages"):
        assert artifacts.publish("metrics", broken) is None
        assert artifacts.publish("progress", broken, quiet=True) is None
        assert artifacts.publish("run", lambda: "id") == "id"  # not an outage: nothing is skipped
    levels = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert levels == [("WARNING", "could not publish the metrics artifact: bad table"),
                      ("DEBUG", "could not publish the progress artifact: bad table")]
