"""The artifact store: content addresses, manifests as commit points, refusal of bad bytes."""

import json

import pyarrow as pa
import pytest

from semdpo_core.schemas import PAIRS, SchemaError
from semdpo_core.store import ArtifactStore, CorruptArtifact, DatasetMissing, DatasetRef, fingerprint


def pairs_table(n=3):
    return pa.table(
        {"prompt_id": [f"p{i}" for i in range(n)], "prompt": ["x"] * n, "chosen": ["w"] * n, "rejected": ["l"] * n,
         "chosen_reward": [1.0] * n, "rejected_reward": [0.0] * n}
    )


def test_fingerprint_is_stable_and_sensitive():
    a = fingerprint("weigh", {"alpha": 4.0}, [DatasetRef("pairs", "abc")])
    assert a == fingerprint("weigh", {"alpha": 4.0}, [DatasetRef("pairs", "abc")])
    assert a != fingerprint("weigh", {"alpha": 2.0}, [DatasetRef("pairs", "abc")])
    assert a != fingerprint("weigh", {"alpha": 4.0}, [DatasetRef("pairs", "abd")])
    assert a != fingerprint("train", {"alpha": 4.0}, [DatasetRef("pairs", "abc")])


def test_round_trip_and_manifest(tmp_path):
    store = ArtifactStore(str(tmp_path))
    ref = DatasetRef("pairs", "f00")
    assert not store.is_committed(ref)
    store.write_dataset(ref, PAIRS, [pairs_table(2), pairs_table(3)], files={"model/config.json": b"{}"}, meta={"k": 1})
    assert store.is_committed(ref)
    assert store.read_table(ref, PAIRS).num_rows == 5
    manifest = json.loads((tmp_path / "pairs/f00/_manifest.json").read_text())
    assert [p["rows"] for p in manifest["parts"]] == [2, 3] and manifest["meta"] == {"k": 1}
    assert store.read_file(ref, "model/config.json") == b"{}"


def test_a_dataset_without_manifest_is_not_read(tmp_path):
    store = ArtifactStore(str(tmp_path))
    ref = DatasetRef("pairs", "f00")
    store.write_dataset(ref, PAIRS, pairs_table())
    (tmp_path / "pairs/f00/_manifest.json").unlink()
    with pytest.raises(DatasetMissing, match="has no manifest"):
        store.read_table(ref, PAIRS)


def test_altered_part_is_refused(tmp_path):
    store = ArtifactStore(str(tmp_path))
    ref = DatasetRef("pairs", "f00")
    store.write_dataset(ref, PAIRS, pairs_table())
    part = tmp_path / "pairs/f00/part-00000.parquet"
    data = bytearray(part.read_bytes())
    data[len(data) // 2] ^= 0xFF
    part.write_bytes(bytes(data))
    with pytest.raises(CorruptArtifact, match="part-00000.parquet: checksum does not match"):
        store.read_table(ref, PAIRS)


def test_table_that_does_not_match_its_schema_is_refused_naming_the_column(tmp_path):
    store = ArtifactStore(str(tmp_path))
    bad = pairs_table().drop_columns(["rejected"])
    with pytest.raises(SchemaError, match=r"pairs/f00/part-00000.parquet: missing column\(s\) rejected"):
        store.write_dataset(DatasetRef("pairs", "f00"), PAIRS, bad)
    bad = pairs_table().set_column(4, "chosen_reward", pa.array(["high"] * 3))
    with pytest.raises(SchemaError, match=r"column 'chosen_reward' has type string, expected double"):
        store.write_dataset(DatasetRef("pairs", "f00"), PAIRS, bad)
    assert not store.is_committed(DatasetRef("pairs", "f00"))
