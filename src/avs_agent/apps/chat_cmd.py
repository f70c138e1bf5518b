"""`avs-agent chat` (a conversation in the terminal) and `avs-agent ui` (the same conversation in a web page).

The conversation itself (memory, follow-ups, re-segmentation) is ``avs_agent.apps.conversation.Conversation``; this
module only reads lines, prints replies and says where the masks and overlays were written.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from avs_agent.apps.options import ConfigOpt, FpsOpt, ProfileOpt, SetOpt, require, require_for, settings_from
from avs_agent.tools.errors import UserError

if TYPE_CHECKING:
    from avs_agent.apps.conversation import Conversation, Reply

HELP = """\
Ask in plain words, e.g. "what is making the sound?", then follow up: "why not the man?",
"segment the car instead", "which seconds?", "why?".
  /open PATH [AUDIO]  open a video, or an image (or a folder of frames) with its audio file
  /new                start a new conversation (keeps the open media)
  /trace              the decisions of the last analysis
  /thread             this conversation's id (resume it with: avs-agent chat --thread ID)
  /help               this help
  /quit               leave (Ctrl-D works too)"""

PROMPT = "you> "


def describe_reply(reply: Reply) -> list[str]:
    """The lines printed for a reply: its text, then where the masks and overlays are."""
    lines = [reply.text]
    if reply.kind == "question":  # a close call: the next message is the person's choice
        return [*lines, f"  the two, numbered: {reply.overlays[0]}"]
    if reply.overlays and reply.kind != "followup":
        folder = Path(reply.overlays[0]).parent
        lines.append(
            f"  overlays: {folder}/ ({len(reply.overlays)} PNG, frame with the mask tinted and the object named)"
        )
    if reply.masks and reply.kind != "followup":
        lines.append(f"  masks:    {Path(reply.masks[0]).parent}/ (0/255 PNG per frame)")
    if reply.out_dir and reply.kind in ("analysis", "resegment"):
        folder = Path(reply.out_dir)
        if (folder / "overlay.mp4").is_file():
            lines.append(f"  video:    {folder / 'overlay.mp4'} (the masks over the video, with its sound)")
            lines.append(f"  timeline: {folder / 'timeline.png'}  masks.json: COCO RLE per frame and object")
        lines.append(f"  answer:   {folder / 'answer.json'}")
    return lines


def format_trace(conv: Conversation) -> list[str]:
    steps = conv.trace()
    if not steps:
        return ["No analysis yet: ask a question first."]
    out = []
    for s in steps:
        where = f"[frame {s.frame + 1}]" if s.frame is not None else "[clip]"
        out.append(f"  {s.node:<8} {where:<10} {s.message}")
    return out


class ChatSession:
    """The terminal conversation's commands, apart from the input loop (so it can be driven directly)."""

    def __init__(
        self, settings, thread_id: str | None, out_root: Path | None, echo: Callable[[str], None], status=None
    ):
        self.settings = settings
        self.out_root = out_root
        self.echo = echo
        self.status = status  # a context manager factory showing progress, e.g. rich's Console.status
        self.conv = self._conversation(thread_id)

    def _conversation(self, thread_id: str | None) -> Conversation:
        from avs_agent.apps.conversation import Conversation

        return Conversation(self.settings, thread_id=thread_id, out_root=self.out_root)

    def greet(self, resumed: bool) -> None:
        conv = self.conv
        if resumed:
            turns = [t for t in conv.turns() if t.get("role") in ("user", "assistant")]
            if not turns and not conv.media:
                self.echo(f"No conversation {conv.thread_id} was found; starting it new.")
            else:
                self.echo(f"Resuming conversation {conv.thread_id} ({len(turns)} message(s)).")
                for t in turns[-6:]:
                    who = "you" if t["role"] == "user" else "avs"
                    self.echo(f"  {who}: {t['text']}")
        else:
            self.echo(
                f"Conversation {conv.thread_id} (resume it with: avs-agent chat --thread {conv.thread_id})"
            )
        if conv.media:
            audio = conv.state.get("audio")
            self.echo(
                f"Media: {conv.media}"
                + (f" with {audio}" if audio else "")
                + '. Ask, e.g. "what is making the sound?"'
            )
        else:
            self.echo(
                "Open a video with /open PATH (an image needs its audio: /open IMAGE AUDIO). /help for more."
            )

    def open(self, media: str, audio: str | None) -> bool:
        try:
            self.conv.open(media, audio)
        except UserError as exc:
            self.echo(f"error: {exc}")
            return False
        self.echo(
            f"Opened {media}"
            + (f" with {audio}" if audio else "")
            + '. Ask, e.g. "what is making the sound?"'
        )
        return True

    def ask(self, text: str) -> None:
        try:
            if self.status is not None:
                with self.status("thinking") as st:
                    reply = self.conv.ask(text, progress=lambda e: st.update(e.text))
            else:
                reply = self.conv.ask(text)
        except UserError as exc:
            self.echo(f"error: {exc}")
            return
        for line in describe_reply(reply):
            self.echo(line)

    def handle(self, line: str) -> bool:
        """Handle one input line; False when the person wants to leave."""
        line = line.strip()
        if not line:
            return True
        if not line.startswith("/"):
            self.ask(line)
            return True
        try:
            parts = shlex.split(line)
        except ValueError as exc:
            self.echo(f"error: cannot read that command ({exc})")
            return True
        cmd, args = parts[0].lower(), parts[1:]
        if cmd in ("/quit", "/exit", "/q"):
            return False
        if cmd == "/help":
            self.echo(HELP)
        elif cmd == "/open":
            if not 1 <= len(args) <= 2:
                self.echo("usage: /open PATH [AUDIO]")
            else:
                self.open(args[0], args[1] if len(args) > 1 else None)
        elif cmd == "/new":
            media, audio = self.conv.media, self.conv.state.get("audio")
            self.conv = self._conversation(None)
            self.echo(f"New conversation {self.conv.thread_id}.")
            if media:
                self.open(media, audio)
        elif cmd == "/trace":
            for row in format_trace(self.conv):
                self.echo(row)
        elif cmd == "/thread":
            self.echo(self.conv.thread_id)
        else:
            self.echo(f"unknown command {cmd}; /help lists the commands")
        return True


def _parse_auth(auth: str | None) -> tuple[str, str] | None:
    if auth is None:
        return None
    user, sep, password = auth.partition(":")
    if not sep or not user or not password:
        raise UserError("--auth must be USER:PASSWORD")
    return user, password


def register(app: typer.Typer) -> None:
    """Add `chat` and `ui` to the main CLI."""
    from rich.console import Console

    err = Console(stderr=True)

    @app.command()
    def chat(
        media: Annotated[
            str | None, typer.Argument(help="video, image (with --audio) or folder of frames (with --audio)")
        ] = None,
        audio: Annotated[
            str | None, typer.Option("--audio", help="audio file for an image or a folder of frames")
        ] = None,
        thread: Annotated[
            str | None, typer.Option("--thread", help="resume the conversation with this id")
        ] = None,
        out: Annotated[
            Path | None,
            typer.Option(
                "--out",
                help="write each answer's masks and overlays under this folder (default beside the chat database)",
            ),
        ] = None,
        profile: ProfileOpt = None,
        fps: FpsOpt = None,
        config: ConfigOpt = None,
        set_: SetOpt = None,
    ) -> None:
        """Talk about a video in the terminal: ask what makes the sound, then follow up. /help inside lists the commands."""
        settings = settings_from(profile, config, set_, fps)
        require_for(settings)
        session = ChatSession(
            settings, thread, out, echo=typer.echo, status=lambda msg: err.status(msg, spinner="dots")
        )
        if media is not None:
            session.conv.open(media, audio)  # a bad argument is a one-line error and exit 2, as for `ask`
        elif audio is not None:
            raise UserError("--audio needs MEDIA (an image or a folder of frames)")
        session.greet(resumed=thread is not None)
        if sys.stdin.isatty():
            try:
                import readline  # noqa: F401  (line editing and history for input())
            except ImportError:  # pragma: no cover - not on every platform
                pass
        while True:
            try:
                line = input(PROMPT)
            except EOFError:
                typer.echo("")
                break
            if not session.handle(line):
                break
        typer.echo(f"Bye. Resume with: avs-agent chat --thread {session.conv.thread_id}")

    @app.command()
    def ui(
        host: Annotated[
            str, typer.Option("--host", help="address to bind; 127.0.0.1 keeps the page on this machine")
        ] = "127.0.0.1",
        port: Annotated[int, typer.Option("--port", help="port of the page")] = 7860,
        auth: Annotated[
            str | None,
            typer.Option("--auth", help="USER:PASSWORD required to open the page (needed off loopback)"),
        ] = None,
        insecure_no_auth: Annotated[
            bool, typer.Option("--insecure-no-auth", help="allow a non-loopback --host without --auth")
        ] = False,
        out: Annotated[
            Path | None,
            typer.Option(
                "--out", help="folder for the masks and overlays (default beside the chat database)"
            ),
        ] = None,
        profile: ProfileOpt = None,
        fps: FpsOpt = None,
        config: ConfigOpt = None,
        set_: SetOpt = None,
    ) -> None:
        """Serve the chat as a web page: upload a video (or image + audio), ask, see the masks."""
        from avs_agent.tools.server.settings import is_loopback

        require(["gradio"], "`avs-agent ui`")
        credentials = _parse_auth(auth)
        if not is_loopback(host) and credentials is None and not insecure_no_auth:
            raise UserError(
                f"--host {host} exposes the page beyond this machine: give --auth USER:PASSWORD (or --insecure-no-auth)"
            )
        settings = settings_from(profile, config, set_, fps)
        require_for(settings)
        from avs_agent.apps.ui import launch

        launch(settings, host=host, port=port, auth=credentials, out_root=out)
