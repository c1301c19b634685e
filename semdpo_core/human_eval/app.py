"""The participants' web page and the organiser's live counts (FastAPI, Jinja2; served by uvicorn
through `semdpo human-eval serve`).

A participant reaches only their own items, through their invitation token: `/p/TOKEN` shows the
next unanswered item (the prompt and two images, left and right as drawn for them), or the
thank-you page. Nothing sent to the browser names a method: images are addressed by the
participant's position and side. A vote is committed before its answer is sent; every mistake
(unknown token or item, another answer to an answered item, a malformed or oversized form) gets a
4xx page, never a traceback. `/results` shows live counts behind a password from the environment.
"""

from __future__ import annotations

import base64
import logging
import os
import secrets
from pathlib import Path
from urllib.parse import parse_qs

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader, select_autoescape
from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from semdpo_core.human_eval.design import IMAGES, load_study
from semdpo_core.human_eval.statistics import summarise
from semdpo_core.human_eval.votes import (
    Participant,
    all_votes,
    answered,
    connect,
    database_url,
    find_participant,
    participant_count,
    progress,
    record_vote,
)

PASSWORD_ENV = "SEMDPO_HUMAN_EVAL_PASSWORD"
MAX_FORM_BYTES = 1024  # a vote is about 30 bytes
SIDES = ("left", "right")
TITLES = {400: "That form could not be read", 401: "Password needed", 403: "Not open", 404: "Not found",
          405: "Not allowed", 409: "Already answered", 413: "Form too large", 415: "Not a form",
          422: "That request could not be read"}
log = logging.getLogger("semdpo.human_eval")
templates = Environment(loader=PackageLoader("semdpo_core.human_eval", "templates"), autoescape=select_autoescape())


def page(name: str, status_code: int = 200, **values: object) -> HTMLResponse:
    return HTMLResponse(templates.get_template(name).render(**values), status_code=status_code,
                        headers={"Cache-Control": "no-store"})


def error_page(status: int, message: str) -> HTMLResponse:
    response = page("error.html", status, status=status, title=TITLES.get(status, "Error"), message=message)
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Basic realm="semdpo human study results"'
    return response


def create_app(folder: Path, url: str | None = None, password: str | None = None) -> FastAPI:
    """The study's app: its folder, its votes' database (default SQLite in the folder) and the
    organiser's password (default $SEMDPO_HUMAN_EVAL_PASSWORD; none: /results is closed)."""
    study = load_study(folder)
    engine = connect(database_url(folder, url))
    password = password if password is not None else os.environ.get(PASSWORD_ENV)
    app = FastAPI(title="semdpo human study", docs_url=None, redoc_url=None, openapi_url=None)
    add_error_pages(app)

    @app.get("/", response_class=HTMLResponse)
    def home() -> HTMLResponse:
        return error_page(404, "Open the invitation link you were sent to take part.")

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/p/{token}", response_class=HTMLResponse)
    def item_page(token: str) -> HTMLResponse:
        participant = participant_of(engine, token)
        items = participant.assignment.items
        done = answered(engine, participant.number)
        position = next((i for i, item in enumerate(items) if item not in done), None)
        if position is None:
            return page("done.html", total=len(items))
        return page("item.html", question=study.question, prompt=study.item(items[position]).prompt,
                    position=position, done=len(done), total=len(items), vote_url=f"/p/{token}/vote",
                    image_url=f"/p/{token}/image/{position}")

    @app.get("/p/{token}/image/{position}/{side}")
    def image(token: str, position: str, side: str) -> FileResponse:
        participant = participant_of(engine, token)
        index = position_of(participant, position)
        if side not in SIDES:
            raise HTTPException(404, "There is no such image.")
        item = study.item(participant.assignment.items[index])
        shown = shown_letter(participant, index, side)
        return FileResponse(folder / IMAGES / getattr(item, shown).file, media_type="image/png",
                            headers={"Cache-Control": "private, max-age=3600"})

    @app.post("/p/{token}/vote")
    async def vote(token: str, request: Request) -> Response:
        form = await read_form(request)
        # the database is blocking: off the event loop
        return await run_in_threadpool(record_answer, engine, token, form)

    @app.get("/results", response_class=HTMLResponse)
    def results(request: Request) -> HTMLResponse:
        check_password(request, password)
        summary = summarise(study, all_votes(engine))
        counts = progress(engine)
        return page("results.html", study=study.name, votes=summary.votes, voted=summary.participants_voted,
                    invited=participant_count(engine), items=len(study.items), comparisons=summary.comparisons,
                    confidence=summary.confidence, progress=counts)

    return app


def participant_of(engine: Engine, token: str) -> Participant:
    """The participant a token belongs to; an unknown token is a 404 page."""
    found = find_participant(engine, token)
    if found is None:
        raise HTTPException(404, "This invitation link is not known. Check that you opened the whole link "
                                 "you were sent.")
    return found


def position_of(participant: Participant, position: str) -> int:
    """A position in the participant's own items; anything else is a 404 page."""
    if not position.isdigit() or int(position) >= len(participant.assignment.items):
        raise HTTPException(404, "There is no such item in your study.")
    return int(position)


def record_answer(engine: Engine, token: str, form: dict[str, str]) -> Response:
    """Commit a participant's answer, then send them on to their next item; the same answer again
    is stored once, another answer to an answered item is a 409 page."""
    participant = participant_of(engine, token)
    position = position_of(participant, form.get("position", ""))
    side = form.get("choice", "")
    if side not in SIDES:
        raise HTTPException(400, "Choose the left or the right image.")
    item = participant.assignment.items[position]
    if not record_vote(engine, participant.number, item, side, shown_letter(participant, position, side)):
        if answered(engine, participant.number)[item] != side:
            raise HTTPException(409, "You already answered this item; your first answer is kept. "
                                     f"Continue at /p/{token}.")
    return RedirectResponse(f"/p/{token}", status_code=303)


def shown_letter(participant: Participant, position: int, side: str) -> str:
    """Which of the item's images ("a" or "b") this participant sees on `side`."""
    left = participant.assignment.left[position]
    return left if side == "left" else ("b" if left == "a" else "a")


async def read_form(request: Request) -> dict[str, str]:
    """A small url-encoded form, each field once; anything else is a 4xx."""
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/x-www-form-urlencoded":
        raise HTTPException(415, "Send the vote from the study's page.")
    declared = request.headers.get("content-length", "0")
    if not declared.isdigit() or int(declared) > MAX_FORM_BYTES:
        raise HTTPException(413, "That form is larger than a vote can be.")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise HTTPException(413, "That form is larger than a vote can be.")
    try:
        fields = parse_qs(body.decode("utf-8"), strict_parsing=bool(body), max_num_fields=8)
    except (UnicodeDecodeError, ValueError):
        raise HTTPException(400, "That form could not be read; send the vote from the study's page.") from None
    if any(len(values) != 1 for values in fields.values()):
        raise HTTPException(400, "Each field of the form must appear once.")
    return {key: values[0] for key, values in fields.items()}


def check_password(request: Request, password: str | None) -> None:
    """HTTP Basic (any user name) or a bearer token, compared in constant time."""
    if not password:
        raise HTTPException(403, f"The results page is closed: start the server with {PASSWORD_ENV} set.")
    header = request.headers.get("authorization", "")
    given = ""
    if header.startswith("Bearer "):
        given = header.removeprefix("Bearer ")
    elif header.startswith("Basic "):
        try:
            given = base64.b64decode(header.removeprefix("Basic ")).decode().partition(":")[2]
        except (ValueError, UnicodeDecodeError):
            given = ""
    if not secrets.compare_digest(given.encode(), password.encode()):
        raise HTTPException(401, "The results page needs the organiser's password.")


def add_error_pages(app: FastAPI) -> None:
    """Every error as a short HTML page with its status; a bug is logged here, never shown."""

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, exc: HTTPException) -> HTMLResponse:
        generic = exc.detail in ("Not Found", "Method Not Allowed")  # Starlette's own, for unknown paths
        return error_page(exc.status_code, "There is nothing here." if generic else str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, _exc: RequestValidationError) -> HTMLResponse:
        return error_page(400, "That request could not be read.")

    @app.exception_handler(Exception)
    async def bug(request: Request, exc: Exception) -> HTMLResponse:
        log.exception("error answering %s %s", request.method, request.url.path, exc_info=exc)
        return error_page(500, "Something went wrong on the server; your earlier answers are saved. Try again.")
