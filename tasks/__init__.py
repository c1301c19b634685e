"""Prefect tasks for every stage: check the store, call the stage's computation, write its output, publish."""

import logging
import os

# Route the core library's logs (logger "semdpo") into Prefect's run logs and UI, at INFO.
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "semdpo")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# The library also logs outside flow runs (a test, a notebook): that is not a mistake to warn of.
os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")
# Without PREFECT_API_URL each run starts a temporary API server; Prefect waits 20 s for it, which
# a loaded machine exceeds (seen in CI: "Timed out while attempting to connect to ephemeral Prefect
# API server"). A slow start is not an error: wait up to two minutes.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

from prefect.logging.configuration import ensure_logging_setup  # noqa: E402  (after the settings above)

LIBRARY_LOGGER = "semdpo"


def route_library_logs() -> None:
    """Give the library's logger Prefect's API log handler. Prefect hands it to the loggers in
    PREFECT_LOGGING_EXTRA_LOGGERS only while it sets up logging, which a deployment's flow run
    (or a worker) does before it imports this package: the variable set above comes too late."""
    ensure_logging_setup()
    library = logging.getLogger(LIBRARY_LOGGER)
    library.setLevel(logging.INFO)
    for handler in logging.getLogger("prefect.extra").handlers:
        if handler not in library.handlers:
            library.addHandler(handler)


route_library_logs()
