"""`avs-agent models`: the models a profile loads, where from, and whether they are here.

The main CLI (``agent.cli``) calls ``register(app)``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def models(
        profile: Annotated[str | None, typer.Option("--profile", help="lite or full")] = "full",
        as_json: Annotated[bool, typer.Option("--json", help="print the list as JSON")] = False,
        config: Annotated[Path | None, typer.Option("--config", help="YAML file of settings")] = None,
        set_: Annotated[
            list[str] | None, typer.Option("--set", help="override a setting (repeatable)")
        ] = None,
    ) -> None:
        """List each model of a profile: config key, class it loads, where from, available locally."""
        from agent.settings import load_settings
        from tools.full_registry import model_entries

        settings = load_settings(profile=profile, config_file=config, overrides=tuple(set_ or ()))
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
