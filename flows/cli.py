"""The `semdpo` command: run the pipeline from a config, show its plan."""

from __future__ import annotations

import functools
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

# The commands import the library (torch, transformers, Prefect) when they run, not here, so that
# `semdpo --help` answers at once; nothing imports this module, so no cycle can hide behind it.

app = typer.Typer(help="Sem-DPO: semantically weighted DPO for text-to-image prompt rewriting.", no_args_is_help=True)

class UserError(Exception):
    """A mistake in what the user asked for; printed as one line."""


def user_errors() -> tuple[type[BaseException], ...]:
    """The errors a user's config, input files, models or store cause (each message says what to do)."""
    from semdpo_core.data.hub_datasets import DatasetLoadError
    from semdpo_core.data.prompt_sources import PromptFileError
    from semdpo_core.export import RunNotTrained
    from semdpo_core.human_eval.design import StudyMissing
    from semdpo_core.human_eval.votes import DatabaseUnavailable
    from semdpo_core.models.loading import ModelNotFound
    from semdpo_core.pipeline.config import ConfigError
    from semdpo_core.store.artifact_store import CorruptArtifact, DatasetMissing
    from semdpo_core.store.backends import StoreError

    return (UserError, ConfigError, PromptFileError, ModelNotFound, StoreError, CorruptArtifact, DatasetMissing,
            RunNotTrained, DatasetLoadError, StudyMissing, DatabaseUnavailable)


def one_line_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """A command that ends a user error with `error: ...` and exit status 2, never a traceback."""

    @functools.wraps(command)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except user_errors() as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None

    return guarded


def prefect_api_of(error: Exception) -> str | None:
    """The Prefect API's URL if a network error came from a request to it (not to a model hub or a store)."""
    from prefect.settings import PREFECT_API_URL

    api = (PREFECT_API_URL.value() or "").rstrip("/")
    try:
        url = str(error.request.url)  # type: ignore[attr-defined]
    except (AttributeError, RuntimeError):  # an httpx error raised without its request
        return None
    return api if api and url.startswith(api) else None


def exit_within(seconds: float, code: int) -> NoReturn:
    """Exit with `code`, and at the latest `seconds` from now: with the Prefect API gone, Prefect's
    event and log workers try each event they hold for seconds at exit, which takes minutes."""
    sys.stdout.flush()
    sys.stderr.flush()
    deadline = threading.Timer(seconds, os._exit, args=(code,))
    deadline.daemon = True  # the exit does not wait for it; it ends the workers' tries if they run long
    deadline.start()
    raise typer.Exit(code)


SetOption = Annotated[
    list[str] | None, typer.Option("--set", help="override a config field: section.field=value (repeatable)")
]


@app.command()
def run(
    config: Annotated[str | None, typer.Argument(help="pipeline config YAML (default: the offline profile)")] = None,
    set_: SetOption = None,
    stage: Annotated[str | None, typer.Option(help="run this stage alone (its upstream must be done)")] = None,
) -> None:
    """Run the whole pipeline (or one stage); finished stages are reused from the store."""
    from semdpo_core.models.loading import ModelNotFound
    from semdpo_core.models.needs import require_models
    from semdpo_core.pipeline.config import ConfigError, load_config
    from semdpo_core.pipeline.stage_table import STAGE_NAMES
    from semdpo_core.stages.prompts import PromptFileError, check_inputs
    from semdpo_core.store.artifact_store import CorruptArtifact
    from semdpo_core.store.backends import StoreError, open_backend

    try:  # fail here, before Prefect starts, on a bad config or bad input files
        cfg = load_config(config, set_)
        if stage is not None and stage not in STAGE_NAMES:
            raise ConfigError(f"unknown stage {stage!r}; choose one of {', '.join(STAGE_NAMES)}")
        open_backend(cfg.store_root())  # a malformed store root (no network is needed to tell)
        require_models(cfg)  # every backbone's
        for one in cfg.backbone_configs().values():
            check_inputs(one)  # after the models: it reads the rewriter's tokenizer
    except (ConfigError, PromptFileError, ModelNotFound, StoreError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    import httpx

    from flows.pipeline import UpstreamMissing, pipeline
    from semdpo_core.store.artifact_store import DatasetMissing
    from semdpo_core.store.backends import StoreUnavailable

    try:
        table = pipeline(config_path=config, overrides=set_ or [], stage=stage)
    except httpx.TransportError as e:  # the Prefect API went away for longer than its client retries
        api = prefect_api_of(e)
        if api is None:
            raise
        typer.echo(f"\nerror: the Prefect API at {api} did not answer ({e}). "
                   f"Every finished stage and shard is kept in the store ({cfg.store_root()}): once the server is "
                   "back, run the same command again; it recomputes nothing that was committed.", err=True)
        exit_within(10, code=1)
    except StoreUnavailable as e:  # the store went away, the input is fine: its message says to rerun
        typer.echo(f"\nerror: {e}", err=True)
        raise typer.Exit(1) from None
    except DatasetMissing as e:  # a stage output vanished from the store meanwhile
        typer.echo(f"\nerror: {e}; finished stages are kept in the store, so a rerun recomputes only what is missing",
                   err=True)
        raise typer.Exit(1) from None
    except (PromptFileError, ModelNotFound, NotImplementedError, StoreError, CorruptArtifact, UpstreamMissing) as e:
        typer.echo(f"\nerror: {e}\nFinished stages are kept in the store; fix the input and run again.", err=True)
        raise typer.Exit(1) from None
    typer.echo("\nSem-DPO evaluation: image vs ORIGINAL prompt, mean ± std over test prompts\n")
    typer.echo(table)


@app.command()
@one_line_errors
def status(
    config: Annotated[str | None, typer.Argument(help="pipeline config YAML (default: the offline profile)")] = None,
    set_: SetOption = None,
) -> None:
    """Show, per stage, whether the store holds it: done, damaged, partly done (shards) or missing."""
    from semdpo_core.pipeline.config import load_config
    from semdpo_core.store.status import pipeline_status

    cfg = load_config(config, set_)
    typer.echo(f"config {cfg.name!r}, store {cfg.store_root()}")
    rows = pipeline_status(cfg)
    for row in rows:
        typer.echo(f"  {row.label:16s} {row.ref.fingerprint}  {row.state:8s} {row.detail}")
    done = sum(r.state == "done" for r in rows)
    typer.echo(f"{done} of {len(rows)} stage outputs done")


@app.command()
@one_line_errors
def check(
    config: Annotated[str | None, typer.Argument(help="pipeline config YAML (default: the offline profile)")] = None,
    set_: SetOption = None,
) -> None:
    """Say, before anything runs, whether every model the config names is on this machine (and
    the one command that fetches what is missing into the Hugging Face cache), then whether
    every input file holds usable prompts."""
    from semdpo_core.models.needs import fetch_command, model_status
    from semdpo_core.pipeline.config import load_config
    from semdpo_core.stages.prompts import check_inputs

    cfg = load_config(config, set_)
    status = model_status(cfg)
    for need, files in status:
        state = "ok" if files is None else ("missing" if files == ["*"] else "lacks " + ", ".join(files))
        typer.echo(f"  {need.field:40s} {need.ref:40s} {state}")
    missing = [(need, files) for need, files in status if files is not None]
    if not missing:
        typer.echo("every model is here")
        for one in cfg.backbone_configs().values():
            check_inputs(one)  # reads each backbone's tokenizer: only once the models are here
        typer.echo("every input file holds usable prompts")
        return
    command = fetch_command(missing)
    typer.echo(f"{len(missing)} missing" + (f"; on a machine with network access run:\n  {command}" if command else ""))
    raise typer.Exit(1)


@app.command()
@one_line_errors
def gc(
    configs: Annotated[list[str] | None,
                       typer.Argument(help="every config that uses the store (default: the offline profile)")] = None,
    set_: SetOption = None,
    delete: Annotated[bool, typer.Option("--delete", help="remove what is listed (default: only list it)")] = False,
) -> None:
    """List what the store holds that none of CONFIGS needs (old outputs, finished runs'
    checkpoints, temporaries of killed writers); --delete removes it."""
    from semdpo_core.pipeline.config import load_config
    from semdpo_core.store.artifact_store import ArtifactStore
    from semdpo_core.store.gc import find_garbage, human, remove

    if delete and not configs:
        raise UserError("semdpo gc --delete needs every config that uses the store named (semdpo gc a.yaml b.yaml "
                        "--delete): with none, every output but the offline default's would go")
    loaded = [load_config(c, set_) for c in (configs or [None])]
    roots = sorted({c.store_root() for c in loaded})
    if len(roots) > 1:
        raise UserError(f"the configs use different stores ({', '.join(roots)}); collect one store at a time")
    store = ArtifactStore(roots[0])
    garbage = find_garbage(store, loaded)
    for item in garbage:
        typer.echo(f"  {human(item.bytes):>9s}  {item.prefix}  ({item.reason}, {len(item.keys)} files)")
    total = human(sum(item.bytes for item in garbage))
    if not garbage:
        typer.echo(f"store {roots[0]}: nothing to collect")
    elif delete:
        remove(store, garbage)
        typer.echo(f"store {roots[0]}: removed {total}")
    else:
        typer.echo(f"store {roots[0]}: {total} collectable; an output that another config of this store needs "
                   "is listed too unless that config is named; rerun with --delete to remove it")


@app.command()
@one_line_errors
def rewrite(
    prompts: Annotated[list[str] | None,
                       typer.Argument(help="prompts to rewrite (none: one a line from --file or stdin)")] = None,
    config: Annotated[str | None, typer.Option("--config", "-c",
                                               help="pipeline config YAML (default: the offline profile)")] = None,
    method: Annotated[str, typer.Option(
        help="whose rewriter: sft or a training run's label (sem_dpo, dpo, ...)")] = "sem_dpo",
    file: Annotated[Path | None, typer.Option(help="a prompt file (any format `data.train_prompts` takes)")] = None,
    render: Annotated[Path | None,
                      typer.Option(help="also draw each rewrite with the config's renderer into this folder")] = None,
    set_: SetOption = None,
) -> None:
    """Print METHOD's greedy rewrite of each prompt, one a line, as the evaluation poses and decodes it."""
    import sys

    from semdpo_core.data.prompt_sources import lines, read_records
    from semdpo_core.export import render_rewrites
    from semdpo_core.export import rewrite as rewrite_prompts
    from semdpo_core.models.loading import resolve_device
    from semdpo_core.pipeline.config import load_config

    cfg = load_config(config, set_)
    if prompts:
        texts = list(prompts)
    elif file is not None:
        texts = [r.fields[cfg.data.prompt_column] for r in read_records(str(file), [cfg.data.prompt_column])]
    else:
        texts = lines(sys.stdin.read())
    texts = [" ".join(t.split()) for t in texts if t.strip()]
    if not texts:
        raise UserError("no prompt to rewrite: pass prompts, --file FILE, or one a line on stdin")
    device = resolve_device(cfg.device)
    rewrites = rewrite_prompts(cfg, method, texts, device)
    for rewritten in rewrites:
        typer.echo(rewritten)
    if render is not None:
        paths = render_rewrites(cfg, texts, rewrites, render, device)
        typer.echo(f"{len(paths)} images in {render} ({paths[0].name} ...)", err=True)


@app.command()
@one_line_errors
def export(
    target: Annotated[Path, typer.Argument(help="the folder to write (a Hugging Face model folder)")],
    config: Annotated[str | None, typer.Option("--config", "-c",
                                               help="pipeline config YAML (default: the offline profile)")] = None,
    method: Annotated[str, typer.Option(
        help="whose rewriter: sft or a training run's label (sem_dpo, dpo, ...)")] = "sem_dpo",
    set_: SetOption = None,
) -> None:
    """Write METHOD's rewriter as a Hugging Face model folder (safetensors, tokenizer with the chat
    template, generation config, model card) that transformers loads without semdpo."""
    from semdpo_core.export import export as export_rewriter
    from semdpo_core.pipeline.config import load_config

    folder = export_rewriter(load_config(config, set_), method, target)
    typer.echo(f"{method} -> {folder}: pipeline('text-generation', model={str(folder)!r}) loads it")


@app.command("export-pairs")
@one_line_errors
def export_pairs_command(
    target: Annotated[Path, typer.Argument(help="the file to write: .parquet or .jsonl")],
    config: Annotated[str | None, typer.Option("--config", "-c",
                                               help="pipeline config YAML (default: the offline profile)")] = None,
    alpha: Annotated[float | None, typer.Option(help="the semantic weight's alpha (default: train.alpha)")] = None,
    set_: SetOption = None,
) -> None:
    """Write the preference pairs with their semantic distance and weight as prompt/chosen/rejected
    rows (TRL's format; `data.preference_pairs` reads them back)."""
    from semdpo_core.export import export_pairs
    from semdpo_core.pipeline.config import load_config

    try:
        rows = export_pairs(load_config(config, set_), target, alpha)
    except ValueError as e:
        raise UserError(str(e)) from None
    typer.echo(f"{rows} pairs -> {target}")


@app.command()
@one_line_errors
def report(
    config: Annotated[str, typer.Argument(
        help="pipeline config YAML whose backbones (sft.base_model, sft.backbones) are evaluated")],
    out: Annotated[Path | None, typer.Option(help="folder to write (default: reports/CONFIG-NAME)")] = None,
    set_: SetOption = None,
) -> None:
    """Put every backbone's evaluation in one report (paper Tables 5-7, Figure 3): report.md,
    report.json, scores.parquet and a scatter per backbone and dataset."""
    from semdpo_core.pipeline.config import load_config
    from semdpo_core.stages.report.backbones import write_backbone_report

    cfg = load_config(config, set_)
    folder = out or Path("reports") / cfg.name
    summary = write_backbone_report(cfg, folder)
    typer.echo(f"{len(summary['backbones'])} backbone(s) -> {folder / 'report.md'}")
    for row in summary["overview"]:
        typer.echo(f"  {row['method']:<16}"
                   + "  ".join("-" if row[b] is None else f"{row[b]:.4f}" for b in summary["backbones"]))


data_app = typer.Typer(help="Prompt data: build the files data.* names from the datasets users have.",
                       no_args_is_help=True)
@app.command()
@one_line_errors
def study(
    spec: Annotated[str, typer.Argument(help="study spec YAML: the grid of seeds, doses and arms")] = (
        "configs/drift_study.yaml"),
) -> None:
    """Run a study's grid of pipeline runs and write its report; a rerun skips every finished run."""
    from flows.study import study as study_flow
    from semdpo_core.study.plan import plan_study
    from semdpo_core.study.spec import load_spec

    plan = plan_study(load_spec(spec))  # a bad spec or config fails here, before Prefect starts
    typer.echo(f"study {plan.ref}: {len(plan.runs)} pipeline runs")
    typer.echo(f"study report: {study_flow(spec_path=spec)}")


app.add_typer(data_app, name="data")

human_app = typer.Typer(help="Human evaluation: a blinded pairwise study in the browser, from a finished run "
                             "(the paper's Table 4).", no_args_is_help=True)
app.add_typer(human_app, name="human-eval")
StudyFolder = Annotated[Path, typer.Argument(help="the study's folder (written by `human-eval create`)")]
DatabaseOption = Annotated[str | None, typer.Option(
    "--database", help="SQLAlchemy URL of the votes (default: SQLite in the study's folder; "
                       "postgresql://... needs `pip install 'semdpo[postgres]'`)")]


@human_app.command("create")
@one_line_errors
def human_eval_create(
    config: Annotated[str, typer.Argument(help="pipeline config YAML of a finished run (its evaluate stage done)")],
    methods: Annotated[str, typer.Option(help="evaluated methods to compare, comma separated ('human': the "
                                              "unmodified prompt); more than two: every pair")] = "sem_dpo,dpo",
    prompts: Annotated[int, typer.Option(min=1, help="test prompts to sample, spread over the test sets")] = 20,
    seed: Annotated[int, typer.Option(help="seed of the prompts' sample and the participants' orders")] = 0,
    out: Annotated[Path | None, typer.Option(help="study folder (default: human-eval/CONFIG-NAME)")] = None,
    set_: SetOption = None,
) -> None:
    """Sample test prompts from a finished run and write a blinded pairwise study of its images."""
    from semdpo_core.human_eval.design import create_study
    from semdpo_core.pipeline.config import load_config
    from semdpo_core.pipeline.plan import plan_pipeline
    from semdpo_core.pipeline.schemas import EVALUATION
    from semdpo_core.store.artifact_store import open_store

    cfg = load_config(config, set_)
    ref = plan_pipeline(cfg).ref("evaluate")
    evaluation = open_store(cfg.store_root()).read_table(ref, EVALUATION)
    folder = out or Path("human-eval") / cfg.name
    names = [m.strip() for m in methods.split(",") if m.strip()]
    try:
        study = create_study(evaluation, str(ref), names, prompts, seed, folder, name=cfg.name)
    except (ValueError, FileExistsError) as e:
        raise UserError(str(e)) from None
    typer.echo(f"{len(study.items)} items ({prompts} prompts x {len(study.comparisons)} pairs of "
               f"{', '.join(names)}) -> {folder}")
    typer.echo(f"next: semdpo human-eval invite {folder} N, then semdpo human-eval serve {folder}")


@human_app.command("invite")
@one_line_errors
def human_eval_invite(
    folder: StudyFolder,
    count: Annotated[int, typer.Argument(min=1, help="participants to invite")],
    base_url: Annotated[str, typer.Option(help="where participants reach the server")] = "http://127.0.0.1:8000",
    database: DatabaseOption = None,
) -> None:
    """Print one invitation link per new participant (each token is shown once and stored hashed)."""
    from semdpo_core.human_eval.design import load_study
    from semdpo_core.human_eval.votes import connect, database_url, invite

    study = load_study(folder)
    for number, token in invite(connect(database_url(folder, database)), study, count):
        typer.echo(f"participant {number}: {base_url.rstrip('/')}/p/{token}")


@human_app.command("serve")
@one_line_errors
def human_eval_serve(
    folder: StudyFolder,
    host: Annotated[str, typer.Option(help="address to listen on (0.0.0.0 opens it to the network)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on")] = 8000,
    database: DatabaseOption = None,
) -> None:
    """Serve the participants' page, and the live counts at /results (password: $SEMDPO_HUMAN_EVAL_PASSWORD)."""
    import uvicorn

    from semdpo_core.human_eval.app import PASSWORD_ENV, create_app

    web = create_app(folder, database)
    typer.echo(f"serving {folder} on http://{host}:{port}/ (results: /results, "
               f"{'open with $' + PASSWORD_ENV if os.environ.get(PASSWORD_ENV) else 'closed: set $' + PASSWORD_ENV})")
    uvicorn.run(web, host=host, port=port, log_level="warning")


@human_app.command("report")
@one_line_errors
def human_eval_report(
    folder: StudyFolder,
    database: DatabaseOption = None,
    out: Annotated[Path | None, typer.Option(help="report folder (default: FOLDER/report)")] = None,
) -> None:
    """The paper's table and tests from the votes so far: report.md, CSVs and a plot (and the
    `semdpo-human-eval` artifact)."""
    from flows.human_eval import human_eval_report as report_flow
    from semdpo_core.human_eval.design import load_study

    load_study(folder)  # a missing study fails here, before Prefect starts
    where = Path(report_flow(folder=str(folder), database=database, out=str(out) if out else None))
    typer.echo(f"human study report: {where / 'report.md'}")


@data_app.command("build")
@one_line_errors
def data_build(
    config: Annotated[str, typer.Argument(help="pipeline config YAML whose data.build names the datasets")],
    force: Annotated[bool, typer.Option(help="replace files that exist with other contents")] = False,
    set_: SetOption = None,
) -> None:
    """Write data.train_prompts and data.test_prompts as Parquet from data.build's datasets
    (DiffusionDB, Lexica, COCO captions, ...): cleaned, deduplicated, sized, train disjoint from test."""
    from semdpo_core.data.build import build_data, record_path
    from semdpo_core.models.needs import require_models, tokenizer_needs
    from semdpo_core.pipeline.config import load_config

    cfg = load_config(config, set_)
    require_models(cfg, tokenizer_needs(cfg))  # over-long prompts are counted in every backbone's tokens
    for built in build_data(cfg, force):
        dropped = ", ".join(f"{n:,} {why}" for why, n in built.counts.items()
                            if why not in ("read", "kept", "examined"))
        short = f" (SHORT: {built.wanted:,} asked for)" if built.wanted and len(built.prompts) < built.wanted else ""
        typer.echo(f"{built.name}: {len(built.prompts):,} prompts{short} -> {built.path}"
                   f"{'' if built.written else ' (unchanged)'} "
                   f"(of {built.counts['read']:,} read; dropped: {dropped or 'none'}; "
                   f"record: {record_path(built.path)})")


@app.command()
@one_line_errors
def deploy(
    pool_type: Annotated[str, typer.Option(help="type of the work pools to create (process, docker, ...)")] = "process",
    crash_after: Annotated[float, typer.Option(
        help="seconds without a heartbeat after which a flow run is marked Crashed (heartbeats: every 30 s)")] = 90,
) -> None:
    """Create the work pools, the crash-detection automation, and register every deployment in
    prefect.yaml (safe to repeat)."""
    from deployments.deploy import (
        CRASH_AUTOMATION,
        crash_detection,
        ensure_crash_detection,
        ensure_work_pools,
        register_deployments,
        work_pools,
    )

    try:
        crash_detection(crash_after)  # a bad --crash-after, before anything is created
    except ValueError as e:
        raise UserError(f"--crash-after: {e}") from None
    created = ensure_work_pools(work_pools(), pool_type)
    typer.echo(f"work pools: {', '.join(work_pools())} "
               f"({'created ' + ', '.join(created) if created else 'all existed'})")
    typer.echo(f"automation {CRASH_AUTOMATION!r} ({crash_after:g} s): {ensure_crash_detection(crash_after)}")
    register_deployments()


if __name__ == "__main__":
    app()
