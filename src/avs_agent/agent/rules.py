"""The reasoners: who decides from the evidence table. One protocol, three implementations.

``RulesReasoner`` (the default, and every LLM's fallback) applies the decision model of
agent/decision/ as it is: per frame the best candidate above 'none' (and a close second source), on a
retry the best one not tried yet. ``agent.llm.LLMReasoner`` reads the same table as text and answers with structured
output; whatever it cannot answer falls back to the rules. ``PersonReasoner`` segments what the person
asked for ("segment the car instead") and leaves the rest to the reasoner it wraps. The nodes call
``requested``, ``decide``, ``close_call``, ``retry`` and ``explain`` and never ask which one runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from avs_agent.agent import decision as D
from avs_agent.agent import trace as T
from avs_agent.agent.settings import AgentSettings
from avs_agent.agent.state import Choice
from avs_agent.tools.types import Frame, Segments, TraceStep


@dataclass
class Decision:
    """A reasoner's answer for the frames it was asked about."""

    phrases: list[list[str]]
    """Per frame (all frames for ``decide``; failing ones filled for ``retry``), what to segment."""
    steps: list[TraceStep] = field(default_factory=list)
    stats: list[dict] = field(default_factory=list)
    """One entry per LLM call: node, tokens, seconds, ok."""
    reasoning: str = ""
    """An LLM's one-sentence reading of the clip (empty when the rules decided)."""


@dataclass
class Evidence:
    """What a reasoner may look at besides the table (the rules need nothing else)."""

    text: dict[str, str] = field(default_factory=dict)
    """The evidence as prompt text, by template placeholder (LLMs)."""
    frames: list[Frame] = field(default_factory=list)
    """The analysed frames (a vision LLM sees them tiled, agent/vision.py)."""
    groundings: list[dict[str, Segments]] = field(default_factory=list)
    """Per frame, phrase -> its grounded instances (drawn as numbered boxes for a vision LLM)."""
    rows: list[str] = field(default_factory=list)
    """Per frame, its row of the evidence table as a prompt line (``text['evidence']`` joins them;
    a retry shows the failing frames' rows)."""


class Reasoner(Protocol):
    name: str
    requested: tuple[str, ...]
    """Phrases this reasoner names whatever the evidence says (the person's request): scored and
    grounded with the candidates. Empty for the rules and an LLM."""

    def decide(self, table: list[D.FrameEvidence], data: Evidence) -> Decision:
        """Per frame, the phrases to segment first."""
        ...

    def close_call(
        self, table: list[D.FrameEvidence], found: list[dict[str, Segments]]
    ) -> tuple[str, str] | None:
        """Two visible candidates (two objects in ``found``, the groundings) close enough that the
        person is asked which one it is (``agent.ask_person``), or None."""
        ...

    def retry(
        self, failing: list[int], choices: list[Choice], table: list[D.FrameEvidence], data: Evidence
    ) -> Decision:
        """For each failing frame, what to segment next (an empty list gives up)."""
        ...

    def explain(
        self,
        labels: list[str],
        frames_with: dict[str, list[int]],
        n_frames: int,
        top_tags: list[tuple[str, float]],
        rejected: list[str],
        silent: bool,
        failed: bool,
    ) -> str:
        """The answer for a person: which objects make the sound and where (``labels``, each with the
        frames it was found in), what the audio sounds like (``top_tags``), what was heard but not seen
        (``rejected``), or why the masks are empty (``silent``, every attempt ``failed``)."""
        ...


class RulesReasoner:
    name = "rules"
    requested: tuple[str, ...] = ()

    def __init__(self, config: AgentSettings):
        self.config = config

    def decide(self, table: list[D.FrameEvidence], data: Evidence | None = None) -> Decision:
        p = self.config.decision
        return Decision([[c.phrase for c in D.choose(row, p)] for row in table])

    def close_call(
        self, table: list[D.FrameEvidence], found: list[dict[str, Segments]]
    ) -> tuple[str, str] | None:
        if not self.config.ask_person:
            return None
        return D.close_call(table, found, self.config.decision, self.config)

    def retry(
        self,
        failing: list[int],
        choices: list[Choice],
        table: list[D.FrameEvidence],
        data: Evidence | None = None,
    ) -> Decision:
        out: list[list[str]] = [[] for _ in table]
        for i in failing:
            tried = [*choices[i].tried, *choices[i].phrases]
            out[i] = [c.phrase for c in D.choose(table[i], self.config.decision, tried)]
        return Decision(out)

    # ------------------------------------------------------------------ explain
    @staticmethod
    def explain(
        labels: list[str],
        frames_with: dict[str, list[int]],
        n_frames: int,
        top_tags: list[tuple[str, float]],
        rejected: list[str],
        silent: bool,
        failed: bool,
    ) -> str:
        heard = ", ".join(f"'{lab}' ({score:.2f})" for lab, score in top_tags[:3]) or "nothing distinct"
        if silent:
            return "The audio is silent, so nothing visible is making a sound; the masks are empty."
        if not labels:
            reason = (
                f"the objects that make such sounds ({', '.join(rejected)}) are not visible in the frames"
                if rejected
                else "no visible object explains the sound better than something off screen"
            )
            if failed:
                reason = "every segmentation attempt failed the mask check"
            return f"The audio sounds like {heard}, but {reason}, so the masks are empty."
        parts = []
        for lab in labels:
            frames = frames_with[lab]
            where = (
                "in every frame"
                if len(frames) == n_frames
                else ("in frame " if len(frames) == 1 else "in frames ")
                + ", ".join(str(f + 1) for f in frames)
            )
            parts.append(f"the {lab} ({where})")
        text = f"{' and '.join(parts).capitalize()} {'is' if len(labels) == 1 else 'are'} making the sound. "
        text += f"The audio sounds like {heard}"
        if rejected:
            text += f"; also considered but not visible: {', '.join(rejected)}"
        return text + "."


class PersonReasoner:
    """What the person asked to segment ("segment the car instead"): every frame segments the asked
    objects where they are found, and the person is not asked again; a retry and the explanation are
    the wrapped reasoner's."""

    def __init__(self, requested: list[str], base: Reasoner):
        self.requested = tuple(requested)
        self.base = base
        self.name = base.name

    def decide(self, table: list[D.FrameEvidence], data: Evidence) -> Decision:
        picks = [[ph for ph in self.requested if ph in found] for found in data.groundings]
        step = T.step(
            "verify",
            "requested",
            f"segmenting what the person asked for: {', '.join(self.requested)}",
            object=self.requested[0] if len(self.requested) == 1 else None,
            phrases=list(self.requested),
        )
        return Decision(picks, [step])

    def close_call(self, table: list[D.FrameEvidence], found: list[dict[str, Segments]]) -> None:
        return None

    def retry(
        self, failing: list[int], choices: list[Choice], table: list[D.FrameEvidence], data: Evidence
    ) -> Decision:
        return self.base.retry(failing, choices, table, data)

    def explain(
        self,
        labels: list[str],
        frames_with: dict[str, list[int]],
        n_frames: int,
        top_tags: list[tuple[str, float]],
        rejected: list[str],
        silent: bool,
        failed: bool,
    ) -> str:
        return self.base.explain(labels, frames_with, n_frames, top_tags, rejected, silent, failed)
