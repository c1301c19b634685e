"""A blinded pairwise human study drawn from a finished run (the paper's Table 4): test prompts
sampled from the run's evaluate stage, spread over its test sets, each method's stored image for
each, and every pair of the methods compared on every sampled prompt.

The study is a folder: `study.json` (this model), `images/` (PNG files under random names, so no
path names a method) and, by default, the votes' SQLite database beside them. Method names stay
in the folder: the web app sends only the prompt, the images and opaque positions.
"""

from __future__ import annotations

import itertools
import json
import secrets
from pathlib import Path

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

QUESTION = "Which image better matches the prompt?"  # the paper's question (section 5.3)
STUDY_FILE = "study.json"
IMAGES = "images"


class Shown(BaseModel):
    """One of an item's two images: the method that made it and its file under images/."""

    model_config = ConfigDict(frozen=True)
    method: str
    file: str


class Item(BaseModel):
    """One comparison: a test prompt and two methods' images of it (`a`, `b`: the order of the pair
    in `comparisons`; the side a participant sees each on is drawn per participant)."""

    model_config = ConfigDict(frozen=True)
    id: str  # "item-07": its place in the study, nothing about its methods
    dataset: str
    prompt_id: str
    prompt: str
    a: Shown
    b: Shown


class HumanStudy(BaseModel):
    """What a human study asks, of which images, from which run."""

    model_config = ConfigDict(extra="forbid")
    name: str
    question: str = QUESTION
    source: str  # the evaluate dataset the images come from
    methods: list[str] = Field(min_length=2)
    comparisons: list[tuple[str, str]]  # every pair of methods, (a, b) in `methods` order
    seed: int
    items: list[Item]

    def item(self, item_id: str) -> Item:
        return next(i for i in self.items if i.id == item_id)


class Assignment(BaseModel):
    """One participant's items in the order they see them, and which image of each goes left."""

    items: list[str]
    left: list[str]  # per position: "a" or "b"


def sample_prompts(evaluation: pa.Table, methods: list[str], prompts: int, seed: int) -> list[tuple[str, str]]:
    """`prompts` (dataset, prompt id) keys evaluated for every method, spread over the test sets as
    evenly as they allow (round robin over the datasets, each shuffled by the seed)."""
    keys_of: dict[str, set[tuple[str, str]]] = {m: set() for m in methods}
    for method, dataset, prompt_id in zip(*(evaluation.column(c).to_pylist() for c in ("method", "dataset",
                                                                                     "prompt_id"))):
        if method in keys_of:
            keys_of[method].add((dataset, prompt_id))
    missing = [m for m, keys in keys_of.items() if not keys]
    if missing:
        evaluated = sorted(set(evaluation.column("method").to_pylist()))
        raise ValueError(f"methods {', '.join(missing)} have no evaluated images in this run "
                         f"(evaluated: {', '.join(evaluated)})")
    common = sorted(set.intersection(*keys_of.values()))
    if len(common) < prompts:
        raise ValueError(f"{prompts} prompts asked for, but only {len(common)} test prompts were evaluated for "
                         f"every one of {', '.join(methods)}: ask for fewer")
    rng = np.random.default_rng(seed)
    by_dataset: dict[str, list[tuple[str, str]]] = {}
    for key in common:
        by_dataset.setdefault(key[0], []).append(key)
    queues = [[keys[i] for i in rng.permutation(len(keys))] for _, keys in sorted(by_dataset.items())]
    chosen: list[tuple[str, str]] = []
    while len(chosen) < prompts:
        for queue in queues:
            if queue and len(chosen) < prompts:
                chosen.append(queue.pop(0))
    return chosen


def create_study(evaluation: pa.Table, source: str, methods: list[str], prompts: int, seed: int, folder: Path,
                 name: str, question: str = QUESTION) -> HumanStudy:
    """Write the study folder: the sampled items with their images, every pair of `methods` on each
    prompt ("human" is the unmodified prompt's image). Refuses to overwrite a study."""
    if len(set(methods)) != len(methods) or len(methods) < 2:
        raise ValueError(f"--methods needs two or more different methods, got {', '.join(methods)}")
    if (folder / STUDY_FILE).exists():
        raise FileExistsError(f"{folder / STUDY_FILE} exists: a study is never overwritten (its votes refer to it); "
                              "give another folder")
    keys = sample_prompts(evaluation, methods, prompts, seed)
    wanted = set(keys)
    rows = {}
    for row in evaluation.select(["method", "dataset", "prompt_id", "prompt", "image"]).to_pylist():
        if row["method"] in methods and (row["dataset"], row["prompt_id"]) in wanted:
            rows[(row["method"], row["dataset"], row["prompt_id"])] = row
    (folder / IMAGES).mkdir(parents=True, exist_ok=True)
    files: dict[tuple[str, str, str], str] = {}
    for key, row in rows.items():
        files[key] = f"{secrets.token_hex(16)}.png"
        (folder / IMAGES / files[key]).write_bytes(row["image"])
    comparisons = list(itertools.combinations(methods, 2))
    items = []
    for (dataset, prompt_id), (a, b) in itertools.product(keys, comparisons):
        prompt = rows[(a, dataset, prompt_id)]["prompt"]
        items.append(Item(id=f"item-{len(items) + 1:03d}", dataset=dataset, prompt_id=prompt_id, prompt=prompt,
                          a=Shown(method=a, file=files[(a, dataset, prompt_id)]),
                          b=Shown(method=b, file=files[(b, dataset, prompt_id)])))
    study = HumanStudy(name=name, question=question, source=source, methods=methods, comparisons=comparisons,
                       seed=seed, items=items)
    (folder / STUDY_FILE).write_text(study.model_dump_json(indent=2), encoding="utf-8")
    return study


class StudyMissing(FileNotFoundError):
    """No study in the folder a command was given."""


def load_study(folder: Path) -> HumanStudy:
    """The study in a folder `semdpo human-eval create` wrote."""
    path = folder / STUDY_FILE
    if not path.exists():
        raise StudyMissing(f"{path} does not exist: create the study first (semdpo human-eval create)")
    return HumanStudy.model_validate(json.loads(path.read_text(encoding="utf-8")))


def draw_assignment(study: HumanStudy, participant: int) -> Assignment:
    """Participant `participant`'s order of the items and side of each image, drawn from the study's
    seed and their number (an audit can draw it again)."""
    rng = np.random.default_rng([study.seed, participant])
    order = rng.permutation(len(study.items))
    return Assignment(items=[study.items[i].id for i in order],
                      left=["a" if flip else "b" for flip in rng.integers(0, 2, len(order))])
