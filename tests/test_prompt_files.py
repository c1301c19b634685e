"""Bad prompt files are refused with an error naming the file and the line or column."""

import logging

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from semdpo_core.stages.prompts import (
    PromptFileError,
    clean_prompts,
    load_split,
    prompt_table,
    read_records,
)


def never_too_long(text):
    return None


def test_each_format_reads_the_same_prompts(tmp_path):
    texts = ["a red fox", "an old lighthouse, at dusk"]
    (tmp_path / "p.txt").write_text("\n".join(texts) + "\n")
    (tmp_path / "p.csv").write_text('prompt,other\n"a red fox",1\n"an old lighthouse, at dusk",2\n')
    (tmp_path / "p.jsonl").write_text('{"prompt": "a red fox"}\n{"prompt": "an old lighthouse, at dusk", "x": 1}\n')
    pq.write_table(pa.table({"prompt": texts}), tmp_path / "p.parquet")
    for name in ("p.txt", "p.csv", "p.jsonl", "p.parquet"):
        assert [r.fields["prompt"] for r in read_records(str(tmp_path / name), ["prompt"])] == texts


def test_invalid_utf8_names_file_and_line(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"fine prompt\nsecond\nbroken \xff\xfe prompt\n")
    with pytest.raises(PromptFileError, match=r"bad.txt:3: invalid UTF-8"):
        read_records(str(path), ["prompt"])


def test_malformed_csv_row_names_the_line(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text('prompt,score\n"ok",1\n"too","many",3\n')
    with pytest.raises(PromptFileError, match=r"bad.csv:3: row has 3 fields"):
        read_records(str(path), ["prompt"])
    path.write_text('prompt\n"ok"\n"unclosed quote\n')
    with pytest.raises(PromptFileError, match=r"bad.csv:\d+: malformed CSV row"):
        read_records(str(path), ["prompt"])


def test_missing_csv_column_names_the_columns(tmp_path):
    path = tmp_path / "cols.csv"
    path.write_text("text\nhello\n")
    with pytest.raises(PromptFileError, match=r"cols.csv: missing column\(s\) \['prompt'\]; the header has \['text'\]"):
        read_records(str(path), ["prompt"])


def test_malformed_or_mistyped_jsonl_row_names_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "ok"}\n{"prompt": "broken"\n')
    with pytest.raises(PromptFileError, match=r"bad.jsonl:2: malformed JSON"):
        read_records(str(path), ["prompt"])
    path.write_text('{"prompt": "ok"}\n\n{"prompt": 42}\n')
    with pytest.raises(PromptFileError, match=r"bad.jsonl:3: field 'prompt' must be a string, got int"):
        read_records(str(path), ["prompt"])
    path.write_text('{"text": "ok"}\n')
    with pytest.raises(PromptFileError, match=r"bad.jsonl:1: missing field 'prompt'"):
        read_records(str(path), ["prompt"])


def test_parquet_missing_mistyped_and_truncated(tmp_path):
    path = tmp_path / "p.parquet"
    pq.write_table(pa.table({"text": ["a"]}), path)
    with pytest.raises(PromptFileError, match=r"p.parquet: missing column 'prompt'"):
        read_records(str(path), ["prompt"])
    pq.write_table(pa.table({"prompt": [1, 2]}), path)
    with pytest.raises(PromptFileError, match=r"p.parquet: column 'prompt' has type int64, expected string"):
        read_records(str(path), ["prompt"])
    pq.write_table(pa.table({"prompt": ["a red fox"] * 100}), path)
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(PromptFileError, match=r"p.parquet: not a readable Parquet file"):
        read_records(str(path), ["prompt"])


def test_unknown_type_and_missing_file(tmp_path):
    with pytest.raises(PromptFileError, match="unknown prompt file type '.xlsx'"):
        read_records(str(tmp_path / "p.xlsx"), ["prompt"])
    with pytest.raises(PromptFileError, match="does not exist"):
        read_records(str(tmp_path / "nope.txt"), ["prompt"])


def test_blank_lines_skipped_and_duplicates_dropped_with_counts(tmp_path, caplog):
    path = tmp_path / "p.txt"
    path.write_text("a red fox\n\n   \nan owl\na  red   fox\nan owl\n")
    with caplog.at_level(logging.INFO, logger="semdpo"):
        kept = clean_prompts(read_records(str(path), ["prompt"]), "prompt")
    assert [r.fields["prompt"] for r in kept] == ["a red fox", "an owl"]
    assert [r.source for r in kept] == [f"{path}:1", f"{path}:4"]
    assert f"{path}: 2 prompts kept, 2 blank skipped, 2 duplicates dropped" in caplog.text


def test_too_long_prompts_are_reported_with_their_line_not_cut(tmp_path, caplog):
    path = tmp_path / "p.txt"
    path.write_text("short one\n" + "very " * 40 + "long\nshort two\n")
    with caplog.at_level(logging.WARNING, logger="semdpo"):
        kept = load_split(str(path), "prompt", None, lambda t: len(t.split()) if len(t.split()) > 10 else None)
    assert [r.fields["prompt"] for r in kept] == ["short one", "short two"]
    assert f"{path}: 1 prompt(s) too long for the rewriter were skipped (line 2; the longest 41 tokens)" in caplog.text


def test_prompt_table_keeps_test_prompts_out_of_training(tmp_path):
    (tmp_path / "train.txt").write_text("a\nb\nc\n")
    (tmp_path / "test.txt").write_text("b\nd\n")
    (tmp_path / "coco.txt").write_text("c\ne\nf\n")
    tests = {"lexica": str(tmp_path / "test.txt"), "coco": str(tmp_path / "coco.txt")}
    table = prompt_table(str(tmp_path / "train.txt"), tests, "prompt", None, 2, never_too_long)
    rows = [(r["prompt"], r["split"], r["dataset"]) for r in table.to_pylist()]
    assert rows == [("a", "train", "train"), ("b", "test", "lexica"), ("d", "test", "lexica"),
                    ("c", "test", "coco"), ("e", "test", "coco")]  # at most 2 per dataset; b and c left training


def test_an_empty_test_set_is_named(tmp_path):
    (tmp_path / "train.txt").write_text("a\nb\n")
    (tmp_path / "coco.txt").write_text("c\n")
    (tmp_path / "empty.txt").write_text("\n\n")
    tests = {"coco": str(tmp_path / "coco.txt"), "lexica": str(tmp_path / "empty.txt")}
    with pytest.raises(PromptFileError, match=r"none in test set\(s\) lexica \(.*empty.txt\)"):
        prompt_table(str(tmp_path / "train.txt"), tests, "prompt", None, None, never_too_long)


def test_lines_split_on_newlines_only_whatever_else_a_prompt_holds(tmp_path):
    inner = ["\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"]
    path = tmp_path / "p.txt"
    path.write_text("".join(f"a red{c}fox {i}\r\n" for i, c in enumerate(inner)), newline="")
    records = read_records(str(path), ["prompt"])
    assert len(records) == len(inner) and records[-1].source == f"{path}:{len(inner)}"
    kept = clean_prompts(records, "prompt")
    assert [r.fields["prompt"] for r in kept] == [f"a red fox {i}" for i in range(len(inner))]
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text('{"prompt": "one\u2028prompt"}\n{"prompt": "two"}\n', encoding="utf-8")
    assert [r.fields["prompt"] for r in read_records(str(jsonl), ["prompt"])] == ["one\u2028prompt", "two"]


def test_a_byte_order_mark_is_not_part_of_the_first_prompt(tmp_path):
    bom = "\ufeff"
    (tmp_path / "p.txt").write_text(bom + "a red fox\n", encoding="utf-8")
    (tmp_path / "p.csv").write_text(bom + "prompt\na red fox\n", encoding="utf-8")
    (tmp_path / "p.jsonl").write_text(bom + '{"prompt": "a red fox"}\n', encoding="utf-8")
    for name in ("p.txt", "p.csv", "p.jsonl"):
        assert [r.fields["prompt"] for r in read_records(str(tmp_path / name), ["prompt"])] == ["a red fox"], name


def test_control_characters_and_terminal_escapes_are_removed_and_counted(tmp_path, caplog):
    path = tmp_path / "p.txt"
    path.write_text("clean prompt\na red\x00 fox\n\x1b[31ma red owl\x1b[0m\nbell\x07 tower\n")
    with caplog.at_level(logging.WARNING, logger="semdpo"):
        kept = clean_prompts(read_records(str(path), ["prompt"]), "prompt")
    assert [r.fields["prompt"] for r in kept] == ["clean prompt", "a red fox", "a red owl", "bell tower"]
    assert (f"{path}: 3 prompt(s) held control characters or terminal escapes, "
            f"removed (first at {path}:2)") in caplog.text


def test_many_over_long_prompts_make_one_line_with_the_first_line_numbers(tmp_path, caplog):
    path = tmp_path / "p.txt"
    path.write_text("".join(f"long {i} " + "word " * 20 + "\n" for i in range(12)) + "short\n")
    with caplog.at_level(logging.WARNING, logger="semdpo"):
        kept = load_split(str(path), "prompt", None, lambda t: len(t.split()) if len(t.split()) > 10 else None)
    assert [r.fields["prompt"] for r in kept] == ["short"]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert warnings[0].getMessage() == (f"{path}: 12 prompt(s) too long for the rewriter were skipped "
                                        "(lines 1, 2, 3, 4, 5 and 7 more; the longest 22 tokens)")


@pytest.mark.parametrize("content, why", [("", "holds no prompts"), ("\n  \n\t\n", "holds only blank lines"),
                                           ("word " * 60 + "\n" + "other " * 70 + "\n",
                                            "every one of its 2 prompts is longer")])
def test_a_file_without_a_usable_prompt_is_refused_before_any_stage(tmp_path, content, why):
    from typer.testing import CliRunner

    from flows.cli import app

    path = tmp_path / "train.txt"
    path.write_text(content)
    result = CliRunner().invoke(app, ["run", "--set", f"data.train_prompts={path}"])
    assert result.exit_code == 2
    assert result.output.startswith(f"error: {path} (data.train_prompts): {why}"), result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


USER_ERRORS = [
    (["--set", "train.alpha=[1,2"], "is not valid YAML"),
    (["--set", "data.train_prompts={tmp}/dir.txt"], "is a directory, not a prompt file"),
    (["--set", "store=s3://"], "no bucket"),
    (["{tmp}"], "is a directory; name a YAML file"),
    (["{tmp}/missing.yaml"], "does not exist"),
]


@pytest.mark.parametrize("command, problem, message",
                         [([c], p, m) for c in ("status", "run", "gc") for p, m in USER_ERRORS]
                         + [(["check"], p, m) for p, m in USER_ERRORS if "data." not in p[-1] and "store" not in p[-1]])
def test_every_command_ends_a_user_error_in_one_line(tmp_path, command, problem, message):
    from typer.testing import CliRunner

    from flows.cli import app

    (tmp_path / "dir.txt").mkdir()
    result = CliRunner().invoke(app, command + [p.format(tmp=tmp_path) for p in problem])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.output, result.output
