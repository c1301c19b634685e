"""The human study's votes in PostgreSQL (issue 24): the same app and report on a real server
(pgserver's embedded PostgreSQL, started in the test's folder), where concurrent submissions of one
vote really race, and the database keeps each participant's vote on an item exactly once."""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor

import pgserver
import pytest
from fastapi.testclient import TestClient

from semdpo_core.human_eval.app import create_app
from semdpo_core.human_eval.design import create_study, draw_assignment, load_study
from semdpo_core.human_eval.report import write_report
from semdpo_core.human_eval.votes import DatabaseUnavailable, all_votes, connect, invite, record_vote
from tests.servers import free_port
from tests.test_human_eval import evaluation


@pytest.fixture
def postgres_url(tmp_path, monkeypatch):
    """A PostgreSQL server of this test only, its data in tmp_path; stopped after."""
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))  # pgserver's lock files
    server = pgserver.get_server(tmp_path / "pg", cleanup_mode="stop")
    yield server.get_uri()  # postgresql://postgres:@/postgres?host=<socket folder>
    server.cleanup()


def test_votes_race_into_postgresql_once_each_and_the_report_reads_them(tmp_path, postgres_url):
    folder = tmp_path / "study"
    create_study(evaluation(), "evaluate/abc", ["sem_dpo", "dpo"], 6, seed=2, folder=folder, name="fox")
    study = load_study(folder)
    engine = connect(postgres_url)
    assert engine.dialect.name == "postgresql"
    (first, token), (second, _) = invite(engine, study, 2)
    assert (first, second) == (1, 2)

    # 1. The same vote submitted by 16 threads at once: exactly one insert wins.
    item = draw_assignment(study, second).items[0]
    with ThreadPoolExecutor(16) as pool:
        inserted = list(pool.map(lambda _: record_vote(engine, second, item, "left", "a"), range(16)))
    assert inserted.count(True) == 1 and len(all_votes(engine)) == 1

    # 2. A participant answers every item through the app, each answer sent twice.
    client = TestClient(create_app(folder, postgres_url), raise_server_exceptions=False)
    assignment = draw_assignment(study, first)
    for position in range(len(study.items)):
        side = "left" if position % 2 else "right"
        for _ in range(2):
            answer = client.post(f"/p/{token}/vote", data={"position": str(position), "choice": side},
                                 follow_redirects=False)
            assert answer.status_code == 303
    assert "Thank you" in client.get(f"/p/{token}").text
    changed = client.post(f"/p/{token}/vote", data={"position": "0", "choice": "left"}, follow_redirects=False)
    assert changed.status_code == 409 and "first answer is kept" in changed.text
    mine = [v for v in all_votes(engine) if v.participant == first]
    assert len(mine) == len(study.items)
    assert {v.item: v.side for v in mine} == {i: "left" if p % 2 else "right" for p, i in enumerate(assignment.items)}

    # 3. The report counts what PostgreSQL holds, and nothing went to a SQLite file.
    summary, out = write_report(folder, postgres_url)
    assert summary.votes == summary.comparisons[0].overall.n == len(study.items) + 1
    assert f"{len(study.items) + 1} votes from 2 participants." in (out / "report.md").read_text()
    assert not (folder / "votes.sqlite").exists()


def test_a_database_that_cannot_be_used_is_a_clear_error(monkeypatch):
    port = free_port()  # nothing listens there
    unreachable = rf"cannot reach the votes' database .*:{port}/votes.*start its server"
    with pytest.raises(DatabaseUnavailable, match=unreachable) as refused:
        connect(f"postgresql://organiser:secret@127.0.0.1:{port}/votes")
    assert "Connection refused" in str(refused.value) and "secret" not in str(refused.value)
    monkeypatch.setitem(sys.modules, "psycopg", None)  # the driver not installed
    with pytest.raises(DatabaseUnavailable, match=r"needs the driver 'psycopg'.*semdpo\[postgres\]"):
        connect(f"postgresql://organiser:secret@127.0.0.1:{port}/votes")
