"""The agent's state: what each node reads and writes. Fields are filled in graph order."""

from __future__ import annotations

import operator
from typing import Annotated, Any, TypedDict

from pydantic import BaseModel, Field

from avs_agent.agent.decision import AudioTerms, FrameEvidence
from avs_agent.tools.types import Answer, AudioTags, Captions, Clip, Segments, TraceStep

DEFAULT_QUESTION = "What is making the sound?"
"""What ask, the chat, the page and the evals ask when the person asks nothing else."""


class Choice(BaseModel):
    """What was segmented on one frame and how it went."""

    phrases: list[str] = Field(default_factory=list)
    attempt: int = 0
    tried: list[str] = Field(default_factory=list)
    status: str = "pending"  # pending | ok | retry | failed | none
    reason: str = ""


class AgentState(TypedDict, total=False):
    question: str
    """What the person asked."""
    media: str
    """Path of the media (when the graph loads it itself)."""
    audio_path: str | None
    clip: Clip
    """Frames at 1 fps and audio cut per frame."""
    frame_tags: list[AudioTags]
    """Audio tags of each frame's second."""
    clip_tags: AudioTags
    """Audio tags of the whole clip."""
    audio_captions: list[Captions]
    """Audio captions of the whole clip (one per prompt), when the profile has a captioner."""
    image_captions: list[Captions]
    """Caption and noun phrases per frame, when the profile has a captioner."""
    frame_terms: list[dict[str, AudioTerms]]
    """Per frame, phrase -> its audio evidence terms from that second (agent/decision/)."""
    clip_terms: dict[str, AudioTerms]
    """phrase -> its audio evidence terms from the whole clip."""
    phrase_origin: dict[str, str]
    """Phrases that came from a caption: phrase -> 'caption' (image) or 'audio-caption'."""
    caption_nouns: list[list[str]]
    """Per frame, the image caption's noun phrases (grounder words), when the profile has a captioner."""
    groundings: list[dict[str, Segments]]
    """Per frame, phrase -> its instances as grounded at the detection floor."""
    table: list[FrameEvidence]
    """The evidence table: per frame, the visible candidates scored and the none option."""
    close_call: list[str] | None
    """Two visible candidates the person is asked to choose between (``agent.ask_person``), or None."""
    choices: list[Choice]
    """Per frame, what is segmented now and whether it passed the check."""
    masks: list[Any]
    """Per frame, (H, W) bool mask of the chosen sources."""
    tracked: list[dict[str, Segments]]
    """Per frame, each accepted source's instances once followed through the clip (propagate)."""
    trace: Annotated[list[TraceStep], operator.add]
    """Every decision, appended by each node."""
    llm_reasoning: str
    """The LLM's one-sentence reading of the clip, from its proposal (empty when the rules decided)."""
    llm_stats: Annotated[list[dict], operator.add]
    """One entry per LLM call: node, tokens, seconds."""
    answer: Answer


CHECKPOINT_TYPES = [
    ("avs_agent.tools.types", "Clip"),
    ("avs_agent.tools.types", "Frame"),
    ("avs_agent.tools.types", "AudioSegment"),
    ("avs_agent.tools.types", "AudioTags"),
    ("avs_agent.tools.types", "Captions"),
    ("avs_agent.tools.types", "Segments"),
    ("avs_agent.tools.types", "TraceStep"),
    ("avs_agent.tools.types", "Answer"),
    ("avs_agent.tools.types", "FrameResult"),
    ("avs_agent.agent.decision.evidence", "AudioTerms"),
    ("avs_agent.agent.decision.evidence", "Candidate"),
    ("avs_agent.agent.decision.evidence", "FrameEvidence"),
    ("avs_agent.agent.state", "Choice"),
]
"""The types of the state's values, for a checkpointer's msgpack allowlist (a run paused on a close
call is checkpointed with its clip, groundings and table)."""
