"""The artifact store on both backends (a local directory, S3 over HTTP): content addresses,
shards, manifests as commit points, refusal of damaged bytes."""

import json
import logging
import threading
import time
import uuid

import pyarrow as pa
import pytest

from semdpo_core.pipeline.schemas import PAIRS, SchemaError
from semdpo_core.store.artifact_store import (
    ArtifactStore,
    CorruptArtifact,
    DatasetMissing,
    DatasetRef,
    fingerprint,
)
from semdpo_core.store.backends import S3Backend, StoreError, StoreUnavailable

REF = DatasetRef("pairs", "f00")


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return ArtifactStore(str(tmp_path / "store"))
    return ArtifactStore(request.getfixturevalue("s3_bucket"))


def pairs_table(n=3, start=0):
    ids = [f"p{i}" for i in range(start, start + n)]
    return pa.table(
        {"prompt_id": ids, "prompt": ["x"] * n, "chosen_id": [f"{i}-0" for i in ids],
         "rejected_id": [f"{i}-1" for i in ids],
         "chosen": ["w"] * n, "rejected": ["l"] * n,
         "chosen_reward": [1.0] * n, "rejected_reward": [0.0] * n}
    )


def damage(store, key):
    data = bytearray(store.backend.read_bytes(key))
    data[len(data) // 2] ^= 0xFF
    store.backend.write_bytes(key, bytes(data))


def test_fingerprint_is_stable_and_sensitive():
    a = fingerprint("weigh", {"alpha": 4.0}, [DatasetRef("pairs", "abc")])
    assert a == fingerprint("weigh", {"alpha": 4.0}, [DatasetRef("pairs", "abc")])
    assert a != fingerprint("weigh", {"alpha": 2.0}, [DatasetRef("pairs", "abc")])
    assert a != fingerprint("weigh", {"alpha": 4.0}, [DatasetRef("pairs", "abd")])
    assert a != fingerprint("train", {"alpha": 4.0}, [DatasetRef("pairs", "abc")])


def test_round_trip_and_manifest(store):
    assert not store.is_committed(REF)
    store.write_dataset(REF, PAIRS, [pairs_table(2), pairs_table(3, 2)], files={"model/config.json": b"{}"},
                        meta={"k": 1})
    assert store.is_committed(REF)
    assert store.read_table(REF, PAIRS).column("prompt_id").to_pylist() == ["p0", "p1", "p2", "p3", "p4"]
    assert store.read_part(REF, 1, PAIRS).num_rows == 3
    manifest = json.loads(store.backend.read_bytes("pairs/f00/_manifest.json"))
    assert [p["rows"] for p in manifest["parts"]] == [2, 3] and manifest["meta"] == {"k": 1}
    assert store.read_file(REF, "model/config.json") == b"{}"
    assert store.invalid_entries(REF) == []


def test_rows_and_columns_are_read_from_only_the_parts_and_columns_asked_for(store):
    store.write_dataset(REF, PAIRS, [pairs_table(2), pairs_table(3, 2), pairs_table(2, 5)])
    assert store.read_rows(REF, PAIRS, 1, 3).column("prompt_id").to_pylist() == ["p1", "p2", "p3"]
    assert store.read_rows(REF, PAIRS, 6, 10).column("prompt_id").to_pylist() == ["p6"]
    assert store.read_rows(REF, PAIRS, 9, 2).num_rows == 0
    damage(store, "pairs/f00/part-00000.parquet")  # rows 2..6 live in the other parts: not read, not refused
    assert store.read_rows(REF, PAIRS, 2, 5).column("prompt_id").to_pylist() == ["p2", "p3", "p4", "p5", "p6"]
    with pytest.raises(CorruptArtifact, match="part-00000"):
        store.read_rows(REF, PAIRS, 1, 2)
    store.write_dataset(DatasetRef("pairs", "f01"), PAIRS, [pairs_table(2)])
    ids = store.read_table(DatasetRef("pairs", "f01"), PAIRS, columns=["chosen_reward", "prompt_id"])
    assert ids.column_names == ["chosen_reward", "prompt_id"] and ids.column("prompt_id").to_pylist() == ["p0", "p1"]
    with pytest.raises(SchemaError, match="no column.* image"):
        store.read_table(DatasetRef("pairs", "f01"), PAIRS, columns=["prompt_id", "image"])


def test_shards_commit_one_by_one_and_the_manifest_last(store):
    store.write_part(REF, 0, pairs_table(2), PAIRS)
    store.write_part(REF, 2, pairs_table(2, 4), PAIRS)
    assert [store.shard_is_done(REF, i) for i in range(3)] == [True, False, True]
    assert not store.is_committed(REF)
    with pytest.raises(DatasetMissing, match="shard 1 of 3 was never written"):
        store.commit(REF, PAIRS, 3)
    with pytest.raises(DatasetMissing, match="has no manifest"):
        store.read_table(REF, PAIRS)
    store.write_part(REF, 1, pairs_table(2, 2), PAIRS)
    store.commit(REF, PAIRS, 3)
    assert store.read_table(REF, PAIRS).num_rows == 6


def test_a_damaged_part_is_refused_detected_and_withdrawn(store):
    store.write_dataset(REF, PAIRS, [pairs_table(2), pairs_table(2, 2)])
    damage(store, "pairs/f00/part-00001.parquet")
    with pytest.raises(CorruptArtifact, match=r"part-00001.parquet: checksum does not match"):
        store.read_table(REF, PAIRS)
    assert store.invalid_entries(REF) == ["part-00001.parquet"]
    assert [store.shard_is_done(REF, i) for i in range(2)] == [True, False]
    store.uncommit(REF, ["part-00001.parquet"])
    assert not store.is_committed(REF) and store.shard_is_done(REF, 0)


def test_a_truncated_manifest_or_shard_record_is_named_detected_and_withdrawn(store):
    """External damage to the commit files (a truncated copy, a full disk) must not stop every
    later run with an unnamed JSONDecodeError: it is named, and withdrawing it lets the stage rerun."""
    from semdpo_core.store.status import stage_status

    for i in range(2):
        store.write_part(REF, i, pairs_table(2, 2 * i), PAIRS)
    store.commit(REF, PAIRS, 2)
    key = "pairs/f00/_manifest.json"
    store.backend.write_bytes(key, store.backend.read_bytes(key)[:25])  # truncated
    with pytest.raises(CorruptArtifact, match=r"_manifest.json is damaged .*rerun"):
        store.read_table(REF, PAIRS)
    assert store.invalid_entries(REF) == ["_manifest.json"]
    assert stage_status(store, "pairs", REF).state == "damaged"
    store.uncommit(REF, store.invalid_entries(REF))
    assert not store.is_committed(REF) and [store.shard_is_done(REF, i) for i in range(2)] == [True, True]
    store.commit(REF, PAIRS, 2)  # the intact shards commit again: nothing recomputed
    assert store.read_table(REF, PAIRS).num_rows == 4
    record = "pairs/f00/_shards/part-00001.parquet.json"
    store.backend.write_bytes(record, store.backend.read_bytes(record)[:10])
    assert store.shard_record(REF, 1) is None and [store.shard_is_done(REF, i) for i in range(2)] == [True, False]


def test_table_that_does_not_match_its_schema_is_refused_naming_the_column(store):
    bad = pairs_table().drop_columns(["rejected"])
    with pytest.raises(SchemaError, match=r"pairs/f00/part-00000.parquet: missing column\(s\) rejected"):
        store.write_dataset(REF, PAIRS, bad)
    bad = pairs_table().set_column(PAIRS.get_field_index("chosen_reward"), "chosen_reward", pa.array(["high"] * 3))
    with pytest.raises(SchemaError, match=r"column 'chosen_reward' has type string, expected double"):
        store.write_dataset(REF, PAIRS, bad)
    assert not store.is_committed(REF)


def test_checkpoints_newest_intact_one_wins(store):
    ref = DatasetRef("train", "t00")
    assert store.latest_checkpoint(ref) is None
    store.write_checkpoint(ref, 4, {"model.safetensors": b"four"})
    store.write_checkpoint(ref, 8, {"model.safetensors": b"eight"})
    assert store.latest_checkpoint(ref) == (8, {"model.safetensors": b"eight"})
    damage(store, "train/t00/_checkpoints/step-000000008/model.safetensors")
    assert store.latest_checkpoint(ref) == (4, {"model.safetensors": b"four"})


def test_pruned_checkpoints_leave_no_empty_folder(tmp_path):
    """`train.checkpoint_every=1` prunes a checkpoint every step: none may leave its step-N folder behind."""
    store = ArtifactStore(str(tmp_path))
    ref = DatasetRef("train", "t01")
    for step in range(1, 6):
        store.write_checkpoint(ref, step, {"model.safetensors": b"w" * step, "optimizer/state.pt": b"o"})
        store.prune_checkpoints(ref, keep=2)
    folders = sorted(p.name for p in (tmp_path / "train" / "t01" / "_checkpoints").iterdir())
    assert folders == ["step-000000004", "step-000000005"]
    store.delete_checkpoint(ref, 4)
    store.delete_checkpoint(ref, 5)
    assert not (tmp_path / "train" / "t01").exists()  # empty parents go too, up to the store's root
    assert tmp_path.is_dir()


def stored_rows(store, ref=REF):
    return store.read_table(ref, PAIRS).to_pylist()


def test_s3_endpoint_down_for_20_s_mid_operation_fails_nothing(s3_server, s3_bucket, caplog):
    """A store restarting for 20 s (MinIO after an upgrade) does not stop a write or a read that
    meet it: both wait it out within the default budget and the data is intact."""
    store = ArtifactStore(s3_bucket)
    store.write_dataset(REF, PAIRS, [pairs_table(2), pairs_table(2, 2)])
    written = DatasetRef("pairs", "f01")
    outcome: dict[str, object] = {}

    def write() -> None:
        try:
            store.write_dataset(written, PAIRS, [pairs_table(3), pairs_table(2, 3)])
            outcome["written"] = True
        except Exception as e:  # noqa: BLE001 - reported by the assertion below
            outcome["written"] = e

    caplog.set_level(logging.INFO, logger="semdpo.store")
    s3_server.stop()
    restart = threading.Timer(20, s3_server.start)
    restart.start()
    started = time.monotonic()
    writer = threading.Thread(target=write)
    try:
        writer.start()
        read = stored_rows(store)
        writer.join(timeout=120)
    finally:
        restart.join()
    waited = time.monotonic() - started
    assert outcome.get("written") is True, outcome
    assert waited >= 19, "the outage should have been met"
    assert read == pairs_table(2).to_pylist() + pairs_table(2, 2).to_pylist()
    assert stored_rows(store, written) == pairs_table(3).to_pylist() + pairs_table(2, 3).to_pylist()
    assert store.invalid_entries(written) == [] and store.invalid_entries(REF) == []
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings and all(s3_server.url in w and "unreachable" in w and "s more" in w for w in warnings)
    assert len(warnings) <= 4, "one warning per waiting operation, then one every 30 s at most"
    assert any("answers again" in r.getMessage() for r in caplog.records if r.levelno == logging.INFO)


def test_s3_outage_past_the_budget_names_endpoint_key_and_seconds_and_loses_nothing(s3_server, s3_bucket, monkeypatch):
    monkeypatch.setenv("SEMDPO_STORE_RETRY_SECONDS", "2")
    store = ArtifactStore(s3_bucket)
    store.write_dataset(REF, PAIRS, pairs_table())
    s3_server.stop()
    started = time.monotonic()
    try:
        with pytest.raises(StoreUnavailable) as failure:
            store.write_part(DatasetRef("pairs", "f01"), 0, pairs_table(), PAIRS)
    finally:
        s3_server.start()
    assert 2 <= time.monotonic() - started < 10, "the budget is a time: 2 s of retries, then the error"
    message = str(failure.value)
    assert s3_server.url in message and f"{s3_bucket}/pairs/f01/part-00000.parquet" in message
    assert "after 2 s of retries" in message and "SEMDPO_STORE_RETRY_SECONDS" in message and "rerun" in message
    assert "\n" not in message
    assert "testing" not in message  # no credential in the message
    assert store.read_table(REF, PAIRS).num_rows == 3


def test_s3_errors_that_retrying_cannot_fix_fail_at_once(s3_server):
    store = ArtifactStore(f"s3://semdpo-missing-{uuid.uuid4().hex[:8]}/artifacts")  # the default 300 s budget
    assert store.backend.retry_seconds == 300
    started = time.monotonic()
    with pytest.raises(StoreError, match="does not exist at .*; create it first") as failure:
        store.write_part(REF, 0, pairs_table(), PAIRS)
    assert not isinstance(failure.value, StoreUnavailable)
    assert time.monotonic() - started < 5, "a missing bucket is not retried"


def test_s3_retry_budget_and_attempts_come_from_the_environment_or_the_constructor(s3_bucket, monkeypatch):
    monkeypatch.setenv("SEMDPO_STORE_RETRY_SECONDS", "45")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "5")
    backend = S3Backend(s3_bucket)
    assert backend.retry_seconds == 45 and backend.client.meta.config.retries["total_max_attempts"] == 5
    assert S3Backend(s3_bucket, retry_seconds=7).retry_seconds == 7
    monkeypatch.setenv("SEMDPO_STORE_RETRY_SECONDS", "five minutes")
    with pytest.raises(StoreError, match="SEMDPO_STORE_RETRY_SECONDS='five minutes' is not a number of seconds"):
        S3Backend(s3_bucket)


class FakeClock:
    """The retries' clock and wait: waiting moves the clock on at once (no real sleep)."""

    def __init__(self) -> None:
        self.now, self.pauses = 0.0, []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.pauses.append(seconds)
        self.now += seconds


def client_error(code: str, status: int):
    from botocore.exceptions import ClientError

    return ClientError({"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}},
                       "PutObject")


def offline_backend(monkeypatch, retry_seconds: float) -> tuple[S3Backend, FakeClock]:
    """An S3Backend whose calls never reach a server (each test passes the operation), on a fake clock."""
    from semdpo_core.store import backends

    clock = FakeClock()
    monkeypatch.setattr(backends, "_clock", clock)
    monkeypatch.setattr(backends, "_sleep", clock.sleep)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    backend = S3Backend("s3://semdpo-offline/artifacts", retry_seconds=retry_seconds)
    backend.answered = True  # an endpoint that has answered before: the whole budget applies
    return backend, clock


def failing(*errors: Exception):
    """An operation that raises `errors` one per call, then returns "done"; counts its calls."""
    calls = []

    def op() -> str:
        calls.append(1)
        if len(calls) <= len(errors):
            raise errors[len(calls) - 1]
        return "done"

    return op, calls


@pytest.mark.parametrize("code, status, transient", [
    ("SlowDown", 503, True), ("InternalError", 500, True), ("RequestTimeout", 400, True), ("", 502, True),
    ("TooManyRequestsException", 429, True), ("AccessDenied", 403, False), ("NoSuchBucket", 404, False),
    ("InvalidArgument", 400, False),
])
def test_s3_faults_retried_are_the_transient_ones(code, status, transient):
    assert (S3Backend._transient_fault(client_error(code, status)) is not None) == transient


def test_s3_connection_faults_are_retried_and_missing_credentials_are_not():
    from botocore.exceptions import (
        ConnectionClosedError,
        EndpointConnectionError,
        NoCredentialsError,
        ReadTimeoutError,
    )

    assert S3Backend._transient_fault(EndpointConnectionError(endpoint_url="http://x")) == "EndpointConnectionError"
    assert S3Backend._transient_fault(ConnectionClosedError(endpoint_url="http://x")) == "ConnectionClosedError"
    assert S3Backend._transient_fault(ReadTimeoutError(endpoint_url="http://x")) == "ReadTimeoutError"
    assert S3Backend._transient_fault(NoCredentialsError()) is None


def test_s3_backoff_doubles_to_15_s_and_stops_at_the_budget_with_few_warnings(monkeypatch, caplog):
    from botocore.exceptions import EndpointConnectionError

    backend, clock = offline_backend(monkeypatch, retry_seconds=60)
    op, calls = failing(*[EndpointConnectionError(endpoint_url="http://x")] * 100)
    caplog.set_level(logging.INFO, logger="semdpo.store")
    with pytest.raises(StoreUnavailable, match=r"write of s3://semdpo-offline/artifacts/k still failed after 60 s"):
        backend._call("write", "k", op)
    assert clock.pauses == [0.5, 1, 2, 4, 8, 15, 15, 14.5] and len(calls) == 9
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and "for up to 60 s more" in warnings[0]  # at the first fault, then after 30 s


def test_s3_recovery_within_the_budget_returns_the_result_and_says_so(monkeypatch, caplog):
    backend, clock = offline_backend(monkeypatch, retry_seconds=300)
    op, calls = failing(client_error("SlowDown", 503), client_error("ServiceUnavailable", 503))
    caplog.set_level(logging.INFO, logger="semdpo.store")
    assert backend._call("read", "k", op) == "done"
    assert clock.pauses == [0.5, 1] and len(calls) == 3
    assert any("answers again: the read of s3://semdpo-offline/artifacts/k" in r.getMessage() for r in caplog.records)


def test_s3_access_denied_is_not_retried_and_says_what_to_check(monkeypatch):
    backend, clock = offline_backend(monkeypatch, retry_seconds=300)
    op, calls = failing(client_error("AccessDenied", 403))
    with pytest.raises(StoreError, match=r"refused the write of s3://semdpo-offline/artifacts/k \(AccessDenied\); "
                                         r"check the credentials") as failure:
        backend._call("write", "k", op)
    assert not isinstance(failure.value, StoreUnavailable) and len(calls) == 1 and clock.pauses == []


def test_an_endpoint_that_never_answered_fails_within_the_first_contact_budget(monkeypatch):
    from botocore.exceptions import EndpointConnectionError

    from semdpo_core.store.backends import FIRST_CONTACT_SECONDS

    backend, clock = offline_backend(monkeypatch, retry_seconds=300)
    backend.answered = False  # a mistyped AWS_ENDPOINT_URL: nothing ever answered
    op, _ = failing(*[EndpointConnectionError(endpoint_url="http://x")] * 100)
    with pytest.raises(StoreUnavailable,
                       match="has not answered once since this process started; check AWS_ENDPOINT_URL"):
        backend._call("read", "k", op)
    assert clock.now == FIRST_CONTACT_SECONDS < 300


def test_only_the_temporaries_of_writers_that_are_gone_are_stale(tmp_path):
    import os
    import subprocess
    import sys

    from semdpo_core.store.atomic_files import HOST, TEMPORARY_MAX_AGE_S

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    folder = tmp_path / "stage" / "fp"
    folder.mkdir(parents=True)
    live = folder / f".part-00000.parquet.{HOST}-{os.getpid()}.abcd1234.tmp"  # this process: writing
    gone = folder / f".part-00001.parquet.{HOST}-{dead.stdout.strip()}.abcd1234.tmp"  # its writer has exited
    elsewhere = folder / ".part-00002.parquet.otherhost-12.abcd1234.tmp"  # another machine's, recent
    old = folder / ".part-00003.parquet.otherhost-13.abcd1234.tmp"  # another machine's, an hour untouched
    for path in (live, gone, elsewhere, old):
        path.write_bytes(b"x")
    os.utime(old, (0, os.path.getmtime(old) - TEMPORARY_MAX_AGE_S - 1))
    store = ArtifactStore(str(tmp_path))
    assert sorted(store.temporaries("stage")) == sorted(str(p.relative_to(tmp_path)) for p in (gone, old))
    assert store.remove_temporaries("stage") and live.exists() and elsewhere.exists() and not gone.exists()
