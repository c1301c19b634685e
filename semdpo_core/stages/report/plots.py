"""The report's figures as PNG bytes: CLIP vs preference score per method (paper Figure 3), the
alpha sweep (Figure 5), training curves, and a grid of sample images per method."""

from __future__ import annotations

import io
from typing import Any

import pyarrow as pa

from semdpo_core.scorers.base import decode_png
from semdpo_core.stages.report.tables import ordered, sweep_alpha


def means_by(scores: pa.Table, dataset: str) -> dict[tuple[str, str], float]:
    return {(r["method"], r["metric"]): r["mean"] for r in scores.to_pylist() if r["dataset"] == dataset}


def scatter_png(scores: pa.Table, dataset: str, x: str, y: str, focus: str | None) -> bytes:
    """One point per method, `x` against `y` mean score (paper Figure 3: upper right is better)."""
    means = means_by(scores, dataset)
    methods = [m for m in ordered(scores.column("method").to_pylist()) if (m, x) in means and (m, y) in means]
    fig, ax = _axes()
    for method in methods:
        ax.scatter(means[(method, x)], means[(method, y)], s=60 if method == focus else 30,
                   marker="*" if method == focus else "o", zorder=3)
        ax.annotate(method, (means[(method, x)], means[(method, y)]), fontsize=7, xytext=(4, 3),
                    textcoords="offset points")
    return _png(fig, xlabel=x, ylabel=y, title=f"{dataset}: {x} vs {y}")


def sweep_png(scores: pa.Table, dataset: str, x: str, y: str) -> bytes:
    """Sem-DPO's alpha sweep: `x` against `y`, a point per alpha, joined in alpha order (Figure 5)."""
    means = means_by(scores, dataset)
    runs = sorted((sweep_alpha(m), m) for m in ordered(scores.column("method").to_pylist())
                  if sweep_alpha(m) is not None)
    runs = [(a, m) for a, m in runs if (m, x) in means and (m, y) in means]
    fig, ax = _axes()
    ax.plot([means[(m, x)] for _, m in runs], [means[(m, y)] for _, m in runs], marker="o")
    for alpha, method in runs:
        ax.annotate(f"α={alpha:g}", (means[(method, x)], means[(method, y)]), fontsize=7, xytext=(4, 3),
                    textcoords="offset points")
    return _png(fig, xlabel=x, ylabel=y, title=f"{dataset}: alpha sweep")


def _axes() -> tuple[Any, Any]:
    """A figure with one set of axes, the size every report plot has."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.5, 3.6), dpi=120)
    return fig, fig.add_subplot()


def _png(fig: Any, **labels: str) -> bytes:
    """The figure as PNG bytes: its axes labelled, gridded and given four short-numbered ticks."""
    from matplotlib.ticker import FormatStrFormatter, MaxNLocator

    for ax in fig.axes:
        ax.set(**labels)
        ax.grid(alpha=0.3)
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_locator(MaxNLocator(4))
            axis.set_major_formatter(FormatStrFormatter("%.4g"))
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


CURVES = ("loss", "reward_margin", "accuracy", "mean_weight", "effective_sample_size", "learning_rate")


def smoothed(values: list[float], window: int) -> list[float]:
    """A trailing moving average over `window` steps (per-step values of a batch of 8 are noisy)."""
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value - (values[i - window] if i >= window else 0.0)
        out.append(total / min(i + 1, window))
    return out


def training_curves_png(logs: dict[str, pa.Table]) -> tuple[bytes, int]:
    """A panel per training metric, a line per run over its optimizer steps, each smoothed over
    1/50 of the longest run; returns the PNG and the window."""
    fig, window = training_curves_figure(logs)
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png")
    return buffer.getvalue(), window


def training_curves_figure(logs: dict[str, pa.Table]) -> tuple[Any, int]:
    """The training curves' figure and its smoothing window (see `training_curves_png`)."""
    from matplotlib.figure import Figure

    window = max(1, max(log.num_rows for log in logs.values()) // 50)
    fig = Figure(figsize=(10.5, 5.6), dpi=110)
    for index, metric in enumerate(CURVES):
        ax = fig.add_subplot(2, 3, index + 1)
        lines = {label: smoothed(log_table.column(metric).to_pylist(), window) for label, log_table in logs.items()}
        for label, log_table in logs.items():
            ax.plot([s + 1 for s in log_table.column("step").to_pylist()], lines[label], label=label, linewidth=1)
        scale_to_every_run(ax, list(lines.values()))
        ax.set_title(metric.replace("_", " "), fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    fig.axes[0].legend(fontsize=6)
    fig.supxlabel("optimizer step", fontsize=8)
    return fig, window


def scale_to_every_run(ax: Any, lines: list[list[float]]) -> None:
    """A symmetric-log y axis when one run's values are ten times another's (IPO's loss of about
    100 beside DPO's 0.7): linear up to the smallest run's peak, so every run's line keeps its shape."""
    peaks = [max(abs(v) for v in line) for line in lines if line]
    if peaks and min(peaks) > 0 and max(peaks) > 10 * min(peaks):
        ax.set_yscale("symlog", linthresh=min(peaks))


def sample_grid(evaluation: pa.Table, count: int, cell: int = 160) -> bytes | None:
    """PNG grid: a row per sample prompt (the first `count` of the first dataset), a column per
    method; the `human` column is the original prompt's image."""
    from PIL import Image, ImageDraw

    rows = evaluation.select(["method", "dataset", "prompt_id", "prompt", "image"]).to_pylist()
    if not rows or count == 0:
        return None
    methods = ordered([r["method"] for r in rows])
    first = rows[0]["dataset"]
    prompts = ordered([(r["prompt_id"], r["prompt"]) for r in rows if r["dataset"] == first])[:count]
    image = {(r["method"], r["prompt_id"]): r["image"] for r in rows if r["dataset"] == first}
    label_h, caption_w = 18, 220
    grid = Image.new("RGB", (caption_w + cell * len(methods), label_h + cell * len(prompts)), "white")
    draw = ImageDraw.Draw(grid)
    for j, method in enumerate(methods):
        draw.text((caption_w + j * cell + 4, 3), method if method != "human" else "human (original)", fill="black")
    for i, (pid, prompt) in enumerate(prompts):
        top = label_h + i * cell
        draw.multiline_text((4, top + 4), "\n".join(_wrap(prompt, 34)[:8]), fill="black")
        for j, method in enumerate(methods):
            if (method, pid) in image:
                tile = decode_png(image[(method, pid)]).resize((cell - 4, cell - 4), Image.NEAREST)
                grid.paste(tile, (caption_w + j * cell + 2, top + 2))
    buffer = io.BytesIO()
    grid.save(buffer, format="PNG")
    return buffer.getvalue()


def _wrap(text: str, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return lines + ([line] if line else [])
