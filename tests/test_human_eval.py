"""The human study (issue 24): a blinded pairwise study drawn from a run's evaluation, served to
participants whose pages never name a method, votes stored once each in SQLite, and the paper's
statistics checked against values computed by hand."""

from __future__ import annotations

import io
import math
import re
from pathlib import Path

import pyarrow as pa
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from semdpo_core.human_eval.app import MAX_FORM_BYTES, PASSWORD_ENV, create_app
from semdpo_core.human_eval.design import IMAGES, create_study, draw_assignment, load_study
from semdpo_core.human_eval.statistics import summarise
from semdpo_core.human_eval.votes import all_votes, connect, database_url, invite
from semdpo_core.pipeline.schemas import EVALUATION

METHODS = ["sem_dpo", "dpo", "human"]
DATASETS = ["captions", "scenes", "styled"]


def png(seed: int) -> bytes:
    """A small PNG that differs per seed."""
    image = Image.new("RGB", (8, 8), ((37 * seed) % 256, (91 * seed) % 256, (53 * seed) % 256))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def evaluation(prompts_per_dataset: int = 4, methods: list[str] = METHODS) -> pa.Table:
    """EVALUATION rows of a run: every method's image of every test prompt, each image its own."""
    rows = []
    for d, dataset in enumerate(DATASETS):
        for i in range(prompts_per_dataset):
            for m, method in enumerate(methods):
                rows.append(dict(method=method, dataset=dataset, prompt_id=f"{dataset}-{i}",
                                 prompt=f"a red fox number {i} of {dataset}", rewrite="a red fox, detailed",
                                 rewrite_tokens=4, seed=i, image=png(100 * d + 10 * i + m),
                                 scores=[("alignment", 1.0)]))
    return pa.Table.from_pylist(rows, schema=EVALUATION)


@pytest.fixture
def study_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "study"
    create_study(evaluation(), "evaluate/abc", ["sem_dpo", "dpo"], 5, seed=1, folder=folder, name="fox")
    return folder


# ----------------------------------------------------------------------------------- the design


def test_a_study_samples_prompts_over_the_test_sets_with_each_methods_image(tmp_path):
    table = evaluation()
    study = create_study(table, "evaluate/abc", METHODS, 6, seed=3, folder=tmp_path / "s", name="fox")
    assert study.comparisons == [("sem_dpo", "dpo"), ("sem_dpo", "human"), ("dpo", "human")]  # every pair
    prompts = {(i.dataset, i.prompt_id) for i in study.items}
    assert len(prompts) == 6 and len(study.items) == 18
    assert sorted(d for d, _ in prompts) == sorted(DATASETS * 2)  # two from each test set
    images = {(r["method"], r["dataset"], r["prompt_id"]): r["image"] for r in table.to_pylist()}
    for item in study.items:
        for shown in (item.a, item.b):
            assert (tmp_path / "s" / IMAGES / shown.file).read_bytes() == images[(shown.method, item.dataset,
                                                                                  item.prompt_id)]
            assert re.fullmatch(r"[0-9a-f]{32}\.png", shown.file)  # no method in any path
        assert re.fullmatch(r"item-\d{3}", item.id)
    again = create_study(table, "evaluate/abc", METHODS, 6, seed=3, folder=tmp_path / "t", name="fox")
    assert [(i.dataset, i.prompt_id) for i in again.items] == [(i.dataset, i.prompt_id) for i in study.items]
    other = create_study(table, "evaluate/abc", METHODS, 6, seed=4, folder=tmp_path / "u", name="fox")
    assert {(i.dataset, i.prompt_id) for i in other.items} != prompts  # the seed draws the sample
    assert load_study(tmp_path / "s") == study


def test_a_study_refuses_what_it_cannot_show(tmp_path):
    with pytest.raises(ValueError, match=r"methods kto have no evaluated images.*evaluated: dpo, human, sem_dpo"):
        create_study(evaluation(), "e", ["sem_dpo", "kto"], 2, 0, tmp_path / "a", "x")
    with pytest.raises(ValueError, match="13 prompts asked for, but only 12"):
        create_study(evaluation(), "e", ["sem_dpo", "dpo"], 13, 0, tmp_path / "b", "x")
    create_study(evaluation(), "e", ["sem_dpo", "dpo"], 2, 0, tmp_path / "c", "x")
    with pytest.raises(FileExistsError, match="never overwritten"):
        create_study(evaluation(), "e", ["sem_dpo", "dpo"], 2, 0, tmp_path / "c", "x")


def test_each_participant_gets_their_own_order_and_sides(study_folder):
    study = load_study(study_folder)
    first, second = draw_assignment(study, 1), draw_assignment(study, 2)
    assert sorted(first.items) == sorted(i.id for i in study.items)
    assert first.items != second.items or first.left != second.left
    assert draw_assignment(study, 1) == first  # drawn again from the seed and the number: an audit
    assert set(first.left) <= {"a", "b"} and len(first.left) == len(first.items)


# ------------------------------------------------------------------------------------- the app


def client_for(folder: Path, password: str | None = "s3cret") -> TestClient:
    return TestClient(create_app(folder, password=password), raise_server_exceptions=False)


def vote(client: TestClient, token: str, position: int, choice: str, **extra: str):
    return client.post(f"/p/{token}/vote", data={"position": str(position), "choice": choice, **extra},
                       follow_redirects=False)


def test_a_participant_answers_every_item_once_and_ends_on_thanks(study_folder):
    study = load_study(study_folder)
    client = client_for(study_folder)
    engine = connect(database_url(study_folder, None))
    (number, token), = invite(engine, study, 1)
    assignment = draw_assignment(study, number)
    for position, item_id in enumerate(assignment.items):
        page = client.get(f"/p/{token}")
        assert page.status_code == 200
        assert f"Image {position + 1} of {len(study.items)}" in page.text
        assert study.item(item_id).prompt in page.text
        side = "left" if position % 3 else "right"
        answer = vote(client, token, position, side)
        assert answer.status_code == 303 and answer.headers["location"] == f"/p/{token}"
        assert vote(client, token, position, side).status_code == 303  # a double click: counted once
        other = "right" if side == "left" else "left"
        changed = vote(client, token, position, other)
        assert changed.status_code == 409 and "first answer is kept" in changed.text
    assert "Thank you" in client.get(f"/p/{token}").text
    votes = all_votes(engine)
    assert len(votes) == len(study.items)
    for v in votes:  # the vote names the image shown on the clicked side
        position = assignment.items.index(v.item)
        left = assignment.left[position]
        assert v.chosen == (left if v.side == "left" else {"a": "b", "b": "a"}[left])
        assert v.side == ("left" if position % 3 else "right")


def test_an_image_is_the_one_shown_on_that_side(study_folder):
    study = load_study(study_folder)
    client = client_for(study_folder)
    (number, token), = invite(connect(database_url(study_folder, None)), study, 1)
    assignment = draw_assignment(study, number)
    item = study.item(assignment.items[0])
    left = getattr(item, assignment.left[0])
    right = item.b if left is item.a else item.a
    assert client.get(f"/p/{token}/image/0/left").content == (study_folder / IMAGES / left.file).read_bytes()
    assert client.get(f"/p/{token}/image/0/right").content == (study_folder / IMAGES / right.file).read_bytes()


@pytest.mark.parametrize("request_kind, status", [
    ("unknown token", 404), ("unknown item", 404), ("negative item", 404), ("no such side", 404),
    ("bad choice", 400), ("repeated field", 400), ("not a form", 415), ("oversized", 413), ("garbage", 400),
    ("unknown page", 404), ("wrong method", 405),
])
def test_every_mistake_is_a_clear_4xx_page(study_folder, request_kind, status):
    study = load_study(study_folder)
    client = client_for(study_folder)
    (_, token), = invite(connect(database_url(study_folder, None)), study, 1)
    form = {"content-type": "application/x-www-form-urlencoded"}
    response = {
        "unknown token": lambda: client.get("/p/not-a-token"),
        "unknown item": lambda: vote(client, token, len(study.items), "left"),
        "negative item": lambda: client.get(f"/p/{token}/image/-1/left"),
        "no such side": lambda: client.get(f"/p/{token}/image/0/middle"),
        "bad choice": lambda: vote(client, token, 0, "both"),
        "repeated field": lambda: client.post(f"/p/{token}/vote", content="position=0&choice=left&choice=right",
                                              headers=form),
        "not a form": lambda: client.post(f"/p/{token}/vote", json={"position": 0, "choice": "left"}),
        "oversized": lambda: client.post(f"/p/{token}/vote", content="position=0&choice=left&x="
                                         + "a" * MAX_FORM_BYTES, headers=form),
        "garbage": lambda: client.post(f"/p/{token}/vote", content=b"\xff\xfe=\x00", headers=form),
        "unknown page": lambda: client.get("/admin"),
        "wrong method": lambda: client.delete(f"/p/{token}"),
    }[request_kind]()
    assert response.status_code == status
    assert response.headers["content-type"].startswith("text/html")
    assert "Traceback" not in response.text and "<h1>" in response.text
    assert all_votes(connect(database_url(study_folder, None))) == []  # nothing recorded


def test_no_response_of_a_whole_session_names_a_method_or_another_participant(study_folder):
    study = load_study(study_folder)
    client = client_for(study_folder)
    engine = connect(database_url(study_folder, None))
    (_, token), (_, other) = invite(engine, study, 2)
    vote(client, other, 0, "left")
    bodies: list[bytes] = []

    def record(response) -> None:
        bodies.append(response.content if not response.headers.get("content-type", "").startswith("image/")
                      else b"")
        bodies.append(str(response.headers).encode())

    record(client.get(f"/p/{token}"))
    for position in range(len(study.items)):
        record(client.get(f"/p/{token}/image/{position}/left"))
        record(client.get(f"/p/{token}/image/{position}/right"))
        record(vote(client, token, position, "left"))
        record(vote(client, token, position, "right"))  # the 409 page too
        record(client.get(f"/p/{token}"))
    record(client.get(f"/p/{token}/image/99/left"))
    text = b"\n".join(bodies).decode()
    assert "Thank you" in text and "already answered" in text  # the session was whole
    for secret in [*study.methods, other, study.source, *(i.prompt_id for i in study.items),
                   *(s.file for i in study.items for s in (i.a, i.b))]:
        assert secret not in text, secret


def test_the_results_page_needs_the_password_and_counts_live(study_folder, monkeypatch):
    study = load_study(study_folder)
    engine = connect(database_url(study_folder, None))
    (number, token), = invite(engine, study, 1)
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    assert client_for(study_folder, password=None).get("/results").status_code == 403
    client = client_for(study_folder)
    assert client.get("/results").status_code == 401
    assert client.get("/results", auth=("anyone", "wrong")).status_code == 401
    assignment = draw_assignment(study, number)
    sem_dpo_wins = 0
    for position in range(3):
        item = study.item(assignment.items[position])
        side = "left" if getattr(item, assignment.left[position]).method == "sem_dpo" else "right"
        vote(client, token, position, side)
        sem_dpo_wins += 1
    page = client.get("/results", auth=("organiser", "s3cret"))
    assert page.status_code == 200
    assert re.search(r"<td>sem_dpo</td><td>3</td>", page.text) and re.search(r"<td>dpo</td><td>0</td>", page.text)
    assert f"<td>{number}</td><td>3 of {len(study.items)}</td>" in page.text
    bearer = client.get("/results", headers={"Authorization": "Bearer s3cret"})
    assert bearer.status_code == 200 and sem_dpo_wins == 3


# ------------------------------------------------------------------------------ the statistics


def binomial_two_sided(k: int, n: int) -> float:
    """Exact two-sided binomial p at 0.5 by hand: both tails, the distribution being symmetric."""
    tail = sum(math.comb(n, i) for i in range(max(k, n - k), n + 1)) / 2 ** n
    return min(1.0, 2 * tail) if k != n - k else 1.0


def clopper_pearson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The exact interval by bisection on the binomial tails (no scipy): P(X >= k | low) = P(X <= k | high)
    = (1 - confidence) / 2."""
    alpha = 1 - confidence

    def at_least(j: int, p: float) -> float:  # P(X >= j), increasing in p
        return sum(math.comb(n, i) * p ** i * (1 - p) ** (n - i) for i in range(j, n + 1))

    def solve(f, target: float) -> float:  # f increasing in p
        lo, hi = 0.0, 1.0
        for _ in range(80):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if f(mid) < target else (lo, mid)
        return (lo + hi) / 2

    low = 0.0 if k == 0 else solve(lambda p: at_least(k, p), alpha / 2)
    high = 1.0 if k == n else solve(lambda p: at_least(k + 1, p), 1 - alpha / 2)
    return low, high


def test_the_statistics_equal_hand_computed_values(tmp_path):
    from semdpo_core.human_eval.votes import Vote

    study = create_study(evaluation(), "e", ["sem_dpo", "dpo"], 10, seed=0, folder=tmp_path / "s", name="x")
    # 5 participants x 10 items: participant p prefers sem_dpo on the first wins_of[p] items
    votes, wins_of = [], {1: 9, 2: 8, 3: 10, 4: 7, 5: 5}
    for participant, wins in wins_of.items():
        for index, item in enumerate(study.items):
            preferred_first = index < wins
            chosen = "a" if (item.a.method == "sem_dpo") == preferred_first else "b"
            votes.append(Vote(participant, item.id, "left", chosen))
    summary = summarise(study, votes)
    c, = summary.comparisons
    assert (c.first, c.second) == ("sem_dpo", "dpo")
    assert c.counts == {"sem_dpo": 39, "dpo": 11}
    assert c.overall.rate == pytest.approx(39 / 50)
    assert c.overall.p_value == pytest.approx(binomial_two_sided(39, 50), rel=1e-9)
    low, high = clopper_pearson(39, 50)
    assert (c.overall.low, c.overall.high) == pytest.approx((low, high), abs=1e-7)
    assert [u.share.rate for u in c.participants] == pytest.approx([0.9, 0.8, 1.0, 0.7, 0.5])
    assert c.participants[2].share.p_value == pytest.approx(2 / 2 ** 10)  # 10 of 10
    # signed rank over participants: 0.5 dropped; differences 0.4, 0.3, 0.5, 0.2 all positive: the
    # exact two-sided p of 4 positive ranks is 2 / 2^4
    assert c.per_participant.majority_first == 4 and c.per_participant.majority_second == 0
    assert c.per_participant.p_value == pytest.approx(2 / 16)
    assert c.per_participant.median_rate == pytest.approx(0.8)
    # per prompt: item index i was preferred by the participants whose wins exceed i
    expected = [sum(w > i for w in wins_of.values()) / 5 for i in range(10)]
    by_key = {u.key: u.share.rate for u in c.prompts}
    assert sorted(by_key.values()) == pytest.approx(sorted(expected))
    assert c.per_prompt.majority_first == sum(e > 0.5 for e in expected)


# ------------------------------------------------------------------- from a finished run, by CLI


@pytest.mark.slow
def test_the_cli_runs_a_study_from_a_finished_run(tmp_path, prefect_server):
    import yaml
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from typer.testing import CliRunner

    from flows.cli import app
    from flows.pipeline import pipeline
    from semdpo_core.pipeline.config import load_config
    from semdpo_core.pipeline.plan import plan_pipeline
    from semdpo_core.store.artifact_store import ArtifactStore
    from tests.small import SMALL

    config = tmp_path / "small.yaml"
    config.write_text(yaml.safe_dump({**SMALL, "store": str(tmp_path / "store")}))
    pipeline(config_path=str(config))
    folder, cli = tmp_path / "study", CliRunner()
    made = cli.invoke(app, ["human-eval", "create", str(config), "--methods", "sem_dpo,dpo,human", "--prompts", "3",
                            "--out", str(folder)])
    assert made.exit_code == 0, made.output
    study = load_study(folder)
    assert len(study.items) == 3 * 3 and study.comparisons[0] == ("sem_dpo", "dpo")
    cfg = load_config(str(config))
    images = {(r["method"], r["dataset"], r["prompt_id"]): r["image"] for r in ArtifactStore(cfg.store_root())
              .read_table(plan_pipeline(cfg).ref("evaluate"), EVALUATION).to_pylist()}
    for item in study.items:  # each image is the run's own image of that method and prompt
        assert (folder / IMAGES / item.a.file).read_bytes() == images[(item.a.method, item.dataset, item.prompt_id)]
    again = cli.invoke(app, ["human-eval", "create", str(config), "--out", str(folder)])
    assert again.exit_code == 2 and "never overwritten" in again.output
    unknown = cli.invoke(app, ["human-eval", "create", str(config), "--methods", "sem_dpo,kto",
                               "--out", str(tmp_path / "other")])
    assert unknown.exit_code == 2 and "kto have no evaluated images" in unknown.output
    invited = cli.invoke(app, ["human-eval", "invite", str(folder), "2", "--base-url", "http://study.example:9000/"])
    tokens = re.findall(r"http://study\.example:9000/p/(\S+)", invited.output)
    assert invited.exit_code == 0 and len(set(tokens)) == 2 and all(len(t) >= 32 for t in tokens)  # 192 bits
    database = (folder / "votes.sqlite").read_bytes()
    assert not any(t.encode() in database for t in tokens)  # stored hashed
    client = client_for(folder)
    for position in range(len(study.items)):
        vote(client, tokens[0], position, "left")
    reported = cli.invoke(app, ["human-eval", "report", str(folder)])
    assert reported.exit_code == 0, reported.output
    report = (folder / "report" / "report.md").read_text()
    assert "9 votes from 1 participant." in report and "the majority of the votes of 1 of 1 participant" in report
    with get_client(sync_client=True) as prefect:
        artifacts = prefect.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(
            any_=["semdpo-human-eval"])))
    assert artifacts and "sem_dpo vs dpo" in artifacts[-1].data and "data:image/png;base64," in artifacts[-1].data
    missing = cli.invoke(app, ["human-eval", "report", str(tmp_path / "nothing")])
    assert missing.exit_code == 2 and "create the study first" in missing.output
