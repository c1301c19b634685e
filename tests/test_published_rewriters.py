"""Published rewriters (Promptist, BeautifulPrompt) evaluated as methods: a model in Promptist's
layout (GPT-2 weights, the gpt2 tokenizer in a folder of its own) is posed with its own template,
decoded by beam search, and appears in every report table like a trained method."""

import shutil

import pytest
import torch
import yaml

from semdpo_core.models.locate import model_cache_dir
from semdpo_core.models.tiny import ensure_tiny
from semdpo_core.pipeline.config import load_config
from semdpo_core.pipeline.plan import plan_pipeline
from semdpo_core.pipeline.schemas import EVALUATION
from semdpo_core.store.artifact_store import ArtifactStore
from tests.small import SMALL

pytestmark = pytest.mark.slow

TEMPLATE = "{prompt} Rephrase:"


def promptist_layout(tmp_path):
    """A tiny GPT-2 saved as Promptist is published: the weights in one folder, the tokenizer in another."""
    built = ensure_tiny("gpt2", model_cache_dir())
    weights, tokenizer = tmp_path / "promptist", tmp_path / "gpt2-tokenizer"
    weights.mkdir()
    tokenizer.mkdir()
    for path in built.iterdir():
        is_tokenizer = "token" in path.name or path.name in ("vocab.json", "merges.txt", "special_tokens_map.json")
        if path.is_file() and not path.name.startswith("."):
            shutil.copy(path, (tokenizer if is_tokenizer else weights) / path.name)
    return weights, tokenizer


def test_a_promptist_layout_model_is_evaluated_with_its_template_and_in_every_report_table(tmp_path, prefect_server):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from flows.pipeline import pipeline

    weights, tokenizer_dir = promptist_layout(tmp_path)
    assert not list(weights.glob("tokenizer*")) and not list(tokenizer_dir.glob("*.safetensors"))
    rewriter = {"model": str(weights), "tokenizer": str(tokenizer_dir), "template": TEMPLATE, "num_beams": 3,
                "max_new_tokens": 10}
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({**SMALL, "store": str(tmp_path / "store"),
                                      "train": {**SMALL["train"], "methods": ["sem_dpo"]},
                                      "evaluate": {**SMALL.get("evaluate", {}), "rewriters": {"promptist": rewriter}}}))
    pipeline(config_path=str(config))
    cfg = load_config(config)
    store, plan = ArtifactStore(cfg.store_root()), plan_pipeline(cfg)
    rows = [r for r in store.read_table(plan.ref("evaluate"), EVALUATION).to_pylist() if r["method"] == "promptist"]
    assert rows and len(rows) == sum(1 for r in store.read_table(plan.ref("evaluate"), EVALUATION).to_pylist()
                                     if r["method"] == "sft")

    # its own template and beam search, as plain transformers gives them
    model = AutoModelForCausalLM.from_pretrained(weights).eval()
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    prompt = rows[0]["prompt"]
    ids = tokenizer(TEMPLATE.format(prompt=prompt), return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, num_beams=3, do_sample=False, max_new_tokens=10, pad_token_id=tokenizer.eos_token_id)
    expected = " ".join(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).split()) or prompt
    assert rows[0]["rewrite"] == expected and expected != prompt  # its own words, not the fallback to the prompt

    report = store.read_file(plan.ref("report"), "report.md").decode()
    for heading in ("## Scores per dataset", "## Rewritten-prompt token length", "## Head to head",
                    "## Drift in meaning", "## Paired tests"):
        section = report.split(heading, 1)[1].split("\n## ", 1)[0]
        assert "promptist" in section, heading
