"""The human study's server as participants meet it (issue 24): the real page in headless
Chromium, answered by clicks and by keys with a reload halfway, its report matching the clicks;
and 50 participants voting at once while the server is SIGKILLed and restarted, every
acknowledged vote stored exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from semdpo_core.human_eval.design import create_study, draw_assignment, load_study
from semdpo_core.human_eval.report import write_report
from semdpo_core.human_eval.votes import all_votes, connect, database_url, invite
from tests.browser import Browser, chromium_path
from tests.servers import free_port, wait_for_port
from tests.test_human_eval import evaluation

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "organiser-password"


class StudyServer:
    """`semdpo human-eval serve FOLDER` on 127.0.0.1 in its own process, killable and restartable."""

    def __init__(self, folder: Path, log: Path) -> None:
        self.folder, self.log, self.port = folder, log, free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        env = {**os.environ, "SEMDPO_HUMAN_EVAL_PASSWORD": PASSWORD}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "flows.cli", "human-eval", "serve", str(self.folder), "--port", str(self.port)],
            cwd=ROOT, env=env, stdout=self.log.open("a"), stderr=subprocess.STDOUT, start_new_session=True)
        wait_for_port(self.port, timeout=60)

    def kill(self) -> None:
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.kill()


@pytest.fixture
def server(tmp_path):
    folder = tmp_path / "study"
    create_study(evaluation(), "evaluate/abc", ["sem_dpo", "dpo"], 6, seed=2, folder=folder, name="fox")
    running = StudyServer(folder, tmp_path / "server.log")
    running.start()
    yield running
    running.stop()


def test_a_participant_answers_in_a_real_browser_and_the_report_matches(server, tmp_path):
    assert chromium_path(), "the browser tests need Debian's chromium: apt-get install chromium"
    shots = Path(os.environ.get("SEMDPO_SCREENSHOTS", tmp_path))
    study = load_study(server.folder)
    engine = connect(database_url(server.folder, None))
    (number, token), = invite(engine, study, 1)
    assignment = draw_assignment(study, number)
    link = f"{server.url}/p/{token}"
    answers = ["left", "right", "left", "1", "ArrowRight", "2"]  # three clicks, then three keys
    with Browser(width=390, height=844, mobile=True) as browser:  # a phone's width
        browser.open(link)
        browser.screenshot(shots / "participant-phone.png")
        for position, answer in enumerate(answers):
            browser.wait_until(f"document.body.innerText.includes('Image {position + 1} of 6')")
            assert study.item(assignment.items[position]).prompt in browser.text()
            width = browser.evaluate("document.getElementById('left').getBoundingClientRect().right")
            assert width <= 390  # both images fit the phone's width
            if position == 3:  # halfway: close nothing, reload, and carry on where they were
                browser.reload()
                assert "Image 4 of 6" in browser.text()
            if answer in ("left", "right"):
                browser.click(f"#{answer}")
            else:
                browser.press(answer)
        browser.wait_until("document.body.innerText.includes('Thank you')")
    with Browser() as browser:
        browser.open(link)
        assert "Thank you" in browser.text()  # a finished participant stays finished
    sides = ["left", "right", "left", "left", "right", "right"]
    expected = Counter()
    for position, side in enumerate(sides):
        item = study.item(assignment.items[position])
        left = getattr(item, assignment.left[position])
        expected[(left if side == "left" else (item.b if left is item.a else item.a)).method] += 1
    summary, where = write_report(server.folder)
    comparison, = summary.comparisons
    assert comparison.counts == {"sem_dpo": expected["sem_dpo"], "dpo": expected["dpo"]}
    assert [v.side for v in sorted(all_votes(engine), key=lambda v: assignment.items.index(v.item))] == sides
    assert (where / "report.md").exists() and (where / "votes.csv").read_text().count("\n") == 7


def test_a_report_page_and_a_desktop_page_render(server, tmp_path):
    """Screenshots of the participant's page on a desktop and of the organiser's live counts (the
    README shows them); the counts page needs the password."""
    assert chromium_path(), "the browser tests need Debian's chromium: apt-get install chromium"
    shots = Path(os.environ.get("SEMDPO_SCREENSHOTS", tmp_path))
    study = load_study(server.folder)
    (_, token), = invite(connect(database_url(server.folder, None)), study, 1)
    with Browser() as browser:
        browser.open(f"{server.url}/p/{token}")
        browser.screenshot(shots / "participant-desktop.png")
        browser.click("#left")
        browser.wait_until("document.body.innerText.includes('Image 2 of 6')")
        closed = httpx.get(f"{server.url}/results")  # a browser would ask for the password here
        assert closed.status_code == 401 and "organiser&#39;s password" in closed.text
        browser.send("Network.enable")
        browser.send("Network.setExtraHTTPHeaders", headers={"Authorization": f"Bearer {PASSWORD}"})
        browser.open(f"{server.url}/results")
        assert "Votes: 1, from 1 of 1 invited participants" in browser.text()
        browser.screenshot(shots / "results.png")


def test_fifty_participants_vote_through_a_killed_server_and_every_acknowledged_vote_is_stored_once(server):
    study = load_study(server.folder)
    engine = connect(database_url(server.folder, None))
    people = invite(engine, study, 50)
    acknowledged: dict[tuple[int, str], str] = {}
    failures = Counter()
    lock = threading.Lock()
    deadline = time.monotonic() + 120

    def participant(number: int, token: str) -> None:
        assignment = draw_assignment(study, number)
        with httpx.Client(base_url=server.url, timeout=10) as client:
            for position in range(len(assignment.items)):
                side = "left" if (number + position) % 2 else "right"
                while time.monotonic() < deadline:
                    try:
                        r = client.post(f"/p/{token}/vote", data={"position": str(position), "choice": side})
                    except httpx.TransportError:
                        with lock:
                            failures["connection failed (server down); voted again"] += 1
                        time.sleep(0.2)
                        continue
                    if r.status_code == 303:  # acknowledged
                        with lock:
                            acknowledged[(number, assignment.items[position])] = side
                        break
                    with lock:
                        failures[f"status {r.status_code}"] += 1
                    time.sleep(0.2)

    threads = [threading.Thread(target=participant, args=p) for p in people]
    for t in threads:
        t.start()
    while len(acknowledged) < 100 and time.monotonic() < deadline:  # about a third of the 300 votes
        time.sleep(0.01)
    with lock:
        before_kill = len(acknowledged)
    server.kill()
    time.sleep(1.0)
    server.start()
    for t in threads:
        t.join(timeout=max(1.0, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), "the voting did not finish in 120 s"
    stored = all_votes(engine)
    keys = Counter((v.participant, v.item) for v in stored)
    print(f"\n50 participants x {len(study.items)} items: {before_kill} votes acknowledged when the server was "
          f"killed, {len(acknowledged)} acknowledged in all, {len(stored)} stored; retries: {dict(failures)}")
    assert len(acknowledged) == 50 * len(study.items)
    assert max(keys.values()) == 1 and set(keys) == set(acknowledged)  # each exactly once
    assert all(acknowledged[(v.participant, v.item)] == v.side for v in stored)
    assert failures["connection failed (server down); voted again"] > 0  # the kill did land mid-vote
    assert not [k for k in failures if k.startswith("status 5")]
