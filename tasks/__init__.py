"""Prefect tasks for every stage: check the store, call the stage's computation, write its output, publish."""

import logging
import os

# Route the core library's logs (logger "semdpo") into Prefect's run logs and UI, at INFO.
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "semdpo")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# Without PREFECT_API_URL each run starts a temporary API server; Prefect waits 20 s for it, which
# a loaded machine exceeds (seen in CI: "Timed out while attempting to connect to ephemeral Prefect
# API server"). A slow start is not an error: wait up to two minutes.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
logging.getLogger("semdpo").setLevel(logging.INFO)
