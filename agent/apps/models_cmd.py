"""`avs-agent models`: the models a profile loads, where from, and whether they are here;
`avs-agent models download`: fetch them (tools/download.py).

The main CLI (``agent.apps.cli``) calls ``register(app)``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from agent.apps.options import ConfigOpt, SetOpt, settings_from


def register(app: typer.Typer) -> None:
    models_app = typer.Typer(
        help="List the models of a profile (the default) or download them.", no_args_is_help=False
    )
    app.add_typer(models_app, name="models")

    @models_app.callback(invoke_without_command=True)
    def models(
        ctx: typer.Context,
        profile: Annotated[
            str | None,
            typer.Option(
                "--profile", help="lite or full (the default here: its models are the ones to fetch)"
            ),
        ] = "full",
        as_json: Annotated[bool, typer.Option("--json", help="print the list as JSON")] = False,
        config: ConfigOpt = None,
        set_: SetOpt = None,
    ) -> None:
        """List each model of a profile: config key, class it loads, where from, available locally."""
        if ctx.invoked_subcommand is not None:
            return
        from tools.full.models import model_entries

        settings = settings_from(profile, config, set_)
        entries = model_entries(settings.tool_config())
        if as_json:
            typer.echo(
                json.dumps({"profile": settings.profile, "models": [e.as_dict() for e in entries]}, indent=2)
            )
            return
        if not entries:
            typer.echo(
                f"profile {settings.profile}: no full-profile models configured (lite models live in {settings.models_dir}; "
                "`avs-agent models download --profile lite` fetches them)"
            )
            return
        width = max(len(e.key) for e in entries)
        for e in entries:
            mark = "yes" if e.available else "no "
            typer.echo(f"{mark}  {e.key:<{width}}  {e.loads}  <- {e.where}")
        missing = sum(not e.available for e in entries)
        if missing:
            typer.echo(
                f"{missing} of {len(entries)} not available here: `avs-agent models download --profile {settings.profile}` "
                "fetches them, or point --set KEY.source=DIR at local copies"
            )

    @models_app.command("download")
    def download(
        profile: Annotated[str | None, typer.Option("--profile", help="lite (the default) or full")] = "lite",
        to: Annotated[
            Path | None,
            typer.Option("--to", help="the models folder to fill (default: models_dir, the user's cache)"),
        ] = None,
        mirror: Annotated[
            str | None,
            typer.Option(
                "--mirror",
                help="a folder or http(s) URL holding the same relative paths (offline sites; lite only)",
            ),
        ] = None,
        config: ConfigOpt = None,
        set_: SetOpt = None,
    ) -> None:
        """Fetch the models of a profile: lite files from their public origins (or --mirror), each
        checked against its pinned sha256; full models through huggingface_hub at their revisions."""
        from agent.apps.cli import err
        from tools import download as dl

        settings = settings_from(profile, config, set_)
        dest = (to or settings.models_dir).expanduser()
        if settings.profile == "lite":
            lines = _with_progress(
                err, lambda progress: dl.fetch_files(dl.LITE_FILES, dest, mirror, progress)
            )
            for line in lines:
                err.print(line, highlight=False, soft_wrap=True)
            err.print(f"lite models ready in {dest}", highlight=False)
            return
        if mirror:
            raise dl.DownloadError(
                "--mirror serves the lite files; for the full profile set HF_ENDPOINT to a hub mirror"
            )
        from tools.full.models import model_entries

        hub = [
            (e.key, e.source, e.revision)
            for e in model_entries(settings.tool_config())
            if not e.local and e.source
        ]
        for line in dl.fetch_hub_models(hub, dest):
            err.print(line, highlight=False, soft_wrap=True)
        err.print(
            f"full models ready (hub cache); revisions of 'main' locked in {dest / dl.LOCK_FILE}",
            highlight=False,
        )


def _with_progress(console, run):
    """Run ``run(progress)`` under a rich progress bar per file."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    tasks: dict[str, int] = {}
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=console,
        transient=True,
    ) as bar:

        def progress(label: str, done: int, total: int | None) -> None:
            if label not in tasks:
                tasks[label] = bar.add_task(label, total=total)
            bar.update(tasks[label], completed=done, total=total)

        return run(progress)
