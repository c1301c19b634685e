"""`semdpo data build`: prompt files from datasets in DiffusionDB's, Lexica's and COCO's real
layouts (small local copies read through `datasets`), with counts known in advance, a train set
disjoint from every test set, and the record of what was read."""

import itertools
import json
import os
import random
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from flows.cli import app
from semdpo_core.data import build as data_build
from semdpo_core.data.build import (
    NearDuplicates,
    build_data,
    clean,
    match_key,
    read_source,
    record_path,
)
from semdpo_core.data.hub_datasets import DatasetLoadError, load_hub, parse_hub_source
from semdpo_core.data.prompt_sources import PromptFileError, source_digest
from semdpo_core.pipeline.config import PromptSource, load_config
from semdpo_core.stages.pairs import own_pairs_table
from semdpo_core.stages.prompts import check_inputs, prompt_table, token_limit

LONG = " ".join(["word"] * 60)  # over data.max_prompt_tokens (48) in the default rewriter's tokens
LEXICA_TEST = ["a castle on a hill at dawn", "A castle on a hill, at dawn!", "   ", LONG, "portrait of a nsfw model",
               "an astronaut riding a horse on mars", "a bowl of ramen, studio lighting",
               "cyberpunk street market at night neon", "a watercolor fox in the snow", "an old lighthouse in a storm"]
LEXICA_TRAIN = ["a dragon made of glass", "a quiet forest lake, morning mist", "a robot painting a sunflower"]
DIFFUSIONDB = ["An astronaut riding a horse on Mars",            # a test prompt: other case
               "an astronaut riding a white horse on mars",      # near it: Jaccard 7/8
               "an astronaut riding a camel on the moon",        # not near: Jaccard 5/10
               "a dragon made of glass", "a dragon made of glass",  # a duplicate, and one of Lexica's train prompts
               "", LONG, "steampunk airship over london", "a cat wearing a tiny hat", "nsfw thing"]
COCO = [(1, "A man riding a bike down a street."), (1, "a person on a bicycle in the city"),
        (2, "Two dogs play in the park."), (2, "dogs playing on grass"), (3, "A plate of food on a table."),
        (4, "Two dogs play in the park."), (5, "A red bus parked by the curb.")]


def write_sources(root):
    """The three layouts: Lexica as a hub-layout folder (Prompt, train and test splits), DiffusionDB's
    metadata.parquet, and COCO's captions_val2014.json (images and annotations)."""
    (root / "lexica/data").mkdir(parents=True)
    pq.write_table(pa.table({"Prompt": LEXICA_TEST}), root / "lexica/data/test-00000-of-00001.parquet")
    pq.write_table(pa.table({"Prompt": LEXICA_TRAIN}), root / "lexica/data/train-00000-of-00001.parquet")
    n = len(DIFFUSIONDB)
    pq.write_table(pa.table({
        "image_name": [f"{i}.png" for i in range(n)], "prompt": DIFFUSIONDB, "part_id": [1] * n, "seed": list(range(n)),
        "step": [50] * n, "cfg": [7.0] * n, "sampler": ["k_lms"] * n, "width": [512] * n, "height": [512] * n,
        "user_name": ["u"] * n, "image_nsfw": [0.1] * n, "prompt_nsfw": [0.1] * n,
    }), root / "metadata.parquet")
    (root / "captions_val2014.json").write_text(json.dumps({
        "info": {}, "images": [{"id": i} for i in range(1, 6)],
        "annotations": [{"image_id": image, "id": k, "caption": c} for k, (image, c) in enumerate(COCO)],
    }))
    (root / "words.txt").write_text("# dropped wherever they appear\nnsfw\n")


def write_config(tmp_path, max_train=100, max_test=100, seed=0):
    src, out = tmp_path / "src", tmp_path / "out"
    config = {"seed": seed, "data": {
        "train_prompts": str(out / "train.parquet"),
        "test_prompts": {"lexica": str(out / "lexica_test.parquet"), "coco": str(out / "coco_test.parquet")},
        "max_train_prompts": max_train, "max_test_prompts": max_test,
        "build": {
            "train": [{"layout": "diffusiondb", "path": "parquet", "data_files": str(src / "metadata.parquet")},
                      {"layout": "lexica", "path": str(src / "lexica"), "split": "train"}],
            "test": {"lexica": {"layout": "lexica", "path": str(src / "lexica"), "split": "test"},
                     "coco": {"layout": "coco", "path": "json", "data_files": str(src / "captions_val2014.json"),
                              "field": "annotations"}},
            "word_filter": str(src / "words.txt"),
        }}}
    path = tmp_path / f"config-{max_train}-{seed}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture
def sources(tmp_path):
    write_sources(tmp_path / "src")
    return tmp_path


def prompts(path):
    return pq.read_table(path).column("prompt").to_pylist()


def test_counts_on_sources_where_they_are_known(sources):
    built = {s.name: s for s in build_data(load_config(write_config(sources)))}
    assert dict(built["lexica"].counts) == {"read": 10, "duplicate": 1, "empty": 1, "word filter": 1,
                                            "examined": 7, "too long": 1, "kept": 6}
    assert dict(built["coco"].counts) == {"read": 7, "same image": 2, "duplicate": 1, "examined": 4, "kept": 4}
    assert dict(built["train"].counts) == {"read": 13, "duplicate": 2, "empty": 1, "word filter": 1, "in a test set": 1,
                                           "near a test prompt": 1, "examined": 7, "too long": 1, "kept": 6}
    assert sorted(prompts(sources / "out/train.parquet")) == sorted([
        "an astronaut riding a camel on the moon", "a dragon made of glass", "steampunk airship over london",
        "a cat wearing a tiny hat", "a quiet forest lake, morning mist", "a robot painting a sunflower"])
    assert sorted(prompts(sources / "out/coco_test.parquet")) == sorted([
        "A man riding a bike down a street.", "Two dogs play in the park.", "A plate of food on a table.",
        "A red bus parked by the curb."])  # one caption per image, the first

    # no train prompt is, or nearly is, a test prompt: checked here by brute force
    test = [match_key(p) for name in ("lexica", "coco") for p in prompts(sources / f"out/{name}_test.parquet")]
    for p in prompts(sources / "out/train.parquet"):
        words = set(match_key(p).split())
        assert all(len(words & set(t.split())) / len(words | set(t.split())) < 0.8 for t in test), p

    # the record beside each file: what was read (and what it resolved to), the filters, the file's digest
    record = json.loads(record_path(sources / "out/train.parquet").read_text())
    assert record["sha256"] == source_digest(str(sources / "out/train.parquet")) and record["rows"] == 6
    assert [s["layout"] for s in record["sources"]] == ["diffusiondb", "lexica"]
    assert record["sources"][0]["column"] == "prompt" and record["sources"][1]["column"] == "Prompt"
    # a parquet builder has no commit: the digest of the file it read pins it; a hub-layout folder has both
    assert record["sources"][0]["resolved"] is None and record["sources"][1]["resolved"]
    assert record["sources"][0]["data_file_sha256"] == {
        str(sources / "src/metadata.parquet"): source_digest(str(sources / "src/metadata.parquet"))}
    lexica_train = sources / "src/lexica/data/train-00000-of-00001.parquet"
    assert record["sources"][1]["data_file_sha256"][str(lexica_train)] == source_digest(str(lexica_train))
    assert record["filters"]["word_filter"]["entries"] == 1
    assert record["disjoint_from"] == {name: source_digest(str(sources / f"out/{name}_test.parquet"))
                                       for name in ("lexica", "coco")}


def test_built_files_are_what_the_prompts_stage_reads(sources):
    config = load_config(write_config(sources, max_train=4, max_test=3))
    build_data(config)
    check_inputs(config)
    too_long = token_limit(config.sft.base_model, config.data.max_prompt_tokens)
    table = prompt_table(config.data.train_prompts, config.data.test_sets(), "prompt", 4, 3, too_long)
    assert table.column("dataset").to_pylist() == ["train"] * 4 + ["lexica"] * 3 + ["coco"] * 3


def test_a_seed_draws_the_same_sets_and_another_seed_others(sources):
    first = build_data(load_config(write_config(sources, max_train=3, max_test=3, seed=0)))
    again = build_data(load_config(write_config(sources, max_train=3, max_test=3, seed=0)))
    assert [[p.text for p in s.prompts] for s in first] == [[p.text for p in s.prompts] for s in again]
    drawn = {tuple(p.text for p in build_data(load_config(write_config(sources, 3, 3, seed)), force=True)[-1].prompts)
             for seed in range(6)}
    assert len(drawn) > 1 and all(len(d) == 3 for d in drawn)


def test_an_existing_file_with_other_contents_is_kept_unless_forced(sources):
    config = load_config(write_config(sources))
    (sources / "out").mkdir()
    (sources / "out/coco_test.parquet").write_bytes(b"my own file")
    with pytest.raises(PromptFileError, match=r"coco_test.parquet exists with other contents.*--force"):
        build_data(config)
    assert (sources / "out/coco_test.parquet").read_bytes() == b"my own file"
    assert not (sources / "out/train.parquet").exists()  # checked before anything is written
    build_data(config, force=True)
    build_data(config)  # the same contents again: nothing to refuse
    assert len(prompts(sources / "out/coco_test.parquet")) == 4


def test_a_record_with_other_contents_is_kept_unless_forced_and_no_two_sets_share_one(sources):
    config = load_config(write_config(sources))
    build_data(config)
    record = record_path(sources / "out/lexica_test.parquet")
    record.write_text("my notes\n")
    with pytest.raises(PromptFileError, match=r"lexica_test.build.json exists with other contents.*--force"):
        build_data(config)
    assert record.read_text() == "my notes\n"
    build_data(config, force=True)
    assert json.loads(record.read_text())["set"] == "lexica"
    clash = load_config(write_config(sources), [f"data.test_prompts.coco={sources / 'out/lexica_test.pq'}"])
    with pytest.raises(PromptFileError, match=r"lexica_test.build.json is the record of several sets \(lexica, coco\)"):
        build_data(clash)


def test_a_prepared_dataset_is_read_again_without_downloading_and_with_the_same_digests(sources, monkeypatch):
    """The data files' sha256 is taken when datasets prepares the dataset and kept with it: a
    second build reads the prepared cache, fetches nothing and records the same digests."""
    first = build_data(load_config(write_config(sources)))
    from datasets import DownloadManager

    def no_download(self, *args, **kwargs):
        raise AssertionError("a prepared dataset was downloaded again")

    monkeypatch.setattr(DownloadManager, "download", no_download)
    again = build_data(load_config(write_config(sources)))
    assert [s.sources for s in again] == [s.sources for s in first]
    assert all(source["data_file_sha256"] for s in again for source in s.sources)


def test_the_command_prints_each_set_and_refuses_a_config_without_build(sources):
    result = CliRunner().invoke(app, ["data", "build", str(write_config(sources))])
    assert result.exit_code == 0, result.output
    assert "train: 6 prompts" in result.output and "1 near a test prompt" in result.output
    result = CliRunner().invoke(app, ["data", "build", str(write_config(sources)), "--set", "data.build=null"])
    assert result.exit_code == 2 and "error: data.build is not set" in result.output
    path = write_config(sources)
    config = yaml.safe_load(path.read_text())
    config["data"]["build"]["test"]["coco"]["column"] = "text"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    result = CliRunner().invoke(app, ["data", "build", str(path)])
    assert result.exit_code == 2 and "no prompt column 'text'" in result.output and "'caption'" in result.output
    result = CliRunner().invoke(app, ["data", "build", str(write_config(sources)), "--set",
                                      f"data.test_prompts.coco={sources / 'out' / 'train.parquet'}"])
    assert result.exit_code == 2 and "is the file of several sets (train, coco)" in result.output, result.output
    result = CliRunner().invoke(app, ["data", "build", str(write_config(sources)), "--set",
                                      "data.test_prompts={lexica: a.parquet, drawbench: b.parquet}"])
    assert result.exit_code == 2 and ("must name the same sets: only data.test_prompts names ['drawbench']; "
                                      "only data.build.test names ['coco']") in result.output, result.output
    absent = str(sources / "no-such-model")
    result = CliRunner().invoke(app, ["data", "build", str(write_config(sources)),
                                      "--set", f"sft.backbones=[{absent}]"])
    assert result.exit_code == 2 and f"sft.backbones: {absent} (not here)" in result.output, result.output


def test_the_command_marks_a_short_set_and_an_unchanged_rerun_and_names_every_conflict(sources):
    path = str(write_config(sources, max_train=4, max_test=5))
    first = CliRunner().invoke(app, ["data", "build", path])
    assert first.exit_code == 0, first.output
    assert "coco: 4 prompts (SHORT: 5 asked for) -> " in first.output and "lexica: 5 prompts -> " in first.output
    assert "(unchanged)" not in first.output
    mtime = (sources / "out/train.parquet").stat().st_mtime_ns
    again = CliRunner().invoke(app, ["data", "build", path])
    assert again.exit_code == 0 and again.output.count("(unchanged)") == 3, again.output
    assert (sources / "out/train.parquet").stat().st_mtime_ns == mtime  # not written again
    other = CliRunner().invoke(app, ["data", "build", str(write_config(sources, max_train=3, max_test=3))])
    assert other.exit_code == 2 and "exist with other contents" in other.output
    for name in ("train.parquet", "train.build.json", "lexica_test.parquet", "coco_test.parquet"):
        assert str(sources / "out" / name) in other.output, name


def test_a_source_that_cannot_be_loaded_is_named_by_its_field_with_what_to_check(sources):
    def build_with(source):
        path = write_config(sources)
        config = yaml.safe_load(path.read_text())
        config["data"]["build"]["train"][0] = source
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        with pytest.raises(DatasetLoadError) as error:
            build_data(load_config(path))
        return str(error.value)

    metadata = str(sources / "src/metadata.parquet")
    assert build_with({"layout": "diffusiondb", "path": metadata}) == (
        f"data.build.train[0]: {metadata}[train]: path names a file; read it with its builder: path: parquet, "
        f"data_files: {metadata}")
    assert "data.build.train[0]: json[train]: the json builder reads data_files" in build_with({"path": "json"})
    missing = build_with({"path": "parquet", "data_files": str(sources / "src/nope.parquet")})
    assert missing.startswith("data.build.train[0]: parquet[train]") and "check data_files" in missing
    assert "hub id" not in missing
    folder = build_with({"path": str(sources / "src/lexica"), "split": "validation"})
    assert "Unknown split" in folder and "check the folder's layout" in folder


def test_a_single_test_file_is_told_how_to_name_its_set(sources):
    config = load_config(write_config(sources), [f"data.test_prompts={sources / 'out/test.parquet'}"])
    with pytest.raises(PromptFileError, match=r"only data.test_prompts names \['test'\].*one file, so its set is named "
                                              r"'test' after it: write it as \{NAME: FILE\}"):
        build_data(config)


def test_check_reads_the_built_files_and_says_how_to_make_missing_ones(sources):
    path = str(write_config(sources, max_train=4, max_test=3))
    result = CliRunner().invoke(app, ["check", path])
    assert result.exit_code == 2, result.output
    assert f"error: data.train_prompts: {sources / 'out/train.parquet'}: prompt file does not exist; `semdpo data " \
           "build CONFIG` writes it from data.build" in result.output
    result = CliRunner().invoke(app, ["status", path])  # as status (and run, and the flow) plan the prompts
    assert result.exit_code == 2 and "error: data.train_prompts: " in result.output and "data build" in result.output
    assert CliRunner().invoke(app, ["data", "build", path]).exit_code == 0
    result = CliRunner().invoke(app, ["check", path, "--set", "data.sft_pairs=demo:sft_pairs"])
    assert result.exit_code == 0 and "every input file holds usable prompts" in result.output, result.output
    (sources / "out/coco_test.parquet").write_bytes(b"")
    result = CliRunner().invoke(app, ["check", path, "--set", "data.sft_pairs=demo:sft_pairs"])
    assert result.exit_code == 2 and "error: data.test_prompts (coco): " in result.output, result.output
    assert "coco_test.parquet: not a readable Parquet file" in result.output


def test_near_duplicates_agree_with_brute_force():
    rng = random.Random(0)
    vocabulary = [f"w{i}" for i in range(12)]
    keys = [" ".join(rng.sample(vocabulary, rng.randint(1, 7))) for _ in range(60)]
    for threshold in (0.5, 0.7, 0.8, 1.0):
        index = NearDuplicates(keys[:30], threshold)
        for key in keys[30:] + [" ".join(c) for c in itertools.combinations(vocabulary[:5], 3)]:
            words = set(key.split())
            expected = key in keys[:30] or any(
                len(words & set(t.split())) / len(words | set(t.split())) >= threshold for t in keys[:30])
            assert (index.match(key) is not None) == expected, (threshold, key)


def test_pairs_from_a_dataset_read_as_from_a_file(tmp_path):
    rows = {"prompt": ["a red fox", "a castle"], "chosen": ["a red fox, golden hour", "a castle at dawn, detailed"],
            "rejected": ["a fox", "castle"]}
    (tmp_path / "pairs/data").mkdir(parents=True)
    pq.write_table(pa.table(rows), tmp_path / "pairs/data/train-00000-of-00001.parquet")
    pq.write_table(pa.table(rows), tmp_path / "pairs.parquet")
    hub = own_pairs_table(f"hf:{tmp_path / 'pairs'}:train")
    assert hub.to_pylist() == own_pairs_table(str(tmp_path / "pairs.parquet")).to_pylist()
    assert source_digest(f"hf:{tmp_path / 'pairs'}") == source_digest(f"hf:{tmp_path / 'pairs'}:train")
    with pytest.raises(PromptFileError, match=r"datasets could not load it.*split"):
        own_pairs_table(f"hf:{tmp_path / 'pairs'}:validation")


def test_karpathy_coco_rows_give_one_caption_per_image(tmp_path):
    """COCO in the Karpathy layout (one row per image with a list of sentences, or one row per
    sentence as {raw: ...}): the first caption of each image."""
    (tmp_path / "lists/data").mkdir(parents=True)
    pq.write_table(pa.table({"cocoid": [7, 8], "sentences": [["a dog on a sofa", "a brown dog"], ["a kite"]]}),
                   tmp_path / "lists/data/test-00000-of-00001.parquet")
    (tmp_path / "structs/data").mkdir(parents=True)
    pq.write_table(pa.table({"cocoid": [7, 7, 8], "sentences": [{"raw": "a dog on a sofa"}, {"raw": "a brown dog"},
                                                                 {"raw": "a kite"}]}),
                   tmp_path / "structs/data/test-00000-of-00001.parquet")
    for folder in ("lists", "structs"):
        counts = Counter()
        rows, record = read_source(PromptSource(path=str(tmp_path / folder), layout="coco", split="test"), "t", counts)
        assert record["column"] == "sentences"
        assert [p.text for p in clean(rows, folder, [], set(), counts)] == ["a dog on a sofa", "a kite"]
        assert counts["same image"] == 1
        # the first sentence filtered out: the image's next one describes it
        assert [p.text for p in clean(rows, folder, ["sofa"], set(), Counter())] == ["a brown dog", "a kite"]


def test_an_image_keeps_its_first_caption_that_survives_the_filters(tmp_path):
    """A COCO image whose first caption is empty, word-listed or another image's is described by
    its next caption, not dropped."""
    captions = [(1, "a man on a bike"), (2, "   "), (2, "a brown dog on a sofa"), (3, "a man on a bike!"),
                (3, "a kite over the beach"), (3, "two kites"), (4, "a nsfw thing"), (4, "a bowl of soup")]
    (tmp_path / "captions.json").write_text(json.dumps({"annotations": [
        {"image_id": image, "id": k, "caption": c} for k, (image, c) in enumerate(captions)]}))
    source = PromptSource(path="json", layout="coco", data_files=str(tmp_path / "captions.json"), field="annotations")
    counts = Counter()
    rows, _ = read_source(source, "t", counts)
    kept = clean(rows, "coco", ["nsfw"], set(), counts)
    assert [p.text for p in kept] == ["a man on a bike", "a brown dog on a sofa", "a kite over the beach",
                                      "a bowl of soup"]
    assert [p.row for p in kept] == [0, 2, 4, 7]
    assert counts == Counter({"read": 8, "empty": 1, "duplicate": 1, "same image": 1, "word filter": 1})


def test_an_image_whose_first_caption_is_too_long_or_a_test_prompt_keeps_the_next(sources):
    """The length and test-overlap filters run on an image's captions before one is chosen, not
    after: an image is lost only when none of its captions survives."""
    captions = [(1, LONG), (1, "a man on a bike"), (2, "a castle on a hill at dawn"), (2, "a grey stone tower"),
                (3, LONG)]
    (sources / "src/captions_val2014.json").write_text(json.dumps({"annotations": [
        {"image_id": image, "id": k, "caption": c} for k, (image, c) in enumerate(captions)]}))
    path = write_config(sources)
    config = yaml.safe_load(path.read_text())
    config["data"]["build"]["train"].append(config["data"]["build"]["test"]["coco"])  # COCO in the train set too
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    built = {s.name: s for s in build_data(load_config(path))}
    assert sorted(p.text for p in built["coco"].prompts) == ["a castle on a hill at dawn", "a man on a bike"]
    assert built["coco"].counts["too long"] == 2 and built["coco"].counts["same image"] == 1
    # in the train set, image 2's first caption is a Lexica test prompt: its second stands in
    train = [p.text for p in built["train"].prompts]
    assert "a grey stone tower" in train and "a man on a bike" not in train  # that one is a coco test prompt


def test_a_prompt_that_is_not_text_is_an_error_naming_its_row_and_column(sources):
    pq.write_table(pa.table({"prompt": ["a red fox", "a castle"], "Prompt": [3, 4]}),
                   sources / "src/numbers.parquet")
    source = PromptSource(path="parquet", layout="lexica", data_files=str(sources / "src/numbers.parquet"))
    with pytest.raises(PromptFileError, match=r"row 0, column 'Prompt'.*3 \(int\), not text.*`column`"):
        read_source(source, "data.build.test.lexica", Counter())
    rows, _ = read_source(source.model_copy(update={"column": "prompt"}), "t", Counter())
    assert [r.text for r in rows] == ["a red fox", "a castle"]


def test_a_set_with_nothing_left_is_refused_and_nothing_written(sources):
    (sources / "src/words.txt").write_text("castle\nastronaut\nramen\ncyberpunk\nfox\nlighthouse\nmodel\nword\n")
    with pytest.raises(PromptFileError,
                       match=r"lexica: no prompt is left to write \(10 read, .*word filter.*data.build"):
        build_data(load_config(write_config(sources)))
    assert not (sources / "out").exists()


def test_a_revision_on_a_builder_is_refused_with_how_to_pin_its_files(sources):
    path = write_config(sources)
    config = yaml.safe_load(path.read_text())
    config["data"]["build"]["train"][0]["revision"] = "v1"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    with pytest.raises(DatasetLoadError, match=r"^data.build.train\[0\]: a revision pins a hub repository.*"
                                               r"hf://datasets/OWNER/NAME@REVISION/FILE"):
        build_data(load_config(path))
    assert not (sources / "out").exists()
    spec = parse_hub_source("hf:parquet@v1")  # a source as prompt and pairs files name one
    with pytest.raises(DatasetLoadError, match=r"^parquet@v1\[train\]: a revision pins a hub repository"):
        load_hub(spec)


def test_a_build_failing_while_writing_leaves_every_old_file(sources, monkeypatch):
    """--force writes every set beside its file before replacing any: a failure on the last leaves
    the old sets, not a mix of two builds, and no temporary."""
    build_data(load_config(write_config(sources, max_train=3, max_test=3)))
    before = {p.name: p.read_bytes() for p in (sources / "out").iterdir()}
    real = data_build.write_temporary
    calls = []

    def failing(target, data):
        calls.append(target.name)
        if len(calls) == len(before):
            raise OSError(28, "No space left on device")
        return real(target, data)

    monkeypatch.setattr(data_build, "write_temporary", failing)
    with pytest.raises(OSError, match="No space left"):
        build_data(load_config(write_config(sources, max_train=4, max_test=4)), force=True)
    assert {p.name: p.read_bytes() for p in (sources / "out").iterdir()} == before
    monkeypatch.setattr(data_build, "write_temporary", real)
    build_data(load_config(write_config(sources, max_train=4, max_test=4)), force=True)
    assert len(prompts(sources / "out/train.parquet")) == 4
    # a temporary a killed build left (a process that is gone) is removed by the next build
    stale = sources / "out/.train.parquet.somehost-999999.abcd1234.tmp"
    stale.write_bytes(b"half")
    os.utime(stale, (0, 0))
    build_data(load_config(write_config(sources, max_train=4, max_test=4)), force=True)
    assert not stale.exists() and not list((sources / "out").glob(".*.tmp"))
    mode = (sources / "out/train.parquet").stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask  # as any file the user writes, not a temporary's 0600


@pytest.mark.parametrize("source, split", [("hf:o/n", "train"), ("hf:o/n@v2:test[:200]", "test[:200]"),
                                           ("hf:o/n:train[:10%]+validation", "train[:10%]+validation"),
                                           ("hf:o/n:test[:33%](pct1_dropremainder)", "test[:33%](pct1_dropremainder)")])
def test_a_hub_source_takes_datasets_split_syntax(source, split):
    assert parse_hub_source(source).split == split


@pytest.mark.parametrize("source", ["hf:o/n:train:extra", "hf: o/n", "hf:o/n@:train", "hf:o/n:train test"])
def test_a_malformed_hub_source_says_how_it_reads(source):
    with pytest.raises(DatasetLoadError,
                       match=r"hf:OWNER/NAME\[@REVISION\]\[:SPLIT\] with no spaces.*train\+validation"):
        parse_hub_source(source)
