"""Pair selection: chosen is the best-rewarded rewrite, rejected the worst; ties make no pair."""

import pyarrow as pa

from semdpo_core.pipeline.schemas import CANDIDATES
from semdpo_core.stages.pairs import select_pairs


def candidates(rows):
    return pa.Table.from_pylist(
        [{"candidate_id": c, "prompt_id": p, "prompt": f"prompt {p}", "rewrite": r, "seed": 0} for c, p, r in rows],
        schema=CANDIDATES,
    )


def test_chosen_is_best_and_rejected_is_worst():
    table = candidates([("a0", "a", "low"), ("a1", "a", "high"), ("a2", "a", "mid"), ("b0", "b", "x"),
                        ("b1", "b", "y")])
    pairs = select_pairs(table, {"a0": -1.0, "a1": 2.5, "a2": 0.3, "b0": 0.7, "b1": 0.1}).to_pylist()
    assert [(p["prompt_id"], p["chosen"], p["rejected"]) for p in pairs] == [("a", "high", "low"), ("b", "x", "y")]
    assert [(p["chosen_id"], p["rejected_id"]) for p in pairs] == [("a1", "a0"), ("b0", "b1")]
    assert all(p["chosen_reward"] > p["rejected_reward"] for p in pairs)
    assert pairs[0]["prompt"] == "prompt a"


def test_ties_identical_texts_and_lone_candidates_make_no_pair():
    table = candidates(
        [("t0", "t", "one"), ("t1", "t", "two"), ("s0", "s", "same"), ("s1", "s", "same"), ("l0", "l", "alone")]
    )
    pairs = select_pairs(table, {"t0": 0.5, "t1": 0.5, "s0": 0.1, "s1": 0.9, "l0": 1.0})
    assert pairs.num_rows == 0
