"""The report's numbers against a small example computed by hand."""

from __future__ import annotations

import io
import math

import pyarrow as pa
import pytest
from PIL import Image

from semdpo_core.pipeline.config import ReportConfig, ScorerConfig
from semdpo_core.pipeline.schemas import EVALUATION
from semdpo_core.scorers import encode_png
from semdpo_core.stages.report.document import Report
from semdpo_core.stages.report.markdown import markdown
from semdpo_core.stages.report.significance import (
    bootstrap_interval,
    comparisons_of,
    paired_tests,
    sign_test_p,
)
from semdpo_core.stages.report.stage import build_report
from semdpo_core.stages.report.tables import (
    drift_stats,
    head_to_head,
    meaning_drift,
    score_table,
    token_stats,
)

# (method, dataset, prompt_id, clip, pick, tokens, prompt_drift, image_drift, t2i_error)
ROWS = [
    ("human", "A", "p1", 0.20, 20.0, 5, 0.0, 1.0, 1.0),
    ("human", "A", "p2", 0.30, 22.0, 7, 0.0, 1.2, 1.2),
    ("human", "B", "q1", 0.30, 20.0, 4, 0.0, 1.1, 1.1),
    ("dpo", "A", "p1", 0.22, 22.0, 10, 0.9, 1.5, 1.0),
    ("dpo", "A", "p2", 0.24, 23.0, 20, 0.8, 1.2, 1.0),
    ("dpo", "B", "q1", 0.30, 19.0, 12, 0.7, 1.3, 1.0),
    ("sem_dpo", "A", "p1", 0.26, 21.0, 8, 0.3, 0.7, 1.0),
    ("sem_dpo", "A", "p2", 0.28, 23.0, 9, 0.2, 0.6, 1.0),
    ("sem_dpo", "B", "q1", 0.30 + 5e-7, 19.5, 6, 0.1, 0.55, 1.0),
]


def evaluation(rows=ROWS) -> pa.Table:
    image = encode_png(Image.new("RGB", (8, 8), "gray"))
    return pa.Table.from_pylist(
        [dict(method=m, dataset=d, prompt_id=p, prompt=f"prompt {p}", rewrite=f"{m} {p}", rewrite_tokens=t, seed=0,
              image=image, scores=[("clip", c), ("pick", s)], prompt_drift=pd, image_drift=idr, t2i_error=te)
         for m, d, p, c, s, t, pd, idr, te in rows],
        schema=EVALUATION,
    )


def cell(table: pa.Table, dataset: str, method: str, metric: str, field: str = "mean") -> float:
    return next(r[field] for r in table.to_pylist()
                if (r["dataset"], r["method"], r["metric"]) == (dataset, method, metric))


def test_scores_and_min_max_normalised_average():
    scores = score_table(evaluation())
    # dataset A means: clip human .25, dpo .23, sem .27 -> normalised .5, 0, 1
    #                  pick human 21, dpo 22.5, sem 22   -> normalised 0, 1, 2/3
    assert cell(scores, "A", "dpo", "pick") == pytest.approx(22.5)
    assert cell(scores, "A", "human", "clip", "std") == pytest.approx(math.sqrt(0.005))
    assert cell(scores, "A", "human", "clip", "normalized") == pytest.approx(0.5)
    assert cell(scores, "A", "sem_dpo", "pick", "normalized") == pytest.approx(2 / 3)
    assert cell(scores, "A", "human", "avg_score") == pytest.approx(0.25)
    assert cell(scores, "A", "dpo", "avg_score") == pytest.approx(0.5)
    assert cell(scores, "A", "sem_dpo", "avg_score") == pytest.approx(5 / 6)
    # dataset B is normalised on its own: pick 20, 19, 19.5 -> 1, 0, .5
    assert cell(scores, "B", "sem_dpo", "pick", "normalized") == pytest.approx(0.5)
    only_clip = score_table(evaluation(), average_over=["clip"])
    assert [cell(only_clip, "A", m, "avg_score") for m in ("human", "dpo", "sem_dpo")] == pytest.approx([0.5, 0.0, 1.0])


def test_a_method_outside_the_normalised_set_changes_no_other_score():
    # ipo sets a new maximum of pick in A (25) and a new minimum of clip (.10)
    extra = [("ipo", "A", "p1", 0.10, 25.0, 5, 0.5, 1.0, 1.0), ("ipo", "A", "p2", 0.10, 25.0, 5, 0.5, 1.0, 1.0),
             ("ipo", "B", "q1", 0.30, 20.0, 5, 0.5, 1.0, 1.0)]
    paper = ["human", "sft", "dpo", "kto", "beta_dpo", "orpo", "sem_dpo"]
    alone, beside = score_table(evaluation()), score_table(evaluation(ROWS + extra), normalise_over=paper)
    inside = score_table(evaluation(ROWS + extra))
    for method in ("human", "dpo", "sem_dpo"):
        assert cell(beside, "A", method, "avg_score") == pytest.approx(cell(alone, "A", method, "avg_score"))
    assert cell(inside, "A", "dpo", "avg_score") != pytest.approx(cell(alone, "A", "dpo", "avg_score"))
    # on the paper set's scale: clip (.10 - .23) / (.27 - .23), pick (25 - 21) / (22.5 - 21)
    assert cell(beside, "A", "ipo", "clip", "normalized") == pytest.approx(-3.25)
    assert cell(beside, "A", "ipo", "pick", "normalized") == pytest.approx(8 / 3)
    scores, report, _ = build_report(evaluation(ROWS + extra),
                                     ReportConfig(semantic_metric="clip", preference_metrics=["pick"]), {}, "")
    assert report.normalised_over == ["human", "dpo", "sem_dpo"]
    text = markdown(scores, report, {})
    assert "| A | ipo * |" in text and "ipo (marked *) are put on the same scale beside them" in text


def test_head_to_head_win_tie_loss_pooled_over_datasets():
    h2h = {(r.versus, r.metric): r.columns() for r in head_to_head(evaluation(), "sem_dpo", tie_tolerance=1e-6)}
    assert set(h2h) == {("human", "clip"), ("human", "pick"), ("dpo", "clip"), ("dpo", "pick")}
    # vs human, clip: p1 .26>.20 win, p2 .28<.30 loss, q1 within 1e-6: tie
    assert [h2h[("human", "clip")][k] for k in ("win", "tie", "loss", "n")] == [1, 1, 1, 3]
    assert [h2h[("human", "pick")][k] for k in ("win", "tie", "loss")] == [2, 0, 1]
    assert [h2h[("dpo", "clip")][k] for k in ("win", "tie", "loss")] == [2, 1, 0]
    assert [h2h[("dpo", "pick")][k] for k in ("win", "tie", "loss")] == [1, 1, 1]
    assert h2h[("human", "pick")]["win_rate"] == pytest.approx(2 / 3)
    strict = {(r.versus, r.metric): r.columns() for r in head_to_head(evaluation(), "sem_dpo", tie_tolerance=0.0)}
    assert strict[("human", "clip")]["win"] == 2  # 5e-7 counts as a win without a tolerance


def test_token_length_statistics():
    stats = {s.method: s.model_dump() for s in token_stats(evaluation())}
    human = stats["human"]  # lengths 5, 7, 4
    assert (human["n"], human["median"], human["max"]) == (3, 5.0, 7)
    assert human["mean"] == pytest.approx(16 / 3) and human["std"] == pytest.approx(math.sqrt(7 / 3))
    assert human["median_by_dataset"] == {"A": 6.0, "B": 4.0}
    assert stats["dpo"]["median"] == 12.0


def test_drift_bound_with_given_and_default_epsilon():
    drift = drift_stats(evaluation(), 0.5)
    by = {r.method: r.columns() for r in drift.methods}
    assert drift.epsilon == 0.5
    assert by["dpo"]["prompt_drift"] == pytest.approx(0.8) and by["dpo"]["image_drift"] == pytest.approx(4.0 / 3)
    # dpo: 1.5 <= 1.4? no; 1.2 <= 1.3 yes; 1.3 <= 1.2 no -> 1/3 ; human: 1.0, 1.2 <= .5? never
    assert by["dpo"]["bound_held"] == pytest.approx(1 / 3) and by["human"]["bound_held"] == 0.0
    assert by["sem_dpo"]["bound_held"] == 1.0  # .7 <= .8, .6 <= .7, .55 <= .6
    default = drift_stats(evaluation(), None).epsilon
    assert default == pytest.approx(1.2)  # 95th percentile of the human prompts' T2I error (1.0, 1.1, 1.2)


def test_report_files_tables_and_plots():
    rows = [r for r in ROWS if r[0] != "sem_dpo"]
    rows += [(f"sem_dpo@alpha={a}",) + r[1:] for a in (1, 4) for r in ROWS if r[0] == "sem_dpo"]
    settings = ReportConfig(semantic_metric="clip", preference_metrics=["pick"], sample_prompts=2)
    scorers = {"clip": ScorerConfig(kind="clip", model="openai/clip-vit-large-patch14"),
               "pick": ScorerConfig(kind="pickscore", model="yuvalkirstain/PickScore_v1")}
    scores, report, plots = build_report(evaluation(rows), settings, scorers)
    assert report.focus == "sem_dpo@alpha=1"  # a sweep: the first alpha is compared head to head
    assert set(plots) == {"scatter-A-clip-vs-pick.png", "scatter-B-clip-vs-pick.png", "alpha-sweep-A-clip-vs-pick.png",
                          "alpha-sweep-B-clip-vs-pick.png", "samples.png"}
    grid = Image.open(io.BytesIO(plots["samples.png"]))
    assert grid.size[1] > 2 * 100 and grid.size[0] > 4 * 100  # two prompts x four methods
    text = markdown(scores, report, {name: f"file:///r/{name}" for name in plots})
    assert "`clip` = clip openai/clip-vit-large-patch14" in text  # the report names the CLIP model used
    assert "| A | human | 0.2500 | 21.0000 | 0.2500 |" in text
    assert "| human | 3 | 5.33 | 1.53 | 5.0 | 7 | 6.0 | 4.0 |" in text
    assert "| dpo | pick | 33.3% | 33.3% | 33.3% | 3 |" in text
    assert "[samples.png](file:///r/samples.png)" in text


def test_sign_test_and_bootstrap_against_hand_computed_values():
    assert sign_test_p(9, 1) == pytest.approx(2 * (1 + 10) / 1024)  # P(<= 1 of 10) twice
    assert sign_test_p(1, 9) == sign_test_p(9, 1)
    assert sign_test_p(5, 5) == 1.0 and sign_test_p(0, 0) == 1.0
    assert sign_test_p(20, 0) < 1e-5
    assert bootstrap_interval([0.5] * 7) == (0.5, 0.5)
    low, high = bootstrap_interval([0.0, 1.0] * 50)
    assert low < 0.5 < high and high - low < 0.25


def test_paired_tests_compare_each_method_with_sft_and_the_focus_with_dpo():
    rows = [(m, "A", f"p{i}", base + 0.01 * i, 0.0, 5, 0.0, 1.0, 1.0) for i in range(10)
            for m, base in (("sft", 0.20), ("dpo", 0.30), ("sem_dpo", 0.25))]
    table = evaluation(rows)
    distance = {"sft": 0.1, "dpo": 0.5, "sem_dpo": 0.2}
    table = table.set_column(table.schema.get_field_index("semantic_distance"), "semantic_distance",
                             pa.array([distance[m] for m in table.column("method").to_pylist()], pa.float64()))
    comparisons = comparisons_of(["human", "sft", "dpo", "sem_dpo"], "sem_dpo")
    assert comparisons == [("dpo", "sft"), ("sem_dpo", "sft"), ("sem_dpo", "dpo")]
    tests = {(t.method, t.baseline, t.metric): t.columns() for t in paired_tests(table, comparisons, 1e-6)}
    clip = tests[("dpo", "sft", "clip")]
    assert clip["mean_diff"] == pytest.approx(0.10) and (clip["wins"], clip["losses"]) == (10, 0)
    assert clip["ci_low"] == pytest.approx(0.10) and clip["sign_p"] == pytest.approx(2 / 1024)
    assert tests[("sem_dpo", "dpo", "clip")]["mean_diff"] == pytest.approx(-0.05)
    assert tests[("sem_dpo", "dpo", "pick")]["sign_p"] == 1.0  # every prompt tied
    assert tests[("sem_dpo", "dpo", "semantic_distance")]["mean_diff"] == pytest.approx(-0.3)
    drift = {d.method: d.mean for d in meaning_drift(table)}
    assert drift == pytest.approx(distance)


def test_fewer_than_two_methods_of_the_normalised_set_normalise_over_every_method():
    """Only sem_dpo of the paper's set evaluated: its range would collapse and give every method 1.0;
    every evaluated method sets the scale instead, and the report says so."""
    rows = [("ipo", *r[1:]) if r[0] == "human" else ("kto_x", *r[1:]) if r[0] == "dpo" else r for r in ROWS]
    settings = ReportConfig(semantic_metric="clip", preference_metrics=["pick"], normalise_over=["sem_dpo", "sft"])
    scores, report, _ = build_report(evaluation(rows), settings, {}, "")
    assert report.normalised_over is None
    everyone = score_table(evaluation(rows))
    assert scores.to_pylist() == everyone.to_pylist()
    assert cell(scores, "A", "ipo", "avg_score") == pytest.approx(0.25)  # as human's in the hand example


def test_a_tie_inside_the_normalised_set_is_not_scored_one_for_everyone():
    """dpo and sem_dpo tie on clip in A; human, outside the set, scores above them: normalising
    over the tied pair would collapse, so every method's range is used (never 1.0 for all)."""
    rows = [(m, d, p, 0.25 if m != "human" and d == "A" else c, *rest) for m, d, p, c, *rest in ROWS]
    scores = score_table(evaluation(rows), normalise_over=["dpo", "sem_dpo"])
    # A clip means: human .25, dpo .25, sem_dpo .25 -> all tie: 1.0 only because everyone ties
    assert {cell(scores, "A", m, "clip", "normalized") for m in ("human", "dpo", "sem_dpo")} == {1.0}
    rows = [(m, d, p, 0.40 if m == "human" and d == "A" else c, *rest) for m, d, p, c, *rest in rows]
    scores = score_table(evaluation(rows), normalise_over=["dpo", "sem_dpo"])
    # A clip means: human .40, dpo .25, sem_dpo .25 -> over all three: 1, 0, 0
    assert [cell(scores, "A", m, "clip", "normalized") for m in ("human", "dpo", "sem_dpo")] == pytest.approx([1, 0, 0])


def test_normalise_over_names_methods():
    from semdpo_core.pipeline.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"report.normalise_over \['semdpo'\] name no method; choose from human, sft"):
        load_config(None, ["report.normalise_over=[human,semdpo]"])
    assert (load_config(None, ["report.normalise_over=[human,sem_dpo@alpha=2]"]).report.normalise_over[1]
            == "sem_dpo@alpha=2")
    assert (load_config(None, ["report.normalise_over=[human,promptist]",
                               "evaluate.rewriters={promptist: {model: tiny:gpt2}}"]).report.normalise_over[1]
            == "promptist")


def test_the_backbone_report_focuses_each_block_as_its_own_report_does():
    """With alpha chosen on validation, a backbone's block is normalised over the paper's set and
    the chosen alpha's run, exactly as that backbone's own report."""
    from semdpo_core.stages.report.backbones import backbone_scores

    sweep = [(m.replace("sem_dpo", "sem_dpo@alpha=4") if m == "sem_dpo" else m, *r) for m, *r in ROWS]
    sweep += [("sem_dpo@alpha=1", d, p, c - 0.05, s + 1.0, *rest) for m, d, p, c, s, *rest in ROWS if m == "sem_dpo"]
    # alpha=1 is best on validation, though alpha=4 comes first (the default focus without a choice)
    validation = evaluation([("sem_dpo@alpha=4", "validation", "v1", 0.1, 18.0, 5, 0, 0, 0),
                             ("sem_dpo@alpha=1", "validation", "v1", 0.3, 20.0, 5, 0, 0, 0)])
    settings = ReportConfig(semantic_metric="clip", preference_metrics=["pick"])
    own_scores, own, _ = build_report(evaluation(sweep), settings, {}, "", validation)
    assert own.focus == "sem_dpo@alpha=1" and own.normalised_over == ["human", "dpo", "sem_dpo@alpha=1"]
    block = backbone_scores({"tiny:gpt2": (evaluation(sweep), validation)}, settings)["tiny:gpt2"]
    assert (block.focus, block.normalised_over) == (own.focus, own.normalised_over)
    assert block.table.to_pylist() == own_scores.to_pylist()


def test_backbone_plot_names_stay_distinct():
    from semdpo_core.stages.report.backbones import slugs

    assert slugs(["org/model", "org-model", "tiny:gpt2"]) == {"org/model": "org-model", "org-model": "org-model-2",
                                                              "tiny:gpt2": "tiny-gpt2"}
    assert len(set(slugs(["a-2", "a", "a!", "a?"]).values())) == 4


def test_the_sign_test_is_scipys_and_equals_the_exact_binomial_sum():
    """scipy.stats.binomtest replaced a hand-written sum; both give the same p-values."""

    def by_hand(wins: int, losses: int) -> float:
        n, k = wins + losses, min(wins, losses)
        return 1.0 if n == 0 else min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n)

    for wins, losses in [(0, 0), (1, 0), (9, 1), (3, 7), (50, 50), (60, 40), (190, 10), (0, 300), (117, 84)]:
        assert sign_test_p(wins, losses) == pytest.approx(by_hand(wins, losses), rel=1e-12, abs=1e-300)


def test_report_json_reads_back_as_the_same_report_and_the_ui_shows_report_md_without_plots():
    from semdpo_core.stages.report.markdown import tables_markdown

    rows = ROWS + [(f"sem_dpo@alpha={a}",) + r[1:] for a in (1, 4) for r in ROWS if r[0] == "sem_dpo"]
    validation = evaluation([("sem_dpo@alpha=4", "validation", "v1", 0.1, 18.0, 5, 0, 0, 0),
                             ("sem_dpo@alpha=1", "validation", "v1", 0.3, 20.0, 5, 0, 0, 0)])
    scorers = {"clip": ScorerConfig(kind="clip", model="openai/clip-vit-large-patch14")}
    settings = ReportConfig(semantic_metric="clip", preference_metrics=["pick"], sample_prompts=1)
    scores, report, plots = build_report(evaluation(rows), settings, scorers, "minilm", validation)
    again = Report.from_json(report.to_json())
    assert again == report and again.alpha_selection.chosen == "sem_dpo@alpha=1"
    assert again.scorers["clip"].model == "openai/clip-vit-large-patch14"
    text = markdown(scores, report, {name: f"plots/{name}" for name in plots})
    head = tables_markdown(scores, again)
    assert text.startswith(head) and text[len(head):].startswith("\n## Plots\n")


def test_training_curves_keep_a_small_loss_visible_beside_ipos():
    """IPO's loss (about 100) beside DPO's (0.69 falling to 0.2): DPO's fall still spans a good part
    of the loss panel instead of a flat line at zero."""
    from semdpo_core.pipeline.schemas import TRAIN_LOG
    from semdpo_core.stages.report.plots import CURVES, training_curves_figure

    def log(losses: list[float]) -> pa.Table:
        rows = [{"step": i, **{c: 0.5 for c in CURVES}, "loss": v} for i, v in enumerate(losses)]
        return pa.Table.from_pylist([{k: r.get(k) for k in TRAIN_LOG.names} for r in rows], schema=TRAIN_LOG)

    dpo = [0.69 - 0.49 * i / 99 for i in range(100)]
    fig, _ = training_curves_figure({"dpo": log(dpo), "ipo": log([100.0 - 10 * i / 99 for i in range(100)])})
    ax = fig.axes[CURVES.index("loss")]
    to_axes = ax.transAxes.inverted().transform
    low, high = (to_axes(ax.transData.transform((50, y)))[1] for y in (min(dpo), max(dpo)))
    assert high - low > 0.1  # on a linear axis it would be 0.5%
    same, _ = training_curves_figure({"dpo": log(dpo), "kto": log([v * 1.5 for v in dpo])})
    assert same.axes[CURVES.index("loss")].get_yscale() == "linear"  # comparable runs keep a linear axis
