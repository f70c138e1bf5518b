"""Run the agent on one clip: the entry point the CLI, the evals and the chat share."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from avs_agent.agent.graph import graph
from avs_agent.agent.nodes import RunContext
from avs_agent.agent.settings import Settings
from avs_agent.agent.state import DEFAULT_QUESTION
from avs_agent.tools.types import Answer, Clip, Progress
from avs_agent.tools.wiring import Toolset

STEP_CHARS = 120
"""A trace step shown as progress is cut to this length (the evidence rows are long)."""


def make_context(
    settings: Settings, toolset: Toolset | None = None, segment: list[str] | None = None
) -> RunContext:
    """The run context of in-process callers (RunContext builds the toolset and reasoner it is not
    given); ``segment``: objects the person asked to segment."""
    return RunContext(settings=settings, toolset=toolset, segment=list(segment or []))


def _run(inputs: Any, context: RunContext, progress: Callable[[Progress], None] | None) -> dict:
    """Run the graph through LangGraph's streaming: the nodes' progress events (``custom``) and each
    node's new trace steps (``updates``) reach ``progress`` as ``Progress`` events as they happen;
    returns the final state (``values``: also right when a paused run resumed from its checkpoint and
    ran only the nodes after the pause)."""
    final: dict = {}
    for mode, chunk in graph.stream(inputs, context=context, stream_mode=["updates", "custom", "values"]):
        if mode == "values":
            final = chunk
        elif mode == "custom":
            if progress and isinstance(chunk, dict) and "progress" in chunk:
                progress(Progress.model_validate(chunk["progress"]))
        elif progress:
            for node, update in (chunk or {}).items():
                if not update or node == "__interrupt__":  # a pause (confirm): the caller's run holds it
                    continue
                for step in update.get("trace", []):
                    progress(Progress.of_step(step, STEP_CHARS))
    return final


def _asking(settings: Settings, ask_person: bool) -> Settings:
    """``settings`` with ``agent.ask_person`` as the caller allows it (only the chat asks)."""
    if settings.agent.ask_person == ask_person:
        return settings
    return settings.model_copy(update={"agent": settings.agent.model_copy(update={"ask_person": ask_person})})


def run_clip(
    clip: Clip,
    settings: Settings,
    toolset: Toolset | None = None,
    question: str = DEFAULT_QUESTION,
    progress: Callable[[Progress], None] | None = None,
) -> Answer:
    """Answer ``question`` about a loaded clip (never pauses to ask the person)."""
    state = _run(
        {"question": question, "clip": clip, "trace": []},
        make_context(_asking(settings, False), toolset),
        progress,
    )
    return state["answer"]


def run_state(clip: Clip, settings: Settings, toolset: Toolset | None = None) -> tuple[dict, RunContext]:
    """The graph's final state on a loaded clip and the run's context (never pauses): what
    ``evals.crossval`` keeps of each clip (the perception, and the masks its decisions must
    reproduce)."""
    context = make_context(_asking(settings, False), toolset)
    return _run({"question": DEFAULT_QUESTION, "clip": clip, "trace": []}, context, None), context


def run_media(
    media: str | Path,
    settings: Settings,
    audio: str | Path | None = None,
    question: str = DEFAULT_QUESTION,
    toolset: Toolset | None = None,
    progress: Callable[[Progress], None] | None = None,
    segment: list[str] | None = None,
    ask_person: bool = False,
) -> tuple[Answer, Clip]:
    """Load media and answer; returns the answer and the loaded clip (for overlays). ``segment``
    replaces the proposal with objects the person named ("segment the car instead"). With
    ``ask_person`` (the chat, under its checkpointer) a close call pauses the graph with a LangGraph
    interrupt, which reaches the caller as ``langgraph.errors.GraphInterrupt``; otherwise it never asks."""
    settings = _asking(settings, ask_person)
    state = _run(
        {
            "question": question,
            "media": str(media),
            "audio_path": str(audio) if audio else None,
            "trace": [],
        },
        make_context(settings, toolset, segment),
        progress,
    )
    return state["answer"], state["clip"]
