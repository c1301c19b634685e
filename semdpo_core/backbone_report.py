"""The backbones side by side: the paper's Tables 5-7 (a block per backbone) and Figure 3 (a scatter
per backbone and dataset) from each backbone's evaluation, with an overview of each method's
normalised average per backbone (as Tables 8-9 average over the datasets).

Each backbone is the config with `sft.base_model` set to it (`sft.backbones`); its evaluation is
read from the store as its own run left it. The normalised average is taken within each
(dataset, backbone), over `report.normalise_over`: scores are never compared across backbones'
scales.
"""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from semdpo_core.config import PipelineConfig, ReportConfig
from semdpo_core.context import open_store
from semdpo_core.plan import plan_pipeline
from semdpo_core.report import AVG, focus_method, normalised_methods, ordered, scatter_png, score_table, scores_markdown
from semdpo_core.schemas import EVALUATION
from semdpo_core.store import DatasetMissing


def backbone_evaluations(config: PipelineConfig) -> dict[str, pa.Table]:
    """{backbone: its EVALUATION rows}; a backbone not evaluated yet is an error that says so."""
    out, missing = {}, []
    for backbone, one in config.backbone_configs().items():
        ref = plan_pipeline(one).ref("evaluate")
        store = open_store(one.store_root())
        if store.is_committed(ref):
            out[backbone] = store.read_table(ref, EVALUATION)
        else:
            missing.append(backbone)
    if missing:
        raise DatasetMissing(f"backbone(s) {', '.join(missing)} not evaluated in {config.store_root()} yet: "
                             "`semdpo run` the config (it runs every backbone) first")
    return out


def backbone_scores(evaluations: dict[str, pa.Table], settings: ReportConfig) -> dict[str, pa.Table]:
    """{backbone: REPORT_SCORES}, each normalised within its own datasets and methods."""
    out = {}
    for backbone, evaluation in evaluations.items():
        methods = ordered(evaluation.column("method").to_pylist())
        focus = focus_method(methods, settings.focus)
        out[backbone] = score_table(evaluation, settings.average_over, normalised_methods(methods, settings, focus))
    return out


def overview(scores: dict[str, pa.Table]) -> list[dict[str, Any]]:
    """Per method: its normalised average in each backbone, averaged over that backbone's datasets."""
    by: dict[tuple[str, str], list[float]] = {}
    for backbone, table in scores.items():
        for r in table.to_pylist():
            if r["metric"] == AVG:
                by.setdefault((r["method"], backbone), []).append(r["mean"])
    methods = ordered([method for method, _ in by])
    return [{"method": m, **{b: statistics.fmean(by[(m, b)]) if (m, b) in by else None for b in scores}} for m in methods]


def backbone_markdown(scores: dict[str, pa.Table], settings: ReportConfig) -> str:
    """The overview, then each backbone's scores per dataset and method."""
    backbones = list(scores)
    out = ["# Sem-DPO: the backbones side by side (paper Tables 5-7)", "",
           "Every score is of the image against the ORIGINAL prompt. avg_score is normalised within each dataset "
           "and backbone; the overview averages it over the datasets.", "",
           "## avg_score per backbone", "", "| method | " + " | ".join(backbones) + " |", "|---|" + "---|" * len(backbones)]
    for row in overview(scores):
        out.append(f"| {row['method']} | " + " | ".join("-" if row[b] is None else f"{row[b]:.4f}" for b in backbones) + " |")
    for backbone, table in scores.items():
        rows = table.to_pylist()
        methods = ordered([r["method"] for r in rows])
        focus = focus_method(methods, settings.focus)
        out += ["", f"## {backbone}", ""]
        out += scores_markdown(rows, ordered([r["dataset"] for r in rows]), methods,
                               normalised_methods(methods, settings, focus))
    return "\n".join(out) + "\n"


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", name).strip("-")


def write_backbone_report(config: PipelineConfig, folder: Path) -> dict[str, Any]:
    """report.md, report.json, scores.parquet (a `backbone` column) and a scatter per backbone and
    dataset (paper Figure 3) in `folder`; returns the overview."""
    settings = config.report
    scores = backbone_scores(backbone_evaluations(config), settings)
    (folder / "plots").mkdir(parents=True, exist_ok=True)
    x = settings.semantic_metric
    for backbone, table in scores.items():
        methods = ordered(table.column("method").to_pylist())
        metrics = set(table.column("metric").to_pylist())
        for dataset in ordered(table.column("dataset").to_pylist()):
            for y in [m for m in settings.preference_metrics if m in metrics and x in metrics]:
                png = scatter_png(table, dataset, x, y, focus_method(methods, settings.focus))
                (folder / "plots" / f"scatter-{slug(backbone)}-{dataset}-{x}-vs-{y}.png").write_bytes(png)
    combined = pa.concat_tables([t.append_column("backbone", pa.array([b] * t.num_rows)) for b, t in scores.items()])
    pq.write_table(combined, folder / "scores.parquet")
    rows = overview(scores)
    (folder / "report.md").write_text(backbone_markdown(scores, settings), encoding="utf-8")
    (folder / "report.json").write_text(json.dumps({"backbones": list(scores), "overview": rows}, indent=2) + "\n")
    return {"backbones": list(scores), "overview": rows}
