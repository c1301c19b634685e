"""The trained rewriter as a product: `semdpo rewrite` prints what the evaluation would; `semdpo
export` writes a folder that plain transformers loads and that rewrites the same way."""

import json
import subprocess
import sys

import pytest
import yaml
from typer.testing import CliRunner

from flows.cli import app
from semdpo_core.models.loading import load_rewriter, resolve_device
from semdpo_core.pipeline.config import load_config
from semdpo_core.pipeline.plan import plan_pipeline
from semdpo_core.stages.evaluate import rewrite_prompts
from semdpo_core.store.artifact_store import ArtifactStore
from tests.small import SMALL

pytestmark = pytest.mark.slow

PROMPTS = ["a red fox in a forest", "an old lighthouse at dusk"]

# a fresh interpreter with plain transformers: the exported folder's greedy rewrites, posed as chat
LOAD_PLAINLY = """
import json, sys
from transformers import AutoModelForCausalLM, pipeline
folder, prompts = sys.argv[1], json.loads(sys.argv[2])
AutoModelForCausalLM.from_pretrained(folder)
rewriter = pipeline("text-generation", model=folder, device="cpu")
out = [rewriter([{"role": "user", "content": p}])[0]["generated_text"][-1]["content"] for p in prompts]
assert not any(name.startswith(("semdpo_core", "flows", "tasks")) for name in sys.modules), "semdpo was imported"
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory, prefect_server):
    from flows.pipeline import pipeline

    tmp_path = tmp_path_factory.mktemp("export")
    config = tmp_path / "small.yaml"
    config.write_text(yaml.safe_dump({**SMALL, "store": str(tmp_path / "store")}))
    pipeline(config_path=str(config))
    return config


def test_rewrite_prints_the_evaluations_greedy_rewrites(trained):
    cfg = load_config(trained)
    folder = ArtifactStore(cfg.store_root()).materialize(plan_pipeline(cfg).train["sem_dpo"], trained.parent / "m")
    model, tokenizer = load_rewriter(str(folder), resolve_device("cpu"))
    expected = rewrite_prompts(model, tokenizer, PROMPTS, batch_size=8, max_new_tokens=cfg.evaluate.max_new_tokens)
    result = CliRunner().invoke(app, ["rewrite", "--config", str(trained), "--method", "sem_dpo", *PROMPTS])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == expected
    piped = CliRunner().invoke(app, ["rewrite", "-c", str(trained), "--render", str(trained.parent / "images")],
                               input="\n".join(PROMPTS) + "\n")
    assert piped.output.splitlines()[: len(PROMPTS)] == expected
    images = sorted((trained.parent / "images").glob("*.png"))
    assert [p.name for p in images] == ["000.png", "001.png"] and images[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_exported_folder_loads_with_plain_transformers_and_rewrites_the_same(trained, tmp_path):
    target = tmp_path / "sem-dpo-rewriter"
    result = CliRunner().invoke(app, ["export", str(target), "--config", str(trained), "--method", "sem_dpo"])
    assert result.exit_code == 0, result.output
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer_config.json", "README.md"} <= {
        p.name for p in target.iterdir()}
    card = (target / "README.md").read_text()
    assert "pipeline_tag: text-generation" in card and "| method | sem_dpo |" in card and "| beta |" in card
    rewritten = CliRunner().invoke(app, ["rewrite", "-c", str(trained), "--method", "sem_dpo",
                                         *PROMPTS]).output.splitlines()
    plain = subprocess.run([sys.executable, "-c", LOAD_PLAINLY, str(target), json.dumps(PROMPTS)], capture_output=True,
                           text=True, timeout=300, cwd=tmp_path)
    assert plain.returncode == 0, plain.stderr[-3000:]
    assert [" ".join(t.split()) for t in json.loads(plain.stdout.splitlines()[-1])] == rewritten
    assert all(rewritten), "every rewrite has words (an empty one would compare equal for nothing)"

    from transformers import AutoTokenizer

    from semdpo_core.models.rewriter import pose

    tokenizer = AutoTokenizer.from_pretrained(target)
    chat = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
            for p in PROMPTS]
    assert chat == [pose(p) for p in PROMPTS]  # the chat template poses a prompt as the pipeline does


def test_an_untrained_or_unknown_run_is_one_clear_line(trained, tmp_path):
    unknown = CliRunner().invoke(app, ["rewrite", "-c", str(trained), "--method", "nope", "a fox"])
    assert unknown.exit_code == 2 and "has no training run 'nope'; its runs: sft, dpo, sem_dpo" in unknown.output
    fresh = CliRunner().invoke(app, ["export", str(tmp_path / "x"), "-c", str(trained),
                                     "--set", f"store={tmp_path / 'empty'}"])
    assert fresh.exit_code == 2 and "is not in the store" in fresh.output and "semdpo run" in fresh.output
