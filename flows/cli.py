"""The `semdpo` command: run the pipeline from a config, show its plan."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

app = typer.Typer(help="Sem-DPO: semantically weighted DPO for text-to-image prompt rewriting.", no_args_is_help=True)

SetOption = Annotated[
    Optional[list[str]], typer.Option("--set", help="override a config field: section.field=value (repeatable)")
]


@app.command()
def run(
    config: Annotated[Optional[str], typer.Argument(help="pipeline config YAML (default: the offline profile)")] = None,
    set_: SetOption = None,
) -> None:
    """Run the whole pipeline; finished stages are reused from the store."""
    from semdpo_core.config import ConfigError, load_config

    try:
        load_config(config, set_)  # fail here, before Prefect starts, on a bad config
    except ConfigError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    from flows.pipeline import pipeline
    from semdpo_core.models import ModelNotFound
    from semdpo_core.prompts import PromptFileError

    try:
        table = pipeline(config_path=config, overrides=set_ or [])
    except (PromptFileError, ModelNotFound, NotImplementedError) as e:
        typer.echo(f"\nerror: {e}\nFinished stages are kept in the store; fix the input and run again.", err=True)
        raise typer.Exit(1) from None
    typer.echo("\nSem-DPO evaluation: image vs ORIGINAL prompt, mean ± std over test prompts\n")
    typer.echo(table)


@app.command()
def plan(
    config: Annotated[Optional[str], typer.Argument(help="pipeline config YAML")] = None,
    set_: SetOption = None,
) -> None:
    """Show each stage's fingerprint and whether the store already holds it."""
    from semdpo_core.config import load_config
    from semdpo_core.plan import flat_refs, plan_pipeline
    from semdpo_core.store import ArtifactStore

    cfg = load_config(config, set_)
    store = ArtifactStore(cfg.store_root())
    typer.echo(f"store: {cfg.store_root()}")
    for label, ref in flat_refs(plan_pipeline(cfg)):
        typer.echo(f"{label:16s} {ref.fingerprint}  {'done' if store.is_committed(ref) else 'to do'}")


if __name__ == "__main__":
    app()
