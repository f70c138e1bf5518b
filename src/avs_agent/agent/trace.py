"""The trace's codes. Every step the agent takes says what happened (``EVENTS``) and, where there is
one, why (``REASONS``), with the frame and object it is about, as fields of ``tools.types.TraceStep``;
its ``message`` says the same in words for a person. Programs (the chat, the page's progress bar, the
LLM's retry prompt, the tests) read the codes, never the words."""

from __future__ import annotations

import time
from typing import Any

from avs_agent.tools.types import TraceStep

EVENTS: dict[str, str] = {
    # load, perceive, propose
    "loaded": "the media were loaded: frames, frame rate, seconds of audio",
    "audio_tags": "the audio's tags: of the clip (no frame) or of one frame's second",
    "audio_captions": "the audio's captions and their noun phrases (full profile)",
    "image_caption": "a frame's caption and its noun phrases (full profile)",
    "proposed": "the objects the audio names, and those the captions name",
    # verify, confirm
    "grounded": "what the grounder found in a frame",
    "renamed": "an object the detector named otherwise in one frame is found under the name it has in the clip's other frames",
    "evidence": "a frame's row of the evidence table: its candidates, scored, and 'none'",
    "requested": "the person asked for these objects: they are segmented where found",
    "asked_person": "the person was asked which of two close candidates makes the sound",
    # segment, check, retry
    "segmented": "a frame's chosen objects were segmented",
    "check_passed": "a frame's masks passed the check",
    "check_failed": "a frame's masks failed the check (the reason says why)",
    "retry": "a frame whose mask failed tries its next candidate",
    "gave_up": "a frame whose mask failed has nothing more to try (the reason says why)",
    # propagate, answer
    "followed": "a source was followed through the clip from the frame where it is surest (and the frames that answered their own pick instead: the track lost there, or on an instance they did not keep)",
    "one_name": "two names on the same pixels are answered as one object under one name",
    "held": "a frame that accepted nothing holds the source followed through the clip",
    "answered": "the answer",
    # an LLM reasoner
    "llm_chose": "the LLM chose the source (the clip's, or per shown frame with vision)",
    "llm_retry": "the LLM chose what failing frames try next",
    "llm_failed": "an LLM call failed, so the rules decided (the reason says why)",
    "llm_skipped": "no LLM call: its only possible answer was 'none'",
    "llm_method": "how the server takes structured output, found by trying (llm.structured_method: auto)",
}
"""Event code -> what it means."""

REASONS: dict[str, str] = {
    "truncated": "only the first media.max_seconds of the media were analysed",
    "too_small": "the mask covers less than agent.min_mask_area of the frame",
    "whole_frame": "the mask covers more than agent.max_mask_area of the frame",
    "crop_below_none": "the crop check lowered the candidate's score below 'none'",
    "no_attempts_left": "agent.max_attempts attempts were made",
    "no_candidate_left": "every candidate of the frame was tried",
    "reply_named_neither": "the person's reply named neither candidate, so the evidence decided",
    "no_candidate": "no frame has a visible candidate (or a candidate left to try)",
    "refused": "the server refused this structured-output method",
    "budget_spent": "the clip's LLM time budget (llm.clip_budget_s) is spent",
    "timeout": "the LLM call timed out",
    "call_failed": "the LLM call failed (HTTP status after retries, network)",
    "unusable": "the LLM's answer did not parse, or named what the schema does not offer, twice",
}
"""Reason code -> what it means."""


def step(
    node: str,
    event: str,
    message: str,
    *,
    reason: str = "",
    frame: int | None = None,
    object: str | None = None,  # noqa: A002 (the trace's field)
    t0: float | None = None,
    **data: Any,
) -> TraceStep:
    """A trace step; ``t0``: when its work began (``time.perf_counter``), for its seconds. An unknown
    code is a programming error (the codes are a closed set, listed above)."""
    if event not in EVENTS:
        raise ValueError(f"unknown trace event {event!r}")
    if reason and reason not in REASONS:
        raise ValueError(f"unknown trace reason {reason!r}")
    return TraceStep(
        node=node,
        event=event,
        reason=reason,
        frame=frame,
        object=object,
        message=message,
        data=data,
        seconds=round(time.perf_counter() - t0, 4) if t0 is not None else 0.0,
    )
