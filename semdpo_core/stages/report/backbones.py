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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from semdpo_core.pipeline.config import PipelineConfig, ReportConfig
from semdpo_core.pipeline.plan import plan_pipeline
from semdpo_core.pipeline.schemas import EVALUATION
from semdpo_core.stages.report.markdown import scores_markdown
from semdpo_core.stages.report.plots import scatter_png
from semdpo_core.stages.report.tables import (
    AVG,
    alpha_selection,
    normalised_methods,
    ordered,
    report_focus,
    score_table,
)
from semdpo_core.store.artifact_store import DatasetMissing, open_store


@dataclass
class BackboneScores:
    """One backbone's REPORT_SCORES, the method its report focuses on and those its average is over."""

    table: pa.Table
    focus: str | None
    normalised_over: list[str] | None


def backbone_evaluations(config: PipelineConfig) -> dict[str, tuple[pa.Table, pa.Table | None]]:
    """{backbone: (its EVALUATION rows, its sweep's validation rows when alpha is chosen)}; a
    backbone not evaluated yet is an error that says so."""
    out, missing = {}, []
    for backbone, one in config.backbone_configs().items():
        plan = plan_pipeline(one)
        store = open_store(one.store_root())
        refs = [plan.ref("evaluate"), *([plan.ref("validate")] if plan.has("validate") else [])]
        if all(store.is_committed(ref) for ref in refs):
            out[backbone] = (store.read_table(refs[0], EVALUATION),
                             store.read_table(refs[1], EVALUATION) if len(refs) > 1 else None)
        else:
            missing.append(backbone)
    if missing:
        raise DatasetMissing(f"backbone(s) {', '.join(missing)} not evaluated in {config.store_root()} yet: "
                             "`semdpo run` the config (it runs every backbone) first")
    return out


def backbone_scores(evaluations: dict[str, tuple[pa.Table, pa.Table | None]],
                    settings: ReportConfig) -> dict[str, BackboneScores]:
    """Each backbone's scores, normalised within its own datasets and methods, focused as its own
    report is (on the alpha its sweep chose)."""
    out = {}
    for backbone, (evaluation, validation) in evaluations.items():
        methods = ordered(evaluation.column("method").to_pylist())
        selection = alpha_selection(validation, evaluation, settings.average_over) if validation is not None else None
        focus = report_focus(methods, settings, selection)
        normalised = normalised_methods(methods, settings, focus)
        out[backbone] = BackboneScores(score_table(evaluation, settings.average_over, normalised), focus, normalised)
    return out


def overview(scores: dict[str, BackboneScores]) -> list[dict[str, Any]]:
    """Per method: its normalised average in each backbone, averaged over that backbone's datasets."""
    by: dict[tuple[str, str], list[float]] = {}
    for backbone, one in scores.items():
        for r in one.table.to_pylist():
            if r["metric"] == AVG:
                by.setdefault((r["method"], backbone), []).append(r["mean"])
    methods = ordered([method for method, _ in by])
    return [{"method": m, **{b: statistics.fmean(by[(m, b)]) if (m, b) in by else None for b in scores}}
            for m in methods]


def backbone_markdown(scores: dict[str, BackboneScores]) -> str:
    """The overview, then each backbone's scores per dataset and method."""
    backbones = list(scores)
    out = ["# Sem-DPO: the backbones side by side (paper Tables 5-7)", "",
           "Every score is of the image against the ORIGINAL prompt. avg_score is normalised within each dataset "
           "and backbone; the overview averages it over the datasets.", "",
           "## avg_score per backbone", "", "| method | " + " | ".join(backbones) + " |",
           "|---|" + "---|" * len(backbones)]
    for row in overview(scores):
        out.append(f"| {row['method']} | "
                   + " | ".join("-" if row[b] is None else f"{row[b]:.4f}" for b in backbones) + " |")
    for backbone, one in scores.items():
        rows = one.table.to_pylist()
        out += ["", f"## {backbone}", ""]
        out += scores_markdown(rows, ordered([r["dataset"] for r in rows]), ordered([r["method"] for r in rows]),
                               one.normalised_over)
    return "\n".join(out) + "\n"


def slugs(names: list[str]) -> dict[str, str]:
    """{name: a file-name form of it}, distinct even where two names differ only in punctuation."""
    out: dict[str, str] = {}
    for name in names:
        short = re.sub(r"[^A-Za-z0-9.]+", "-", name).strip("-")
        candidate, n = short, 1
        while candidate in out.values():
            n += 1
            candidate = f"{short}-{n}"
        out[name] = candidate
    return out


def write_backbone_report(config: PipelineConfig, folder: Path) -> dict[str, Any]:
    """report.md, report.json, scores.parquet (a `backbone` column) and a scatter per backbone and
    dataset (paper Figure 3) in `folder`; returns the overview."""
    settings = config.report
    scores = backbone_scores(backbone_evaluations(config), settings)
    (folder / "plots").mkdir(parents=True, exist_ok=True)
    x = settings.semantic_metric
    names = slugs(list(scores))
    for backbone, one in scores.items():
        metrics = set(one.table.column("metric").to_pylist())
        for dataset in ordered(one.table.column("dataset").to_pylist()):
            for y in [m for m in settings.preference_metrics if m in metrics and x in metrics]:
                png = scatter_png(one.table, dataset, x, y, one.focus)
                (folder / "plots" / f"scatter-{names[backbone]}-{dataset}-{x}-vs-{y}.png").write_bytes(png)
    combined = pa.concat_tables([one.table.append_column("backbone", pa.array([b] * one.table.num_rows))
                                 for b, one in scores.items()])
    pq.write_table(combined, folder / "scores.parquet")
    rows = overview(scores)
    (folder / "report.md").write_text(backbone_markdown(scores), encoding="utf-8")
    focus = {b: {"focus": one.focus, "normalised_over": one.normalised_over} for b, one in scores.items()}
    (folder / "report.json").write_text(json.dumps({"backbones": list(scores), "overview": rows, "per_backbone": focus},
                                                   indent=2) + "\n")
    return {"backbones": list(scores), "overview": rows}
