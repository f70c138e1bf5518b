"""The options every `avs-agent` command shares (--profile, --config, --set) and the settings they make.

One place for them, imported by agent.apps.cli and by the command modules it registers (chat, serve, models,
evals), so a command's settings options read and behave the same everywhere."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

ProfileOpt = Annotated[
    str | None,
    typer.Option("--profile", help="lite (CPU models; the default) or full (GPU foundation models)"),
]
ConfigOpt = Annotated[
    Path | None, typer.Option("--config", help="YAML file of settings (over the profile's)")
]
FpsOpt = Annotated[
    float | None,
    typer.Option("--fps", help="frames analysed per second (default 1, AVSBench's convention; at most 30)"),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="override any setting, key=value: --set llm.backend=openai (repeatable)"),
]


def settings_from(
    profile: str | None, config: Path | None, overrides: list[str] | None, fps: float | None = None
):
    """Settings with the precedence of agent.settings: profile yaml < --config < env < --set/--profile
    (--fps is ``--set media.fps=N``)."""
    from agent.settings import load_settings
    from tools.errors import ConfigError
    from tools.settings import MAX_FPS

    pairs = list(overrides or ())
    if fps is not None:
        if not 0 < fps <= MAX_FPS:
            raise ConfigError(f"--fps must be above 0 and at most {MAX_FPS:g}, got {fps:g}")
        pairs.append(f"media.fps={fps}")
    return load_settings(profile=profile, config_file=config, overrides=tuple(pairs))
