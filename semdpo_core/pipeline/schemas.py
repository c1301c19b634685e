"""The pyarrow schema of every table a stage writes: one place defines them all.

A table that does not match its schema is refused with an error naming the file and column.
Bump SCHEMA_VERSION when a schema changes: it is part of every fingerprint.
"""

from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = 4

PROMPTS = pa.schema(
    [
        ("prompt_id", pa.string()),
        ("prompt", pa.string()),
        ("split", pa.string()),  # "train" or "test"
        ("dataset", pa.string()),  # evaluation dataset name of a test prompt ("train" for training prompts)
        ("source", pa.string()),  # file (or demo set) and line the prompt came from
    ]
)

SFT_PAIRS = pa.schema([("original", pa.string()), ("rewrite", pa.string())])

CANDIDATES = pa.schema(
    [
        ("candidate_id", pa.string()),
        ("prompt_id", pa.string()),
        ("prompt", pa.string()),
        ("rewrite", pa.string()),
        ("seed", pa.int64()),  # the render seed of this candidate
    ]
)

IMAGES = pa.schema(
    [
        ("candidate_id", pa.string()),
        ("prompt_id", pa.string()),
        ("seed", pa.int64()),
        ("image", pa.binary()),  # PNG bytes
    ]
)

REWARDS = pa.schema(
    [
        ("candidate_id", pa.string()),
        ("prompt_id", pa.string()),
        ("reward", pa.float64()),  # reward model's score of the image vs the ORIGINAL prompt
    ]
)

PAIRS = pa.schema(
    [
        ("prompt_id", pa.string()),
        ("prompt", pa.string()),
        ("chosen_id", pa.string()),  # candidate ids: which images the labels came from
        ("rejected_id", pa.string()),
        ("chosen", pa.string()),
        ("rejected", pa.string()),
        ("chosen_reward", pa.float64()),
        ("rejected_reward", pa.float64()),
    ]
)

FIDELITY = pa.schema(
    [
        ("candidate_id", pa.string()),
        ("prompt_id", pa.string()),
        ("fidelity", pa.float64()),  # text-fidelity of the image to the ORIGINAL prompt (additive baseline)
    ]
)

# the weigh stage: 1 - cos(e(prompt), e(chosen)); alpha-free
DISTANCES = pa.schema(list(PAIRS) + [("semantic_distance", pa.float64())])

REFERENCE = pa.schema(
    [
        ("prompt_id", pa.string()),
        ("reference_chosen_logps", pa.float64()),  # log ref(y_w | x), summed over the rewrite's tokens
        ("reference_rejected_logps", pa.float64()),
        ("kl_completion", pa.string()),  # KTO's mismatched rewrite y' for this prompt (another pair's chosen)
        ("reference_kl_logps", pa.float64()),  # log ref(y' | x)
        ("chosen_tokens", pa.int64()),
        ("rejected_tokens", pa.int64()),
    ]
)

TRAIN_LOG = pa.schema(
    [
        ("method", pa.string()),  # the method (a sweep's alpha is in the manifest's meta)
        ("step", pa.int64()),
        ("loss", pa.float64()),
        ("reward_margin", pa.float64()),  # beta * mean log-ratio margin
        ("accuracy", pa.float64()),  # share of pairs with a positive margin
        ("mean_weight", pa.float64()),  # mean per-pair weight (Sem-DPO's W; 1 or 0 for the filter)
        ("effective_sample_size", pa.float64()),  # Kish's (sum W)^2 / sum W^2 over the step's pairs
        ("beta", pa.float64()),  # the beta used (beta-DPO's changes per batch)
        ("learning_rate", pa.float64()),
    ]
)

SFT_LOG = pa.schema([("step", pa.int64()), ("loss", pa.float64())])

EVALUATION = pa.schema(
    [
        ("method", pa.string()),
        ("dataset", pa.string()),
        ("prompt_id", pa.string()),
        ("prompt", pa.string()),
        ("rewrite", pa.string()),
        ("rewrite_tokens", pa.int64()),  # rewriter-tokenizer length of the rewrite (the prompt for human input)
        ("seed", pa.int64()),
        ("image", pa.binary()),
        ("scores", pa.map_(pa.string(), pa.float64())),  # scorer name -> image vs ORIGINAL prompt
        # Proposition 2, Euclidean distances of normalised embeddings in the drift encoder's space (null: off)
        ("prompt_drift", pa.float64()),  # ||e(x) - e(y)||: prompt-level drift
        ("image_drift", pa.float64()),  # ||e(x) - E(I(y))||: end-to-end text-to-image drift
        ("t2i_error", pa.float64()),  # ||e(y) - E(I(y))||: the generator's consistency error
        # 1 - cos(e(x), e(y)) with the weigh stage's text encoder: drift in meaning
        ("semantic_distance", pa.float64()),
    ]
)

REPORT_SCORES = pa.schema(
    [
        ("dataset", pa.string()),
        ("method", pa.string()),
        ("metric", pa.string()),  # a scorer name, or "avg_score" (mean of the normalised means)
        ("n", pa.int64()),
        ("mean", pa.float64()),
        ("std", pa.float64()),
        ("normalized", pa.float64()),  # min-max over the methods of the dataset (null for avg_score)
    ]
)

METRICS = pa.schema(
    [
        ("method", pa.string()),
        ("metric", pa.string()),
        ("n", pa.int64()),
        ("mean", pa.float64()),
        ("std", pa.float64()),
    ]
)


class SchemaError(ValueError):
    """A table whose columns do not match the stage's schema."""


def select_fields(schema: pa.Schema, columns: list[str] | None) -> pa.Schema:
    """The part of `schema` that `columns` names (all of it for None), in the order given."""
    if columns is None:
        return schema
    unknown = [c for c in columns if c not in schema.names]
    if unknown:
        raise SchemaError(f"no column(s) {', '.join(unknown)} in this dataset; it has {schema.names}")
    return pa.schema([schema.field(c) for c in columns])


def conform(table: pa.Table, schema: pa.Schema, where: str) -> pa.Table:
    """Return `table` with exactly `schema`'s columns and types, or raise naming `where` and the column."""
    missing = [f.name for f in schema if f.name not in table.column_names]
    if missing:
        raise SchemaError(f"{where}: missing column(s) {', '.join(missing)}; expected {schema.names}")
    columns = []
    for field in schema:
        column = table.column(field.name)
        if not column.type.equals(field.type):
            try:
                column = column.cast(field.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
                raise SchemaError(
                    f"{where}: column {field.name!r} has type {column.type}, expected {field.type} ({e})"
                ) from None
        columns.append(column)
    return pa.Table.from_arrays(columns, schema=schema)
