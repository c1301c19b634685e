"""Throughput of each GPU stage next to a plain baseline, measured in one run, and the 50k run's cost.

    python benchmarks/gpu_throughput.py [--size full|tiny] [--items N] [--json out.json]

Stages and baselines (the same model, inputs and device in both columns):
- candidates: our batched `generate` (k rewrites per prompt) vs transformers `generate` one
  prompt at a time;
- render: our `render_images` (batched, the CUDA fast path) vs diffusers' pipeline called image
  by image with default settings (fp16 on CUDA);
- each scorer (ImageReward, HPSv2.1, PickScore): our batched scorer vs the reference loop of
  one image per call;
- train: one preference-training step with batch 8 (pairs per second; TRL's trainer is compared
  in benchmarks/train_speed.py).
`--size full` (default on CUDA) uses the paper's models at real size with random weights
(benchmarks/profiles.py: SD v1.4 at 512x512 with DDIM 20 steps, Qwen1.5-1.8B, ViT-L/H scorers);
`--size tiny` (default on CPU) the offline default's tiny models, so CI can check this runs.
The projection of the whole run that `--config` describes (default configs/paper.yaml: 50k
prompts, two candidates each, every method of train.methods trained and evaluated on the test
sets) divides each stage's work by its measured rate; it is only meaningful for `--size full`
on the GPU the run will use.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

PAPER_CONFIG = ROOT / "configs" / "paper.yaml"
CANDIDATES = 2  # rewrites per prompt when timing candidate generation (the paper's setting)


def demo_prompts(n: int) -> list[str]:
    from semdpo_core.data.prompt_sources import read_records

    texts = [r.fields["prompt"] for r in read_records("demo:train_prompts", ["prompt"])]
    return (texts * (n // len(texts) + 1))[:n]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], device: torch.device, repeats: int = 2) -> float:
    """Median seconds of `fn` after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # the process so far (KiB on Linux)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def compare(name: str, unit: str, items: int, ours: Callable[[], Any], baseline: Callable[[], Any] | None,
            device: torch.device) -> dict[str, Any]:
    """Items per second of our stage and of the baseline, their ratio, and our peak memory."""
    reset_peak(device)
    ours_s = timed(ours, device)
    row = {"stage": name, "unit": unit, "items": items, "ours_per_s": items / ours_s, "peak_mb": peak_mb(device)}
    if baseline is not None:
        base_s = timed(baseline, device, repeats=1)
        row.update(baseline_per_s=items / base_s, ratio=base_s / ours_s)
    print(f"  {name:<14} ours {row['ours_per_s']:8.2f} {unit}/s"
          + (f"   baseline {row['baseline_per_s']:8.2f} {unit}/s   ratio {row['ratio']:.2f}x" if baseline else "")
          + f"   peak {row['peak_mb']:.0f} MiB", flush=True)
    return row


def bench_candidates(size: str, device: torch.device, n: int, batch: int, new_tokens: int) -> dict:
    from benchmarks import profiles
    from semdpo_core.models.loading import generation_dtype
    from semdpo_core.models.rewriter import generate

    model, tokenizer = profiles.rewriter(size, device, generation_dtype(device))  # the candidates stage's dtype
    prompts = demo_prompts(n)
    settings = dict(num_return_sequences=CANDIDATES, do_sample=True, top_p=0.9, max_new_tokens=new_tokens)

    def ours() -> None:
        for start in range(0, n, batch):
            generate(model, tokenizer, prompts[start : start + batch], **settings)

    def baseline() -> None:
        for prompt in prompts:
            enc = tokenizer(prompt + "\nRewrite:", return_tensors="pt").to(device)
            model.generate(**enc, do_sample=True, top_p=0.9, top_k=0, max_new_tokens=new_tokens,
                           min_new_tokens=new_tokens, num_return_sequences=CANDIDATES,
                           pad_token_id=tokenizer.pad_token_id)

    # fixed-length rewrites on both sides, so random weights stopping early cannot flatter either
    settings_eos = tokenizer.eos_token_id
    model.generation_config.eos_token_id = None
    try:
        return compare("candidates", "rewrites", n * CANDIDATES, ours, baseline, device)
    finally:
        model.generation_config.eos_token_id = settings_eos


def bench_render(size: str, device: torch.device, dtype: torch.dtype, n: int, batch: int, steps: int, px: int,
                 compile_unet: bool = False) -> dict:
    from benchmarks import profiles
    from semdpo_core.models.loading import optimize_for_inference
    from semdpo_core.stages.render import render_images

    pipe = profiles.stable_diffusion(size, device, dtype)
    prompts, seeds = demo_prompts(n), list(range(n))

    def baseline() -> None:  # diffusers' pipeline, image by image, default settings
        for prompt, seed in zip(prompts, seeds):
            pipe(prompt, num_inference_steps=steps, height=px, width=px,
                 generator=torch.Generator("cpu").manual_seed(seed))

    base = compare("render (plain)", "images", n, baseline, None, device)
    optimize_for_inference(pipe, compile_unet)  # on CUDA: channels_last, fused-QKV SDPA (+ torch.compile)

    def ours() -> None:
        render_images(pipe, prompts, seeds, num_inference_steps=steps, guidance_scale=7.5, height=px, width=px,
                      batch_size=batch, desc="render")

    row = compare("render", "images", n, ours, None, device)
    row.update(baseline_per_s=base["ours_per_s"], ratio=row["ours_per_s"] / base["ours_per_s"])
    print(f"  {'render':<14} ratio {row['ratio']:.2f}x vs the plain pipeline image by image", flush=True)
    return row


def bench_scorer(kind: str, size: str, device: torch.device, n: int, batch: int) -> dict:
    from PIL import Image

    from benchmarks import profiles

    scorer = profiles.scorer(kind, size, device)  # in the stage's own dtype
    images = [Image.new("RGB", (512, 512), (i * 37 % 256, 90, 160)) for i in range(n)]
    prompts = demo_prompts(n)

    def ours() -> None:
        for start in range(0, n, batch):
            scorer.score(images[start : start + batch], prompts[start : start + batch])

    def baseline() -> None:  # the scorers' reference loops score one image per call
        for image, prompt in zip(images, prompts):
            scorer.score([image], [prompt])

    return compare(kind, "images", n, ours, baseline, device)


def bench_train(size: str, device: torch.device, steps: int) -> dict:
    from benchmarks import profiles
    from semdpo_core.pipeline.config import TrainConfig
    from semdpo_core.stages.reference import kl_completions, reference_logps
    from semdpo_core.stages.train import PreferenceData, train_preference

    policy, tokenizer = profiles.rewriter(size, device, torch.float32)  # as the train stage: fp32 weights, autocast
    n = 8 * steps
    prompts = demo_prompts(n)
    data = PreferenceData(prompts, [p + ", highly detailed, sharp focus" for p in prompts],
                          [p + ", blurry" for p in prompts], [0.2] * n)
    reference = reference_logps(policy, tokenizer, data.prompts, data.chosen, data.rejected,  # the untrained policy
                                kl_completions(data.chosen), 8, 96)
    settings = TrainConfig(batch_size=8, epochs=1, max_length=96, learning_rate=5e-6, alpha=4.0)
    stamps: list[float] = []
    reset_peak(device)
    train_preference(policy, tokenizer, data, reference, method="sem_dpo", settings=settings,
                     on_step=lambda _: (sync(device), stamps.append(time.perf_counter())))
    step_s = statistics.median([b - a for a, b in zip(stamps, stamps[1:])] or [float("nan")])
    row = {"stage": "train", "unit": "pairs", "items": 8, "ours_per_s": 8 / step_s, "peak_mb": peak_mb(device)}
    print(f"  {'train':<14} ours {row['ours_per_s']:8.2f} pairs/s   ({step_s * 1000:.0f} ms per step of 8)"
          f"   peak {row['peak_mb']:.0f} MiB", flush=True)
    return row


def run_work(config: Any) -> dict[str, float]:
    """How much each stage of the run `config` describes has to do (items in each stage's unit)."""
    from semdpo_core.pipeline.stage_table import evaluated_labels
    from semdpo_core.pipeline.stage_table import runs as train_runs
    from semdpo_core.preference.methods import get_method

    runs = train_runs(config)
    evaluated = evaluated_labels(config)
    prompts = config.data.max_train_prompts
    images = prompts * config.candidates.num_candidates
    test = config.data.max_test_prompts * len(config.data.test_prompts)
    return {
        "candidates": images, "render": images + test * len(evaluated), "label": images,
        "fidelity": images if any(get_method(r.method).uses_fidelity for r in runs) else 0,
        "reference": prompts if any(get_method(r.method).uses_reference for r in runs) else 0,  # <= one pair per prompt
        "train": prompts * len(runs) * config.train.epochs,
        "evaluate_rewrites": test * len([m for m in evaluated if m != "human"]),
        "evaluate_images": test * len(evaluated),
    }


def projection(rows: dict[str, dict], config: Any) -> dict[str, float]:
    """GPU-hours of each stage of the run `config` describes, from the measured rates. The CLIP
    scorers (fidelity, CLIP score) are costed at PickScore's rate (ViT-H, larger than CLIP ViT-L);
    not counted: SFT (its size is the SFT file's) and the text-only weigh stage."""
    rate = {name: row["ours_per_s"] for name, row in rows.items()}
    work = run_work(config)
    scorer_rate = {"image_reward": rate["image_reward"], "hpsv2": rate["hpsv2"]}
    per_image = sum(1 / scorer_rate.get(s.kind, rate["pickscore"]) for s in config.evaluate.scorers.values())
    seconds = {
        "candidates": work["candidates"] / rate["candidates"],
        "render": work["render"] / rate["render"],
        "label": work["label"] / rate["image_reward"],
        "fidelity": work["fidelity"] / rate["pickscore"],
        "reference": work["reference"] / (3 * rate["train"]),  # forward passes without backward ~ 1/3 of a step
        "train": work["train"] / rate["train"],
        "evaluate": work["evaluate_images"] * per_image + work["evaluate_rewrites"] / rate["candidates"],
    }
    hours = {k: v / 3600 for k, v in seconds.items()}
    hours["total"] = sum(hours.values())
    return hours


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cuda = torch.cuda.is_available()
    parser.add_argument("--size", choices=["full", "tiny"], default="full" if cuda else "tiny")
    parser.add_argument("--items", type=int, default=32 if cuda else 8, help="prompts/images per measurement")
    parser.add_argument("--batch-size", type=int, default=16 if cuda else 4)
    parser.add_argument("--compile", action="store_true", help="torch.compile the UNet (render.compile)")
    parser.add_argument("--config", type=Path, default=PAPER_CONFIG, help="the run to project (default: the paper's)")
    parser.add_argument("--json", type=Path, help="also write the table here")
    args = parser.parse_args()
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.float16 if cuda else torch.float32
    full = args.size == "full"
    steps, px, new_tokens = (20, 512, 64) if full else (2, 32, 12)
    name = torch.cuda.get_device_name() if cuda else "CPU"
    print(f"semdpo GPU-stage throughput on {name}, {args.size} models, {args.items} items, batch {args.batch_size}")
    rows = {
        "candidates": bench_candidates(args.size, device, args.items, args.batch_size, new_tokens),
        "render": bench_render(args.size, device, dtype, args.items, args.batch_size, steps, px, args.compile),
    }
    for kind in ("image_reward", "hpsv2", "pickscore"):
        rows[kind] = bench_scorer(kind, args.size, device, args.items, args.batch_size)
    rows["train"] = bench_train(args.size, device, steps=4 if full else 3)
    from semdpo_core.pipeline.config import load_config

    run = load_config(args.config)
    hours = projection(rows, run)
    print(f"\nprojected run {run.name!r} ({run.data.max_train_prompts} prompts, {run.candidates.num_candidates} "
          f"candidates per prompt, {len(run.train.methods)} methods) on {name}: {hours['total']:.2f} GPU-hours")
    print("  " + ", ".join(f"{k} {v:.2f} h" for k, v in hours.items() if k != "total"))
    if not full:
        print("  (tiny models: the projection says nothing about the real run; use --size full on the GPU)")
    if args.json:
        args.json.write_text(json.dumps({"device": name, "size": args.size, "items": args.items,
                                         "batch_size": args.batch_size, "stages": rows,
                                         "projected_run": str(args.config),
                                         "projection_hours": hours},
                                        indent=2))


if __name__ == "__main__":
    main()
