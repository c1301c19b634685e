"""Prefect flows: the whole pipeline from a config, and the `semdpo` command."""

import tasks  # noqa: F401  (sets up logging and Prefect settings before Prefect is imported)
