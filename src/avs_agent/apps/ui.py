"""The web page (Gradio Blocks): upload a video (or an image and its audio), ask in a chat box, see every
frame with the sounding object's mask drawn and named, the answer beside it, and the trace folded away.

Each browser session holds one conversation thread (``avs_agent.apps.conversation.Conversation``), persisted in the
same SQLite checkpointer as the terminal chat, so ``avs-agent chat --thread ID`` resumes it. Errors a
person can cause (a file that is not media, an image without audio) are shown in the page in one line.
The page binds to loopback unless told otherwise; ``avs-agent ui`` refuses a public address without auth.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

from avs_agent.agent.settings import Settings
from avs_agent.tools.errors import UserError
from avs_agent.tools.types import Progress

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # offline machines: no phoning home
log = logging.getLogger(__name__)

TITLE = "avs-agent: what is making the sound?"
EXAMPLE_QUESTION = "what is making the sound?"
CSS = """
#status p { margin: 0.2em 0; }
#overlays .caption-label { white-space: normal; max-width: calc(100% - 2 * var(--block-label-margin)); opacity: 0.9; }
.panel-title p { margin: 0.4em 0 0.1em 0; font-weight: 600; }
#answer { min-height: 3em; }
#trace pre { max-height: 420px; overflow: auto; font-size: 0.8em; }
"""


def default_out_root(settings: Settings) -> Path:
    return Path(settings.chat.checkpoint_path).expanduser().parent / "threads"


def page_message(exc: Exception, uploads: dict[str, str]) -> str:
    """A user error as one line for the page: upload paths shown by file name, CLI flags by what to do."""
    text = str(exc)
    for path, name in uploads.items():
        text = text.replace(path, name)
    text = text.replace("--audio FILE", "its audio file (Image + audio tab)").replace(
        "with --audio", "with its audio file"
    )
    return text.replace("--audio", "the audio file")


class ChatPage:
    """The page's handlers, kept apart from the layout so they can be called without a browser."""

    def __init__(self, settings: Settings, out_root: Path | None = None):
        self.settings = settings
        self.out_root = Path(out_root or default_out_root(settings)).expanduser()
        self.out_root.mkdir(parents=True, exist_ok=True)
        self._conversations: dict[str, Any] = {}
        self._lock = threading.Lock()

    def conversation(self, thread_id: str | None):
        from avs_agent.apps.conversation import Conversation

        with self._lock:
            if thread_id is None or thread_id not in self._conversations:
                conv = Conversation(self.settings, thread_id=thread_id, out_root=self.out_root)
                self._conversations[conv.thread_id] = conv
                return conv
            return self._conversations[thread_id]

    # -- media ---------------------------------------------------------------------------------------

    def open_media(self, media: str | None, audio: str | None) -> tuple[str | None, str]:
        """Open an upload in a new conversation: (thread id or None, a status line in Markdown)."""
        if not media:
            return None, "Upload a video, or an image and its audio."
        uploads = {media: Path(media).name} | ({audio: Path(audio).name} if audio else {})
        conv = self.conversation(None)
        try:
            conv.open(media, audio)
        except UserError as exc:
            return None, f"**Cannot use this upload:** {page_message(exc, uploads)}"
        what = Path(media).name + (f" with {Path(audio).name}" if audio else "")
        return conv.thread_id, (
            f"Opened **{what}**. Ask, e.g. *{EXAMPLE_QUESTION}*  \n"
            f"<small>conversation `{conv.thread_id}` (terminal: `avs-agent chat --thread {conv.thread_id}`)</small>"
        )

    def resume(self, thread_id: str | None) -> dict[str, Any] | None:
        """What the page shows for an existing conversation (after a reload): None when there is none."""
        if not thread_id:
            return None
        conv = self.conversation(thread_id)
        if not conv.media:
            return None
        state = conv.state
        history = [
            {"role": t["role"], "content": t["text"]}
            for t in state.get("turns", [])
            if t.get("role") in ("user", "assistant")
        ]
        opened = Path(conv.media).name + (f" with {Path(state['audio']).name}" if state.get("audio") else "")
        out: dict[str, Any] = {
            "history": history,
            "status": f"Resumed the conversation about **{opened}**.  \n"
            f"<small>conversation `{thread_id}` (terminal: `avs-agent chat --thread {thread_id}`)</small>",
        }
        pending = conv.pending
        if pending:  # a close call still waits for the person's choice: ask again
            history.append({"role": "assistant", "content": pending["question"]})
        result = state.get("result")
        if result:
            from avs_agent.apps.conversation import Reply

            record = result.get("resegmented") or result
            folder = Path(record["out_dir"])
            reply = Reply(
                text=record.get("answer", ""),
                labels=record.get("labels", []),
                overlays=[
                    str(folder / fr["overlay_file"])
                    for fr in record.get("frames", [])
                    if "overlay_file" in fr
                ],
                out_dir=str(folder),
                kind="resegment" if record is not result else "analysis",
            )
            out |= {
                "gallery": gallery_items(reply, record),
                **result_media(folder),
                "answer": answer_markdown(reply, record),
                "trace": trace_markdown(record),
            }
        return out

    # -- questions -----------------------------------------------------------------------------------

    def ask(self, text: str, thread_id: str | None, progress=None) -> dict[str, Any]:
        """Answer one question. Returns the reply text and, when masks are (re)computed or first shown,
        the gallery items, the answer panel and the trace."""
        text = (text or "").strip() or EXAMPLE_QUESTION  # an empty box asks the question it shows
        if thread_id is None:
            return {"text": "Upload a video (or an image and its audio) first."}
        conv = self.conversation(thread_id)
        try:
            reply = conv.ask(text, progress=progress)
        except UserError as exc:
            return {"text": f"Error: {exc}"}
        out: dict[str, Any] = {"text": reply.text, "kind": reply.kind}
        if reply.kind == "question":  # a close call: the frame with both numbered; the answer is typed
            out |= {
                "gallery": [(reply.overlays[0], "which one is making the sound? answer 1, 2 or both")],
                "answer": f"### Which one?\n{reply.text}",
                "trace": "",
                "video": None,
                "timeline": None,
            }
        if reply.out_dir and reply.kind in ("analysis", "resegment"):
            record = _read_answer(Path(reply.out_dir))
            out["gallery"] = gallery_items(reply, record)
            out |= result_media(Path(reply.out_dir))
            out["answer"] = answer_markdown(reply, record)
            out["trace"] = trace_markdown(record)
        return out


def message_text(content: Any) -> str:
    """A chat message's text: Gradio 6 gives a list of parts ({"type": "text", "text": ...}), older a str."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return str(content.get("text") or "")
    if isinstance(content, (list, tuple)):
        return " ".join(message_text(part) for part in content).strip()
    return str(content or "")


# How far along the agent is at each stage (the graph's nodes in order; the bar only needs to move the
# right way, and a stage reached again, a retry's segment, does not move it back).
STAGE_SHARE = {
    "start": 0.05,
    "load": 0.1,
    "perceive": 0.25,
    "propose": 0.45,
    "verify": 0.7,
    "confirm": 0.75,
    "segment": 0.8,
    "check": 0.85,
    "retry": 0.85,
    "propagate": 0.9,
    "answer": 0.95,
}


def progress_steps(progress) -> Any:
    """A progress callback for the agent (``tools.types.Progress`` events) that drives Gradio's bar:
    the share its stage stands for, and its words."""
    done = [0.0]

    def report(event: Progress) -> None:
        done[0] = max(done[0], STAGE_SHARE.get(event.stage, done[0]))
        progress(done[0], desc=event.text)

    return report


def _read_answer(out_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((out_dir / "answer.json").read_text())
    except (OSError, ValueError):
        return {}


def result_media(out_dir: Path) -> dict[str, str | None]:
    """The answer's video (overlay.mp4: masks over the video, with its sound) and timeline.png."""
    video, timeline = out_dir / "overlay.mp4", out_dir / "timeline.png"
    return {
        "video": str(video) if video.is_file() else None,
        "timeline": str(timeline) if timeline.is_file() else None,
    }


def gallery_items(reply, record: dict[str, Any]) -> list[tuple[str, str]]:
    """(overlay PNG path, caption) per frame: '1 · 0.5 s · dog' (the page's CSS wraps a long one)."""
    frames = record.get("frames") or []
    items = []
    for i, path in enumerate(reply.overlays):
        fr = frames[i] if i < len(frames) else {}
        labels = ", ".join(fr.get("labels", [])) or "no visible source"
        time = f" · {fr['time_s']:.1f} s" if "time_s" in fr else ""
        items.append((path, f"{i + 1}{time} · {labels}"))
    return items


def answer_markdown(reply, record: dict[str, Any]) -> str:
    labels = reply.labels or record.get("labels") or []
    if reply.kind == "resegment":
        asked = record.get("question", "")
        head = "### " + (f"{', '.join(labels)} (segmented on request)" if labels else f"Not found: *{asked}*")
    else:
        head = "### " + (", ".join(labels) if labels else "No visible object makes this sound")
    lines = [head, reply.text]
    frames = record.get("frames") or []
    if frames:
        from avs_agent.apps.output import area_text

        rows = [  # a label whose mask is empty on a frame is not shown as found there
            f"| {fr['index'] + 1} | {fr['time_s']:.1f} | {(fr['mask_area'] > 0 and ', '.join(fr['labels'])) or '-'} "
            f"| {area_text(fr['mask_area'])} |"
            for fr in frames
        ]
        lines += ["", "| frame | s | object | mask |", "|---|---|---|---|", *rows]
    if reply.out_dir:
        lines += ["", f"<small>masks and overlays: `{reply.out_dir}`</small>"]
    return "\n".join(lines)


def trace_markdown(record: dict[str, Any]) -> str:
    steps = record.get("trace") or []
    if not steps:
        return "No trace."
    rows = []
    for s in steps:
        where = f"frame {s['frame'] + 1}" if s.get("frame") is not None else "clip"
        rows.append(f"{s['node']:<8} {where:<9} {s['message']}")
    stats = record.get("stats") or {}
    tail = f"\n\nstats: {json.dumps(stats)}" if stats else ""
    return "```text\n" + "\n".join(rows) + "\n```" + tail


def build_app(settings: Settings, out_root: Path | None = None):
    """The Blocks page. Returns (demo, page)."""
    import gradio as gr

    page = ChatPage(settings, out_root)

    skip_media = (gr.skip(),) * 7

    def on_video(video, thread):
        if not video:
            return thread, *skip_media
        new_thread, status = page.open_media(video, None)
        return new_thread, status, [], [], "", "", None, None

    def on_image(image, audio, thread):
        if not image:
            return thread, *skip_media
        new_thread, status = page.open_media(image, audio)
        if (
            new_thread is None
            and not audio
            and Path(image).suffix.lower() in {".png", ".jpg", ".jpeg", ".bmp", ".webp"}
        ):
            status = f"Now add the audio of **{Path(image).name}**."
        return new_thread, status, [], [], "", "", None, None

    def on_load(thread):
        shown = page.resume(thread)
        if shown is None:
            return None, *skip_media
        return (
            thread,
            shown["status"],
            shown["history"],
            shown.get("gallery", []),
            shown.get("answer", ""),
            shown.get("trace", ""),
            shown.get("video"),
            shown.get("timeline"),
        )

    def on_submit(text, history):
        text = (text or "").strip() or EXAMPLE_QUESTION  # the placeholder's question, as shown
        return "", [*history, {"role": "user", "content": text}]

    def on_ask(history, thread, progress=gr.Progress()):  # noqa: B008 (gradio injects progress this way)
        if not history or history[-1]["role"] != "user":
            return history, gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
        progress(0.0, desc="thinking")
        try:
            result = page.ask(message_text(history[-1]["content"]), thread, progress=progress_steps(progress))
        except Exception as exc:  # an internal error: traceback in the server's log, one line in the page
            log.exception("answering failed")
            result = {
                "text": f"Internal error ({type(exc).__name__}: {exc}); the details are in the server's log."
            }
        history = [*history, {"role": "assistant", "content": result["text"]}]
        if "gallery" not in result:
            return history, gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
        return (
            history,
            result["gallery"],
            result["answer"],
            result["trace"],
            result.get("video"),
            result.get("timeline"),
        )

    with gr.Blocks(title=TITLE, analytics_enabled=False) as demo:
        # the conversation's id, kept in the browser so a reload goes on with the same conversation
        thread = gr.BrowserState(None, storage_key="avs_agent_thread")
        gr.Markdown(
            f"## {TITLE}\nUpload a video (or an image and its audio), then ask. Follow up: *why not the man?*, *segment the car instead*, *which seconds?*"
        )
        with gr.Row():
            with gr.Column(scale=2):
                with gr.Tabs():
                    with gr.Tab("Video"):
                        video = gr.Video(label="Video", sources=["upload"], elem_id="video", height=260)
                    with gr.Tab("Image + audio"):
                        image = gr.File(label="Image", elem_id="image", height=100)
                        audio = gr.File(label="Its audio", elem_id="audio", height=100)
                status = gr.Markdown("Upload a video, or an image and its audio.", elem_id="status")
            with gr.Column(scale=3):
                chat = gr.Chatbot(label="Conversation", elem_id="chat", height=320, buttons=["copy"])
                with gr.Row():
                    box = gr.Textbox(
                        placeholder=EXAMPLE_QUESTION,
                        show_label=False,
                        elem_id="question",
                        scale=5,
                        submit_btn=False,
                    )
                    send = gr.Button("Ask", variant="primary", elem_id="ask", scale=1, min_width=80)
        with gr.Row():
            with gr.Column(scale=3):
                gr.Markdown(
                    "Frames: each sounding object masked in its colour and named", elem_classes="panel-title"
                )
                gallery = gr.Gallery(
                    show_label=False,
                    elem_id="overlays",
                    columns=3,
                    object_fit="contain",
                    height="auto",
                )
            with gr.Column(scale=2):
                gr.Markdown("The answer as video, with the sound", elem_classes="panel-title")
                result_video = gr.Video(
                    show_label=False,
                    elem_id="overlay-video",
                    interactive=False,
                    height=240,
                )
                gr.Markdown(
                    "Which seconds: audio tags and where each object sounds", elem_classes="panel-title"
                )
                timeline = gr.Image(
                    show_label=False,
                    elem_id="timeline",
                    type="filepath",
                    interactive=False,
                )
                answer = gr.Markdown(elem_id="answer")
                with gr.Accordion("Trace: how the answer was reached", open=False, elem_id="trace-box"):
                    trace = gr.Markdown(elem_id="trace")

        media_outputs = [thread, status, chat, gallery, answer, trace, result_video, timeline]
        private = {"api_visibility": "private"}  # a page for people: no API endpoints beside it
        demo.load(on_load, [thread], media_outputs, **private)
        video.change(on_video, [video, thread], media_outputs, **private)
        image.change(on_image, [image, audio, thread], media_outputs, **private)
        audio.change(on_image, [image, audio, thread], media_outputs, **private)
        ask_outputs = [chat, gallery, answer, trace, result_video, timeline]
        for trigger in (box.submit, send.click):
            trigger(on_submit, [box, chat], [box, chat], queue=False, **private).then(
                on_ask, [chat, thread], ask_outputs, **private
            )
    return demo, page


def launch(
    settings: Settings,
    host: str = "127.0.0.1",
    port: int = 7860,
    auth: tuple[str, str] | None = None,
    out_root: Path | None = None,
    block: bool = True,
):
    """Serve the page. With ``block=False`` returns (demo, url) and keeps serving in a thread."""
    import gradio as gr

    demo, page = build_app(settings, out_root)
    theme = gr.themes.Soft(
        font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"]
    )
    try:
        _, url, _ = demo.queue(default_concurrency_limit=1).launch(
            server_name=host,
            server_port=port,
            auth=auth,
            auth_message="avs-agent" if auth else None,
            share=False,
            ssr_mode=False,
            allowed_paths=[str(page.out_root)],
            max_file_size="1gb",
            prevent_thread_lock=True,
            quiet=True,  # Gradio's own lines (its share=True hint) are not for a command-line user
            theme=theme,
            css=CSS,
            footer_links=[],
        )
    except OSError as exc:
        raise UserError(f"cannot serve the page on {host}:{port}: {exc}") from None
    if block:
        print(f"avs-agent page on {url} (Ctrl-C stops it)", flush=True)
        demo.block_thread()
    return demo, url
