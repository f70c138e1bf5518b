"""Run the agent on one clip: the entry point the CLI, the evals and the chat share."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from agent.graph import graph
from agent.llm import make_reasoner
from agent.nodes import RunContext
from agent.settings import Settings
from agent.state import DEFAULT_QUESTION
from tools.types import Answer, Clip
from tools.wiring import Toolset, get_toolset


def make_context(
    settings: Settings, toolset: Toolset | None = None, progress: Callable[[str], None] | None = None
) -> RunContext:
    return RunContext(
        settings=settings,
        toolset=toolset or get_toolset(settings.tool_config()),
        reasoner=make_reasoner(settings.agent, settings.llm),
        progress=progress or (lambda msg: None),
    )


def run_clip(
    clip: Clip,
    settings: Settings,
    toolset: Toolset | None = None,
    question: str = DEFAULT_QUESTION,
    progress: Callable[[str], None] | None = None,
) -> Answer:
    """Answer ``question`` about a loaded clip."""
    state = graph.invoke(
        {"question": question, "clip": clip, "trace": []}, context=make_context(settings, toolset, progress)
    )
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
    state = graph.invoke(
        {
            "question": question,
            "media": str(media),
            "audio_path": str(audio) if audio else None,
            "trace": [],
            "force_phrases": force_phrases or [],
        },
        context=make_context(settings, toolset, progress),
    )
    return state["answer"], state["clip"]
