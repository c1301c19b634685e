"""One module per stage, holding that stage's computation, in pipeline order: prompts, sft,
candidates, render, label, fidelity, pairs, weigh, reference, train, evaluate (and validate),
report. The stage table (`semdpo_core.pipeline.stage_table`) wires them together."""
