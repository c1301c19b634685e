"""Throughput of the synthetic world on one CPU core: renderer, alignment and preference scorers.

    python benchmarks/world_render.py [--images 500] [--sizes 64 128] [--json out.json]

Renders `--images` distinct train prompts (grammar.train_prompts) at each size, one seed each, and
scores them; prints images per second for each. Each rate is the best of three runs (after one
warm-up batch), so one-off caches (parse, silhouettes, prototypes) are not counted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def best_rate(work, items: int, repeats: int = 3) -> float:
    """Items per second of the fastest of `repeats` calls of work()."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - start)
    return items / best


def main() -> None:
    """Measure and print the rates."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    from semdpo_core.world.grammar import train_prompts
    from semdpo_core.world.pixel_scorers import AlignmentScorer, PreferenceScorer
    from semdpo_core.world.renderer import WorldRenderer

    prompts = train_prompts(args.images, seed=0)
    seeds = list(range(args.images))
    renderer, align, prefer = WorldRenderer(), AlignmentScorer(), PreferenceScorer("aesthetic")
    results = {}
    for size in args.sizes:
        warm = renderer.render(prompts[:20], seeds[:20], size, size)
        align.score(warm, prompts[:20])
        images = renderer.render(prompts, seeds, size, size)
        row = {
            "render_per_s": best_rate(lambda size=size: renderer.render(prompts, seeds, size, size), args.images),
            "alignment_per_s": best_rate(lambda images=images: align.score(images, prompts), args.images),
            "preference_per_s": best_rate(lambda images=images: prefer.score(images, prompts), args.images),
        }
        results[f"{size}x{size}"] = row
        print(f"{size}x{size}: render {row['render_per_s']:.0f} images/s, alignment {row['alignment_per_s']:.0f}/s, "
              f"preference {row['preference_per_s']:.0f}/s  (one process, {args.images} images)")
    if args.json:
        args.json.write_text(json.dumps({"images": args.images, "cpus": os.cpu_count(), "results": results}, indent=2))


if __name__ == "__main__":
    main()
