"""The evidence in words, for the trace and the LLM prompts."""

from __future__ import annotations

from typing import TYPE_CHECKING

from avs_agent.agent.decision.policy import CLIP_VERDICT

if TYPE_CHECKING:
    from avs_agent.agent.decision.evidence import FrameEvidence


def describe(row: FrameEvidence) -> str:
    """One frame's table as text (the trace and the LLM prompt)."""
    parts = [
        f"{c.phrase} {c.score:.3f} [rank {c.rank:.3f}; audio {c.audio:.2f}: {', '.join(c.sources)}; salience {c.salience:.3f}, support {c.support:.2f}]"
        for c in row.candidates
    ]
    none = (
        f"none {row.none_score:.3f}"
        + (f" [offscreen: {row.offscreen_from} {row.offscreen:.2f}]" if row.offscreen_from else "")
        + (f" (clip: {CLIP_VERDICT[row.clip]})" if row.clip else "")
    )
    return "; ".join([*parts, none]) if parts else none
