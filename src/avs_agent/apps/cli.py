"""The `avs-agent` command line (Typer). Errors a user can cause print one line and exit 2."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console

from avs_agent.agent.state import DEFAULT_QUESTION
from avs_agent.apps import chat_cmd, models_cmd, serve_cmd
from avs_agent.apps import eval_cmd as eval_commands
from avs_agent.apps.options import (
    ConfigOpt,
    FpsOpt,
    ProfileOpt,
    SetOpt,
    install_hint,
    require_for,
    settings_from,
)
from avs_agent.tools.errors import UserError

app = typer.Typer(
    name="avs-agent",
    help="What is making the sound? Finds the sounding object in a video, masks it on every frame, and says why.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help (no '<bool>' after flags); usage errors are one line (main)
)
err = Console(stderr=True)
RULES_IGNORE_QUESTION = (
    "note: the rules reasoner (llm.backend=rules, the default) does not read --question; it answers "
    "what is making the sound. An LLM backend reads it: --set llm.backend=openai or ollama"
)


@app.command()
def ask(
    media: Annotated[
        Path, typer.Argument(help="video file, image file (with --audio), or folder of frames (with --audio)")
    ],
    audio: Annotated[
        Path | None, typer.Option("--audio", help="audio file for an image or a folder of frames")
    ] = None,
    question: Annotated[str, typer.Option("--question", "-q", help="what to ask")] = DEFAULT_QUESTION,
    profile: ProfileOpt = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="write answer.json, masks/, overlays/, masks.json, overlay.mp4 and timeline.png here",
        ),
    ] = None,
    fps: FpsOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the answer as JSON on stdout")] = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Ask what is making the sound in MEDIA; prints the answer, optionally writes masks and overlays."""
    from avs_agent.agent.run import run_media
    from avs_agent.apps.output import answer_json, area_text, write_outputs

    settings = settings_from(profile, config, set_, fps)
    require_for(settings)
    if (
        question.strip().rstrip("?").lower() != DEFAULT_QUESTION.rstrip("?").lower()
        and settings.llm.backend == "rules"
    ):
        err.print(RULES_IGNORE_QUESTION, highlight=False, soft_wrap=True)
    with err.status("starting", spinner="dots") as status:
        answer, clip = run_media(
            media, settings, audio=audio, question=question, progress=lambda e: status.update(e.text)
        )
    files = (
        write_outputs(answer, clip, out, settings.output.analysed_only, settings.output.video_max_fps)
        if out
        else None
    )
    if as_json:
        typer.echo(json.dumps(answer_json(answer, files), indent=2))
        return
    typer.echo(answer.text)
    for fr in answer.frames:
        what = ", ".join(fr.labels) or "-"
        typer.echo(
            f"  frame {fr.index + 1} ({fr.time_s:.1f} s): {what}  mask {area_text(fr.mask_area)} of the frame"
        )
    if out:
        typer.echo(f"masks, overlays, masks.json, overlay.mp4, timeline.png and answer.json written to {out}")


@app.command()
def graph() -> None:
    """Print the agent's state machine as Mermaid."""
    from avs_agent.agent.graph import graph as compiled

    typer.echo(compiled.get_graph().draw_mermaid())


@app.command()
def config(
    profile: ProfileOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Print the settings in effect (after profile, config file, environment and --set)."""
    settings = settings_from(profile, config, set_)
    typer.echo(json.dumps(settings.model_dump(mode="json"), indent=2))


# Commands of other modules register themselves here (each module: register(app)).
# The other commands, each in its own module: eval (evals/cli.py), models, serve, chat and ui.
for _commands in (eval_commands, models_cmd, serve_cmd, chat_cmd):
    _commands.register(app)


_CLICK_ERROR = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")
"""Click's (Typer's vendored click's) base of usage errors, raised by ``app(standalone_mode=False)``."""


def _fail(message: str, code: int = 2) -> NoReturn:
    from rich.markup import escape

    err.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
    sys.exit(code)


def main() -> None:
    """The console script: errors a user can cause (bad input, bad options, a missing extra) are one line
    and exit 2; anything else keeps its traceback."""
    try:
        code = app(standalone_mode=False)
    except UserError as exc:
        _fail(str(exc), exc.exit_code)
    except _CLICK_ERROR as exc:  # a bad option value, a missing argument, an unknown command
        if type(exc).__name__ == "NoArgsIsHelpError":  # bare `avs-agent`: its help
            exc.show()
            sys.exit(exc.exit_code)
        ctx = getattr(exc, "ctx", None)
        where = f" (see {ctx.command_path} --help)" if ctx is not None else ""
        _fail(exc.format_message() + where, exc.exit_code)
    except ModuleNotFoundError as exc:  # an optional extra not installed, found only at use
        hint = install_hint(exc.name or "", "this command") if exc.name else None
        if hint is None:
            raise
        _fail(hint)
    except (KeyboardInterrupt, typer.Abort):
        err.print("interrupted")
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
