"""The human study's report as a Prefect flow (`semdpo-human-eval-report`): the paper's tables
and tests from the votes so far, written beside the study and published as the
`semdpo-human-eval` artifact."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger

from semdpo_core.human_eval.report import write_report
from tasks.artifacts import publish_human_eval


@flow(name="semdpo-human-eval-report")
def human_eval_report(folder: str, database: str | None = None, out: str | None = None) -> str:
    """Write the study's report from its votes; returns the report folder."""
    summary, where = write_report(Path(folder), database, Path(out) if out else None)
    get_run_logger().info("%d votes from %d participants -> %s", summary.votes, summary.participants_voted,
                          where / "report.md")
    publish_human_eval(where)
    return str(where)
