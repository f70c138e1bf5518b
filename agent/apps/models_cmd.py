"""`avs-agent models`: the models a profile loads, where from, and whether they are here.

The main CLI (``agent.apps.cli``) calls ``register(app)``.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

from agent.apps.options import ConfigOpt, SetOpt, settings_from


def register(app: typer.Typer) -> None:
    @app.command()
    def models(
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
        from tools.full.models import model_entries

        settings = settings_from(profile, config, set_)
        entries = model_entries(settings)
        if as_json:
            typer.echo(
                json.dumps({"profile": settings.profile, "models": [e.as_dict() for e in entries]}, indent=2)
            )
            return
        if not entries:
            typer.echo(
                f"profile {settings.profile}: no full-profile models configured (lite models live in {settings.models_dir})"
            )
            return
        width = max(len(e.key) for e in entries)
        for e in entries:
            mark = "yes" if e.available else "no "
            typer.echo(f"{mark}  {e.key:<{width}}  {e.loads}  <- {e.where}")
        missing = sum(not e.available for e in entries)
        if missing:
            typer.echo(
                f"{missing} of {len(entries)} not available here: download them (`hf download ID --revision REV`) or point --set KEY.source=DIR at local copies"
            )
