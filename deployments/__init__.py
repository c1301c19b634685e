"""Deployment helpers: work pools and registration of every deployment in prefect.yaml."""
