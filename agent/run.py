"""Run the agent on one clip: the entry point the CLI, the evals and the chat share."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from agent.graph import graph
from agent.nodes import RunContext
from agent.settings import Settings
from agent.state import DEFAULT_QUESTION
from tools.types import Answer, Clip
from tools.wiring import Toolset

STEP_CHARS = 120
"""A trace step shown as progress is cut to this length (the evidence rows are long)."""


def make_context(settings: Settings, toolset: Toolset | None = None) -> RunContext:
    """The run context of in-process callers (RunContext builds the toolset and reasoner it is not given)."""
    return RunContext(settings=settings, toolset=toolset)


def _run(inputs: dict, context: RunContext, progress: Callable[[str], None] | None) -> dict:
    """Run the graph through LangGraph's streaming: progress events (``custom``) and each node's new
    trace steps (``updates``) reach ``progress`` as they happen; returns the nodes' last updates."""
    last: dict = {}
    for mode, chunk in graph.stream(inputs, context=context, stream_mode=["updates", "custom"]):
        if mode == "custom":
            if progress and isinstance(chunk, dict) and "progress" in chunk:
                progress(str(chunk["progress"]))
            continue
        for node, update in (chunk or {}).items():
            if not update:
                continue
            last.update({k: v for k, v in update.items() if k != "trace"})
            if progress:
                for step in update.get("trace", []):
                    where = f" (frame {step.frame + 1})" if step.frame is not None else ""
                    progress(f"{node}{where}: {step.message}"[:STEP_CHARS])
    return last


def run_clip(
    clip: Clip,
    settings: Settings,
    toolset: Toolset | None = None,
    question: str = DEFAULT_QUESTION,
    progress: Callable[[str], None] | None = None,
) -> Answer:
    """Answer ``question`` about a loaded clip."""
    state = _run({"question": question, "clip": clip, "trace": []}, make_context(settings, toolset), progress)
    return state["answer"]


def run_media(
    media: str | Path,
    settings: Settings,
    audio: str | Path | None = None,
    question: str = DEFAULT_QUESTION,
    toolset: Toolset | None = None,
    progress: Callable[[str], None] | None = None,
    force_phrases: list[str] | None = None,
) -> tuple[Answer, Clip]:
    """Load media and answer; returns the answer and the loaded clip (for overlays). ``force_phrases``
    replaces the proposal with objects the person named ("segment the car instead")."""
    state = _run(
        {
            "question": question,
            "media": str(media),
            "audio_path": str(audio) if audio else None,
            "trace": [],
            "force_phrases": force_phrases or [],
        },
        make_context(settings, toolset),
        progress,
    )
    return state["answer"], state["clip"]
