"""Step time and peak memory of preference training, as ratios measured in one run.

    python benchmarks/train_speed.py [--model tiny:rewriter] [--steps 200] [--batch-size 8] [--json out.json]

Compares, on the same model, pairs and batch size:
- Sem-DPO vs DPO in our trainer (the paper: 70 vs 60 minutes; our target: <= 1.02);
- our trainer's DPO vs TRL's DPOTrainer (reference log-probs precomputed in both, no gradient
  checkpointing in either).
Each configuration runs in its own child process, so peak memory (CUDA: max allocated; CPU:
the child's max RSS) belongs to that configuration alone. Step time is the median over the
steps after the first few (warm-up).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

WARMUP_STEPS = 5
CONFIGS = ("ours:dpo", "ours:sem_dpo", "trl:dpo")


def benchmark_pairs(n: int) -> tuple[list[str], list[str], list[str], list[float]]:
    """Pairs from the demo SFT set: the demo rewrite is chosen, another prompt's rewrite rejected."""
    from semdpo_core.data.prompt_sources import read_records

    records = read_records("demo:sft_pairs", ["original", "rewrite"])
    records = (records * (n // len(records) + 1))[:n]
    prompts = [r.fields["original"] for r in records]
    chosen = [r.fields["rewrite"] for r in records]
    rejected = chosen[7:] + chosen[:7]
    distance = [0.1 + 0.5 * (i % 7) / 7 for i in range(n)]
    return prompts, chosen, rejected, distance


def peak_memory_mb(device) -> float:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_ours(method: str, model_ref: str, steps: int, batch_size: int) -> dict:
    import torch

    from semdpo_core.models.loading import load_rewriter, resolve_device
    from semdpo_core.pipeline.config import TrainConfig
    from semdpo_core.stages.reference import kl_completions, reference_logps
    from semdpo_core.stages.train import PreferenceData, train_preference

    device = resolve_device("auto")
    prompts, chosen, rejected, distance = benchmark_pairs(steps * batch_size)
    data = PreferenceData(prompts, chosen, rejected, distance)
    reference, tokenizer = load_rewriter(model_ref, device)
    ref = reference_logps(reference, tokenizer, prompts, chosen, rejected, kl_completions(chosen), batch_size, 96)
    del reference
    policy, tokenizer = load_rewriter(model_ref, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    settings = TrainConfig(batch_size=batch_size, epochs=1, max_length=96, learning_rate=5e-6, alpha=4.0)
    stamps: list[float] = [time.perf_counter()]
    train_preference(policy, tokenizer, data, ref, method=method, settings=settings,
                     on_step=lambda _: stamps.append(time.perf_counter()))
    return {"step_times": [b - a for a, b in zip(stamps, stamps[1:])], "peak_mb": peak_memory_mb(device)}


def run_trl(model_ref: str, steps: int, batch_size: int) -> dict:
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from semdpo_core.models.loading import load_rewriter, resolve_device
    from semdpo_core.models.rewriter import pose

    device = resolve_device("auto")
    prompts, chosen, rejected, _ = benchmark_pairs(steps * batch_size)
    dataset = Dataset.from_dict(
        {"prompt": [pose(p) for p in prompts], "chosen": [" " + c for c in chosen],
         "rejected": [" " + r for r in rejected]}
    )
    model, tokenizer = load_rewriter(model_ref, device)
    stamps: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if not stamps:
                stamps.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):
            stamps.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as tmp:
        args = DPOConfig(
            output_dir=tmp, per_device_train_batch_size=batch_size, max_steps=steps, learning_rate=5e-6, beta=0.05,
            max_length=96, precompute_ref_log_probs=True, gradient_checkpointing=False, report_to="none",
            save_strategy="no", logging_steps=10_000, use_cpu=device.type != "cuda", bf16=False, fp16=False,
            disable_tqdm=True, dataloader_num_workers=0, seed=0,
        )
        trainer = DPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
        trainer.add_callback(StepTimer())
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        trainer.train()
    return {"step_times": [b - a for a, b in zip(stamps, stamps[1:])], "peak_mb": peak_memory_mb(device)}


def worker(config: str, model_ref: str, steps: int, batch_size: int) -> None:
    kind, method = config.split(":")
    result = run_ours(method, model_ref, steps, batch_size) if kind == "ours" else run_trl(model_ref, steps, batch_size)
    print("RESULT " + json.dumps(result))


def measure(config: str, args: argparse.Namespace) -> dict:
    """Run one configuration in a fresh child process; returns its median step time and peak memory."""
    command = [sys.executable, __file__, "--worker", config, "--model", args.model,
               "--steps", str(args.steps), "--batch-size", str(args.batch_size)]
    env = {**os.environ, "TQDM_DISABLE": "1", "TOKENIZERS_PARALLELISM": "false"}
    out = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"{config} failed:\n{out.stderr[-4000:]}")
    result = json.loads(lines[-1].removeprefix("RESULT "))
    times = result["step_times"][WARMUP_STEPS:] or result["step_times"]
    return {"steps": len(result["step_times"]), "median_step_s": statistics.median(times), "peak_mb": result["peak_mb"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny:rewriter", help="rewriter: tiny:rewriter, a hub id or a local path")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.model, args.steps, args.batch_size)
        return
    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    results = {config: measure(config, args) for config in CONFIGS}
    ours_dpo, sem, theirs = results["ours:dpo"], results["ours:sem_dpo"], results["trl:dpo"]
    ratios = {
        "sem_dpo / dpo step time": sem["median_step_s"] / ours_dpo["median_step_s"],
        "sem_dpo / dpo peak memory": sem["peak_mb"] / ours_dpo["peak_mb"],
        "ours / trl dpo step time": ours_dpo["median_step_s"] / theirs["median_step_s"],
        "ours / trl dpo peak memory": ours_dpo["peak_mb"] / theirs["peak_mb"],
    }
    print(f"\npreference training, {args.model}, batch {args.batch_size}, {args.steps} steps, on {device}\n")
    print(f"{'configuration':16s} {'median step (ms)':>17s} {'peak memory (MB)':>17s}")
    for config, r in results.items():
        print(f"{config:16s} {1000 * r['median_step_s']:17.2f} {r['peak_mb']:17.1f}")
    print()
    for name, value in ratios.items():
        print(f"{name:28s} {value:6.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": device, "model": args.model, "batch_size": args.batch_size,
                                               "results": results, "ratios": ratios}, indent=2))


if __name__ == "__main__":
    main()
