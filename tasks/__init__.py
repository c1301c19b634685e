"""Prefect tasks, one module per stage: load inputs from the store, call the core, save outputs."""

import logging
import os

# Route the core library's logs (logger "semdpo") into Prefect's run logs and UI, at INFO.
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "semdpo")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
logging.getLogger("semdpo").setLevel(logging.INFO)
