"""Chat memory: a conversation about one media file, persisted by a LangGraph checkpointer.

A thread (``thread_id``) holds the media, the turns, and a compact record of the last analysis (labels,
per-frame findings, candidates and what was visible, the trace, where masks and overlays were written).
The frames and masks themselves are not checkpointed: they are re-read from the media and the written
PNGs, so a long video does not bloat the SQLite file.

A question is one of:
- a new analysis (the first question, or a question that is not a follow-up): runs the agent;
- "segment the car instead" / "show me the dog": re-enters the agent with that object replacing the
  proposal (verify -> segment -> check -> retry as usual);
- "why not the man?" / "what about the car?": answered from the stored evidence, checking whether the
  object is visible when it was never a candidate;
- "which seconds?" / "when?": answered from the per-frame findings;
- "why?": the explanation and the key decisions of the trace.
With an LLM backend, other follow-ups are answered by the LLM from the stored record (prompts/explain.md),
falling back to the rules' explanation on failure.

A close call (``chat.ask_person``) pauses the agent with a question: "1 = motorcycle, 2 = person: which
one is it?". While it waits, a message that asks something (ends with '?' or opens with a question word:
"why not the person?", "which seconds?") is answered from the paused run's evidence and the question is
asked again; it is never taken as a choice. Any other message is the answer: "1", "2", "both", or the
object's name; an answer that names neither lets the rules decide.
"""

from __future__ import annotations

import operator
import re
import sqlite3
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, TypedDict

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from pydantic import BaseModel, Field

from avs_agent.agent.settings import Settings
from avs_agent.tools.errors import UserError
from avs_agent.tools.types import Progress, TraceStep


class Reply(BaseModel):
    text: str
    labels: list[str] = Field(default_factory=list)
    overlays: list[str] = Field(default_factory=list)
    masks: list[str] = Field(default_factory=list)
    out_dir: str | None = None
    kind: str = "analysis"  # analysis | followup | resegment | question (a close call) | error


class ChatState(TypedDict, total=False):
    media: str | None
    audio: str | None
    turns: Annotated[list[dict], operator.add]
    result: dict[str, Any] | None
    analyses: int
    reply: dict[str, Any]


@dataclass
class ChatContext:
    settings: Settings
    out_root: Path
    thread_id: str
    progress: Callable[[Progress], None] = field(default=lambda e: None)


_RESEGMENT = re.compile(
    r"^(?:please\s+)?(?:segment|mask|show(?: me)?|highlight|find|outline)\s+(?:the\s+|a\s+|an\s+)?(?P<x>[\w\s-]+?)(?:\s+instead)?\s*[.!?]*$",
    re.I,
)
_WHY_NOT = re.compile(
    r"^(?:but\s+)?(?:why\s+not|what\s+about|and|is\s+it|isn't\s+it|could\s+it\s+be)\s+(?:the\s+|a\s+|an\s+)?(?P<x>[\w\s-]+?)\s*\??$",
    re.I,
)
_WHEN = re.compile(r"\b(which|what)\s+(seconds?|frames?|times?)\b|\bwhen\b", re.I)
_WHY = re.compile(r"^\s*(why|how do you know|explain)\b", re.I)


def classify(text: str, has_result: bool) -> tuple[str, str | None]:
    """(intent, object) of a message: new | resegment | why_not | when | why."""
    if not has_result:
        return "new", None
    t = text.strip()
    if m := _RESEGMENT.match(t):
        return "resegment", m.group("x").strip()
    if m := _WHY_NOT.match(t):
        return "why_not", m.group("x").strip()
    if _WHEN.search(t):
        return "when", None
    if _WHY.match(t):
        return "why", None
    return "new", None


def _frames_text(frames: list[int]) -> str:
    """[0, 1, 2, 4] -> "frames 1-3 and 5 (seconds 0-3 and 4-5)"; [3] -> "frame 4 (seconds 3-4)"."""
    runs: list[list[int]] = []
    for i in sorted(frames):
        if runs and i == runs[-1][-1] + 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    nums = " and ".join(f"{r[0] + 1}" if len(r) == 1 else f"{r[0] + 1}-{r[-1] + 1}" for r in runs)
    secs = " and ".join(f"{r[0]}-{r[-1] + 1}" for r in runs)
    word = "frame" if len(frames) == 1 else "frames"
    return f"{word} {nums} (seconds {secs})"


def respond(state: ChatState, runtime: Runtime[ChatContext]) -> dict:
    ctx = runtime.context
    text = state["turns"][-1]["text"]
    if not state.get("media"):
        reply = Reply(text="Open a video first (/open PATH, or an image with its audio).", kind="error")
        return {"reply": reply.model_dump(), "turns": [{"role": "assistant", "text": reply.text}]}
    result = state.get("result")
    intent, obj = classify(text, result is not None)
    update: dict[str, Any] = {}
    if intent in ("new", "resegment"):
        from avs_agent.agent.run import run_media
        from avs_agent.apps.output import write_outputs

        n = state.get("analyses", 0) + 1
        out = ctx.out_root / ctx.thread_id / f"turn_{n:03d}"
        if intent == "new":
            ctx.progress(Progress(stage="start", event="analysing", text="analysing"))
        else:
            ctx.progress(Progress(stage="start", event="segmenting", text=f"segmenting {obj}", object=obj))
        answer, clip = run_media(
            state["media"],
            ctx.settings,
            audio=state.get("audio"),
            question=text,
            progress=ctx.progress,
            segment=[obj] if obj else None,
            ask_person=ctx.settings.chat.ask_person,  # a close call pauses here (Conversation.ask)
        )
        files = write_outputs(
            answer, clip, out, ctx.settings.output.analysed_only, ctx.settings.output.video_max_fps
        )
        record = answer.to_dict(files["masks"], files["overlays"]) | {"out_dir": str(out)}
        if intent == "resegment":
            found = [i for i, fr in enumerate(answer.frames) if fr.labels]
            failed_checks = [
                t.message.removeprefix("failed: ") for t in answer.trace if t.event == "check_failed"
            ]
            if found:
                msg = f"Here is the {obj}, found in {_frames_text(found)}."
            elif failed_checks:
                msg = f"I found a {obj}, but its mask failed the check ({failed_checks[0]}), so the masks are empty."
            else:
                msg = f"I could not find a {obj} in the frames; the masks are empty."
            previous = ", ".join(result.get("labels", [])) if result else ""
            if previous and obj not in result.get("labels", []):
                msg += f" (By the sound, I had found: {previous}.)"
            kind = "resegment"
        else:
            msg, kind = answer.text, "analysis"
        reply = Reply(
            text=msg,
            labels=answer.labels,
            overlays=[str(out / f) for f in files["overlays"]],
            masks=[str(out / f) for f in files["masks"]],
            out_dir=str(out),
            kind=kind,
        )
        update = {"result": record if intent == "new" else result | {"resegmented": record}, "analyses": n}
    else:
        reply = _followup(intent, obj, text, result, state, ctx)
    update |= {"reply": reply.model_dump(), "turns": [{"role": "assistant", "text": reply.text}]}
    return update


def _followup(
    intent: str, obj: str | None, text: str, result: dict, state: ChatState, ctx: ChatContext
) -> Reply:
    out = result.get("out_dir")
    base = dict(
        labels=result.get("labels", []),
        overlays=[str(Path(out) / f["overlay_file"]) for f in result["frames"]],
        masks=[str(Path(out) / f["mask_file"]) for f in result["frames"]],
        out_dir=out,
        kind="followup",
    )
    if intent == "when":
        labels = result.get("labels", [])
        if not labels:
            return Reply(
                text="No visible object makes the sound in any second, so there is nothing to place in time.",
                **base,
            )
        parts = [
            f"the {lab} in {_frames_text([fr['index'] for fr in result['frames'] if lab in fr['labels']])}"
            for lab in labels
        ]
        return Reply(text="Found " + "; ".join(parts) + ".", **base)
    if intent == "why_not" and obj:  # "why not the truck or the car?": each in turn
        return Reply(text=" ".join(_why_not(o, result, state, ctx) for o in split_objects(obj)), **base)
    if ctx.settings.llm.backend != "rules":
        llm_text = _llm_explain(text, result, ctx)
        if llm_text:
            return Reply(text=llm_text, **base)
    key = [
        s["message"]
        for s in result.get("trace", [])
        if s["node"] in ("propose", "verify", "check", "retry") and s.get("frame") in (None, 0)
    ]
    return Reply(text=result["answer"] + " Decisions: " + " | ".join(key[:6]), **base)


_SEVERAL = re.compile(r"\s*(?:,|\bor\b|\band\b)\s*(?:the\s+|a\s+|an\s+)?", re.I)


def split_objects(text: str) -> list[str]:
    """ "truck or the car" -> ["truck", "car"]: the objects a follow-up names."""
    return [o.strip() for o in _SEVERAL.split(text) if o.strip()] or [text]


def _why_not(obj: str, result: dict, state: ChatState, ctx: ChatContext) -> str:
    from avs_agent.tools.wiring import get_toolset

    toolset = get_toolset(ctx.settings.tool_config())
    matches = toolset.matcher.match([obj], toolset.vocabulary)[0]
    name = matches[0][0] if matches else obj
    chosen = result.get("labels", [])
    if name in chosen:
        return f"The {obj} is what I found making the sound."
    cand = {p: e for fr in result.get("evidence", []) for p, e in fr["candidates"]}
    visible = {p for fr in result.get("evidence", []) for p in fr["visible"]}
    best = max((cand.get(c, 0.0) for c in chosen), default=0.0)
    if name in visible:
        return f"The {obj} is visible, but the audio matches {', '.join(chosen) or 'nothing visible'} better (audio evidence {cand.get(name, 0.0):.2f} vs {best:.2f})."
    if name in cand:
        return f"The audio could come from a {obj} (audio evidence {cand[name]:.2f}), but no {obj} is visible in the frames."
    from avs_agent.tools.media import open_clip

    clip = open_clip(state["media"], state.get("audio"), ctx.settings.media)
    seen = [f.index for f in clip.frames if len(toolset.grounder.ground(f, [name]))]
    tags = ", ".join(
        f"{label} {score:.2f}"
        for s in result.get("trace", [])
        if s.get("event") == "audio_tags" and s.get("frame") is None
        for label, score in s["data"].get("tags", [])
    )[:200]
    if seen:
        return f"A {obj} is visible in {_frames_text(seen)}, but nothing in the audio points to it (the audio: {tags})."
    return f"I see no {obj} in the frames, and nothing in the audio points to one (the audio: {tags})."


def _llm_explain(question: str, result: dict, ctx: ChatContext) -> str | None:
    from langchain_core.messages import HumanMessage, SystemMessage

    from avs_agent.agent.llm import make_chat_model
    from avs_agent.agent.prompts import load_prompt

    frames = "\n".join(
        f"frame {fr['index']}: {fr['time_s']} s, {', '.join(fr['labels']) or '-'}, {fr['mask_area']:.3f}"
        for fr in result["frames"]
    )
    trace = "\n".join(f"{s['node']}[{s.get('frame')}]: {s['message']}" for s in result.get("trace", [])[:60])
    prompt = load_prompt("explain").render(
        answer=result["answer"], frames=frames, trace=trace, question=question
    )
    try:
        msg = make_chat_model(ctx.settings.llm).invoke(
            [SystemMessage(load_prompt("system").text), HumanMessage(prompt)]
        )
    except UserError:
        raise
    except Exception:
        return None
    text = str(msg.content).strip()
    return text or None


_QUESTION = re.compile(
    r"\?\s*$|^\s*(?:but\s+|and\s+|so\s+)?(?:why|what|which|when|where|who|how|is|are|was|does|do|did|can|could|"
    r"would|should|explain|tell)\b",
    re.I,
)


def is_question(text: str) -> bool:
    """Whether a message asks something (a follow-up) rather than answers: it ends with '?' or opens
    with a question word ("why not the person?", "which seconds", "is it 2?")."""
    return bool(_QUESTION.search(text.strip()))


def answer_while_asking(text: str, pending: dict[str, Any]) -> str:
    """A follow-up asked while a close call waits for the person: answered from the evidence the paused
    run showed (each object's frames and audio evidence), then the question asked again."""
    first, second = pending["options"]["1"][0], pending["options"]["2"][0]
    evidence = pending.get("evidence") or {}

    def audio(ph: str) -> str:
        return f"{evidence[ph]['audio']:.2f}" if ph in evidence else "?"

    scores = f"audio evidence: {first} {audio(first)}, {second} {audio(second)}"
    again = f" Which one is making the sound: 1 = {first}, 2 = {second}, or both?"
    intent, obj = classify(text, True)
    if intent == "when":
        where = "; ".join(
            f"the {ph} is visible in {_frames_text(evidence[ph]['frames'])}"
            for ph in (first, second)
            if evidence.get(ph, {}).get("frames")
        )
        return (
            "I have not decided yet which one makes the sound, so I cannot place it in time"
            + (f" ({where})" if where else "")
            + "."
            + again
        )
    named = [o for o in split_objects(obj or "") if o in (first, second)] if intent == "why_not" else []
    if named:
        return (
            f"I have not ruled out the {named[0]}: both are visible and the sound fits them almost "
            f"equally ({scores}), too close to call, so I am asking you." + again
        )
    if intent == "why_not" and obj:
        return (
            f"The {obj} is not one of the two I am unsure about; it is between the {first} and the {second}."
            + again
        )
    return (
        f"Two visible objects fit the sound almost equally ({scores}), so I am asking rather than guessing."
        + again
    )


def _build_chat_graph(checkpointer):
    builder = StateGraph(ChatState, context_schema=ChatContext)
    builder.add_node("respond", respond)
    builder.add_edge(START, "respond")
    builder.add_edge("respond", END)
    return builder.compile(checkpointer=checkpointer, name="avs-agent-chat")


def _checkpointer(path: str):
    from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
    from langgraph.checkpoint.sqlite import SqliteSaver

    file = Path(path).expanduser()
    file.parent.mkdir(parents=True, exist_ok=True)
    from avs_agent.agent.state import CHECKPOINT_TYPES

    serde = JsonPlusSerializer(allowed_msgpack_modules=CHECKPOINT_TYPES)
    return SqliteSaver(sqlite3.connect(str(file), check_same_thread=False), serde=serde)


class Conversation:
    """One chat thread. ``ask`` returns a ``Reply``; the thread survives restarts (resume by id)."""

    def __init__(self, settings: Settings, thread_id: str | None = None, out_root: Path | None = None):
        self.settings = settings
        self.thread_id = thread_id or uuid.uuid4().hex[:12]
        self.out_root = Path(out_root or Path(settings.chat.checkpoint_path).expanduser().parent / "threads")
        self._saver = _checkpointer(settings.chat.checkpoint_path)
        self._graph = _build_chat_graph(self._saver)
        self._config = {"configurable": {"thread_id": self.thread_id}}

    @property
    def state(self) -> dict[str, Any]:
        return self._graph.get_state(self._config).values or {}

    @property
    def media(self) -> str | None:
        return self.state.get("media")

    def open(self, media: str | Path, audio: str | Path | None = None) -> None:
        from avs_agent.tools.media import open_clip

        open_clip(media, audio, self.settings.media)  # validates now: one clear error
        self._graph.update_state(
            self._config,
            {
                "media": str(media),
                "audio": str(audio) if audio else None,
                "result": None,
                "turns": [{"role": "system", "text": f"opened {media}"}],
            },
            as_node="respond",
        )

    @property
    def pending(self) -> dict[str, Any] | None:
        """The question the agent is waiting on (a close call, ``chat.ask_person``), or None."""
        interrupts = self._graph.get_state(self._config).interrupts
        return interrupts[0].value if interrupts else None

    def ask(self, text: str, progress: Callable[[Progress], None] | None = None) -> Reply:
        """Answer one message. While the agent waits on a close call, a question ("why not the
        person?", "which seconds?") is answered from the paused run's evidence and the close call stays
        pending (asked again); any other message is the person's answer: the paused run resumes with it
        (``Command(resume=...)``) from the checkpoint, without redoing what it had done. An answer that
        names neither object lets the rules decide."""
        from langgraph.types import Command

        ctx = ChatContext(self.settings, self.out_root, self.thread_id, progress or (lambda e: None))
        pending = self.pending
        if pending is not None and is_question(text):
            return self._question(pending, answer_while_asking(text, pending))
        if pending is not None:
            inputs: Any = Command(resume=text)
        else:
            inputs = {"turns": [{"role": "user", "text": text}]}
        # durability "exit": the agent's run inside is checkpointed when it pauses or ends, not after
        # every node (its state holds the frames and masks)
        state = self._graph.invoke(inputs, self._config, context=ctx, durability="exit")
        if state.get("__interrupt__"):
            return self._question(state["__interrupt__"][0].value)
        return Reply(**state["reply"])

    def _question(self, value: dict[str, Any], text: str | None = None) -> Reply:
        """The agent's question as a reply: its text (or ``text``, a follow-up's answer that asks again)
        and the frame with the numbered boxes (a JPEG)."""
        import base64

        folder = self.out_root / self.thread_id
        folder.mkdir(parents=True, exist_ok=True)
        image = folder / f"question_frame{value['frame'] + 1}.jpg"
        if not image.is_file():
            image.write_bytes(base64.b64decode(value["image"].split(",", 1)[1]))
        return Reply(text=text or value["question"], overlays=[str(image)], kind="question")

    def trace(self) -> list[TraceStep]:
        """The decisions of the last analysis shown: a re-segmentation's ("segment the car instead")
        when it came after the first analysis."""
        result = self.state.get("result") or {}
        record = result.get("resegmented") or result
        return [TraceStep(**s) for s in record.get("trace", [])]

    def turns(self) -> list[dict]:
        return list(self.state.get("turns", []))
