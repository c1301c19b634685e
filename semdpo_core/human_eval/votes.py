"""The votes of a human study in a real database through SQLAlchemy: SQLite beside the study by
default (no server to start), PostgreSQL when given a URL.

Participants are stored by the SHA-256 of their invitation token (the token itself is shown once,
in the invitation link); each has their order of items and sides. A vote is one row per
participant and item (the primary key): a repeated submission inserts nothing, and every vote is
committed before the page that acknowledges it is sent.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import (
    Column,
    DateTime,
    Engine,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    func,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import OperationalError

from semdpo_core.human_eval.design import Assignment, HumanStudy, draw_assignment

DATABASE_FILE = "votes.sqlite"
TOKEN_BYTES = 24  # 192 random bits per invitation

metadata = MetaData()
participants = Table(
    "participants", metadata,
    Column("number", Integer, primary_key=True),  # 1, 2, ...: the draw of their assignment
    Column("token_sha256", String(64), nullable=False, unique=True),
    Column("assignment", Text, nullable=False),  # Assignment as JSON
    Column("invited_at", DateTime(timezone=True), nullable=False),
)
votes = Table(
    "votes", metadata,
    Column("participant", Integer, ForeignKey("participants.number"), primary_key=True),
    Column("item", String(32), primary_key=True),
    Column("side", String(8), nullable=False),  # what they clicked: left or right
    Column("chosen", String(1), nullable=False),  # the item's image it was: a or b
    Column("voted_at", DateTime(timezone=True), nullable=False),
)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def database_url(folder: Path, url: str | None) -> str:
    """The given URL, else SQLite in the study's folder."""
    return url or f"sqlite:///{(folder / DATABASE_FILE).resolve()}"


class DatabaseUnavailable(Exception):
    """The votes' database cannot be used: its driver is not installed or its server not reached."""


def connect(url: str) -> Engine:
    """An engine with the tables created; SQLite waits for a writer instead of failing and keeps a
    write-ahead log (a killed server loses no committed vote)."""
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")  # psycopg 3, not psycopg2
    try:
        engine = create_engine(url, connect_args={"timeout": 30} if url.startswith("sqlite") else {})
    except ModuleNotFoundError as e:
        raise DatabaseUnavailable(f"the votes' database {url.split(':', 1)[0]}:... needs the driver {e.name!r}: "
                                  "`pip install 'semdpo[postgres]'` for PostgreSQL") from None
    if engine.dialect.name == "sqlite":
        @event.listens_for(engine, "connect")
        def _pragmas(connection, _record) -> None:  # noqa: ANN001
            cursor = connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()
    try:
        metadata.create_all(engine)
    except OperationalError as e:
        where, why = engine.url.render_as_string(hide_password=True), " ".join(str(e.orig).split())
        raise DatabaseUnavailable(f"cannot reach the votes' database {where} ({why}); "
                                  "start its server or give another --database") from None
    return engine


@dataclass(frozen=True)
class Participant:
    number: int
    assignment: Assignment


@dataclass(frozen=True)
class Vote:
    participant: int
    item: str
    side: str
    chosen: str


def invite(engine: Engine, study: HumanStudy, count: int) -> list[tuple[int, str]]:
    """`count` new participants, each with a random token (returned once, stored hashed) and their
    drawn assignment: [(number, token)]."""
    out = []
    with engine.begin() as db:
        first = (db.execute(select(func.max(participants.c.number))).scalar() or 0) + 1
        for number in range(first, first + count):
            token = secrets.token_urlsafe(TOKEN_BYTES)
            db.execute(participants.insert().values(
                number=number, token_sha256=token_hash(token),
                assignment=draw_assignment(study, number).model_dump_json(), invited_at=datetime.now(UTC)))
            out.append((number, token))
    return out


def find_participant(engine: Engine, token: str) -> Participant | None:
    """The participant a token belongs to (None: no such invitation)."""
    with engine.connect() as db:
        row = db.execute(select(participants.c.number, participants.c.assignment)
                         .where(participants.c.token_sha256 == token_hash(token))).first()
    if row is None:
        return None
    return Participant(row.number, Assignment.model_validate(json.loads(row.assignment)))


def answered(engine: Engine, participant: int) -> dict[str, str]:
    """{item: side clicked} of one participant's votes."""
    with engine.connect() as db:
        rows = db.execute(select(votes.c.item, votes.c.side).where(votes.c.participant == participant))
        return {r.item: r.side for r in rows}


def record_vote(engine: Engine, participant: int, item: str, side: str, chosen: str) -> bool:
    """Insert the vote unless the participant already voted on the item; committed on return.
    True when this call inserted it (a row RETURNED: psycopg reports no rowcount for an insert
    that SQLAlchemy gives a RETURNING clause)."""
    insert = (postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert)(votes)
    statement = (insert.values(participant=participant, item=item, side=side, chosen=chosen,
                               voted_at=datetime.now(UTC))
                 .on_conflict_do_nothing().returning(votes.c.item))
    with engine.begin() as db:
        return db.execute(statement).first() is not None


def all_votes(engine: Engine) -> list[Vote]:
    with engine.connect() as db:
        rows = db.execute(select(votes).order_by(votes.c.participant, votes.c.item))
        return [Vote(r.participant, r.item, r.side, r.chosen) for r in rows]


def participant_count(engine: Engine) -> int:
    with engine.connect() as db:
        return db.execute(select(func.count()).select_from(participants)).scalar() or 0


def progress(engine: Engine) -> list[tuple[int, int]]:
    """[(participant, votes given)] of every invited participant."""
    with engine.connect() as db:
        rows = db.execute(select(participants.c.number, func.count(votes.c.item))
                          .select_from(participants.outerjoin(votes, votes.c.participant == participants.c.number))
                          .group_by(participants.c.number).order_by(participants.c.number))
        return [(r[0], r[1]) for r in rows]
