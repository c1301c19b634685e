"""Train stage: one training run (a method; for Sem-DPO, one alpha) from the SFT checkpoint, on
the shared pairs and their stored reference log-probs.

Checkpoints go to the store every `train.checkpoint_every` steps; a rerun of a failed train stage
resumes from the newest intact one instead of step 0.
"""

from __future__ import annotations

import logging

import pyarrow as pa
import torch

from semdpo_core.config import PipelineConfig
from semdpo_core.models import resolve_device
from semdpo_core.plan import USES_DISTANCE, TrainRun
from semdpo_core.schemas import FIDELITY, PAIRS, REFERENCE, TRAIN_LOG, WEIGHTS
from semdpo_core.store import DatasetRef
from semdpo_core.train import PreferenceData, ReferenceLogps, train_from_sft
from tasks.common import checkpoint_dir, checkpoint_files, open_store, release_models, stage_task

log = logging.getLogger("semdpo.train")


def fidelity_margins(scores: pa.Table, pairs: pa.Table) -> list[float]:
    """f(y_w) - f(y_l) for each pair, from the per-candidate fidelity scores."""
    f = dict(zip(scores.column("candidate_id").to_pylist(), scores.column("fidelity").to_pylist()))
    return [f[c] - f[r] for c, r in zip(pairs.column("chosen_id").to_pylist(), pairs.column("rejected_id").to_pylist())]


@stage_task("train")
def train(
    config: PipelineConfig,
    ref: DatasetRef,
    run: TrainRun,
    sft: DatasetRef,
    pairs: DatasetRef,
    reference: DatasetRef | None,
    fidelity: DatasetRef | None = None,
) -> DatasetRef:
    """`pairs` is the weigh output (with distances) for Sem-DPO and the hard filter, else the pairs;
    `fidelity` holds the per-candidate fidelity scores the additive baseline needs."""
    store = open_store(config)
    table = store.read_table(pairs, WEIGHTS if run.method in USES_DISTANCE else PAIRS)
    stored = store.read_table(reference, REFERENCE) if reference is not None else None
    if stored is not None and stored.column("prompt_id").to_pylist() != table.column("prompt_id").to_pylist():
        raise ValueError(f"reference log-probs {reference} do not line up with pairs {pairs}; rerun the reference stage")
    data = PreferenceData(
        prompts=table.column("prompt").to_pylist(),
        chosen=table.column("chosen").to_pylist(),
        rejected=table.column("rejected").to_pylist(),
        semantic_distance=table.column("semantic_distance").to_pylist() if "semantic_distance" in table.column_names
        else [0.0] * table.num_rows,
        kl_completion=stored.column("kl_completion").to_pylist() if stored is not None else None,
        fidelity_margin=fidelity_margins(store.read_table(fidelity, FIDELITY), table) if fidelity is not None else None,
    )
    reference_logps = None
    if stored is not None:
        column = lambda name: torch.tensor(stored.column(name).to_pylist(), dtype=torch.float64)  # noqa: E731
        reference_logps = ReferenceLogps(
            column("reference_chosen_logps"), column("reference_rejected_logps"), column("reference_kl_logps"),
            column("chosen_tokens"), column("rejected_tokens"),
        )
    release_models()  # training needs the memory that cached inference models hold
    latest = store.latest_checkpoint(ref)
    if latest is not None:
        log.info("%s: found a checkpoint at step %d in the store", run.label, latest[0])

    def save(step: int, files: dict[str, bytes]) -> None:
        log.info("%s: checkpoint at step %d -> %s", run.label, step, store.write_checkpoint(ref, step, files))

    policy, tokenizer, history = train_from_sft(
        checkpoint_dir(config, sft), data, reference_logps, run.method, config.train, resolve_device(config.device),
        alpha=run.alpha, seed=config.seed, save_checkpoint=save, resume_from=latest[1] if latest else None,
    )
    log_table = pa.Table.from_pylist([{"method": run.label, **h} for h in history], schema=TRAIN_LOG)
    meta = {"method": run.method, "label": run.label, "pairs": len(data), "final_loss": history[-1]["loss"],
            "mean_weight": sum(h["mean_weight"] for h in history) / len(history)}
    if run.alpha is not None:
        meta["alpha"] = run.alpha
    return store.write_dataset(ref, TRAIN_LOG, log_table, files=checkpoint_files(policy, tokenizer), meta=meta)
