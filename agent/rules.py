"""The deterministic reasoner: the agent's decisions without an LLM (the default, and the fallback).

propose  audio tags of each second (and of the whole clip) -> objects that make such sounds
         (text matcher over the AudioSet ontology onto the vocabulary), with audio evidence
verify   keep the candidates the grounder finds in the frame; rank by audio evidence, and among
         candidates with nearly equal evidence by how salient they are (mask area x score x centrality)
choose   the best visible candidate, plus a second one when its evidence is close (two sources); then
         the sources chosen in most frames are segmented wherever they are visible (frame consistency)
retry    the next visible candidate after a mask that failed the check
explain  one short paragraph from the decisions

Every threshold used here comes from ``AgentSettings`` (agent/settings.py); the few fixed shares of the
rules themselves are the named constants below.
"""

from __future__ import annotations

import numpy as np

from agent.settings import AgentSettings
from agent.state import Candidate, Choice
from tools.types import AudioTags, Segments

EVIDENCE_TIE = 0.1
"""Candidates whose evidence is within this of the best count as equally likely (salience decides)."""
CLIP_WEIGHT = 0.5
"""A frame also inherits this share of the whole clip's evidence (frame consistency: a pause in a
dog's barking does not make the dog silent)."""
INSTANCE_SHARE = 0.5
"""Of a phrase's instances, those at least this share as salient as the most salient one are kept."""


def salience(seg: Segments) -> np.ndarray:
    """Per segment: mask area x detection score x centrality, where centrality is 1 for a box centred in
    the frame, falling linearly to 0 at the corners. A video is framed on what it is about (the centre
    bias of saliency and video-segmentation data): of two dogs of one size, the one in the middle."""
    h, w = seg.shape
    cx = (seg.xyxy[:, 0] + seg.xyxy[:, 2]) / (2 * w) - 0.5
    cy = (seg.xyxy[:, 1] + seg.xyxy[:, 3]) / (2 * h) - 0.5
    centrality = np.clip(1.0 - np.sqrt(cx**2 + cy**2) / np.sqrt(0.5), 0.0, 1.0)
    return seg.area * seg.confidence * centrality


class RulesReasoner:
    name = "rules"

    def __init__(self, config: AgentSettings):
        self.config = config

    # ------------------------------------------------------------------ propose
    def source_labels(self, frame_tags: list[AudioTags], clip_tags: AudioTags) -> list[str]:
        """The audio labels worth explaining: top tags of the clip and of each second."""
        c = self.config
        labels: list[str] = []
        for tags in [clip_tags, *frame_tags]:
            for label, _ in tags.top(c.max_tags, c.min_tag_score):
                if label not in labels:
                    labels.append(label)
        return labels

    def propose(
        self,
        phrases: list[str],
        because: dict[str, list[str]],
        evidence: np.ndarray,
        silent: list[bool],
    ) -> list[list[Candidate]]:
        """evidence: (T + 1, len(phrases)) audio-text scores per second, last row the whole clip."""
        c = self.config
        out = []
        strongest = (
            float(np.maximum(evidence[:-1].max(initial=0.0), evidence[-1].max(initial=0.0)))
            if evidence.size
            else 0.0
        )
        floor = max(c.min_evidence, c.relative_evidence * strongest)
        for i, is_silent in enumerate(silent):
            if is_silent:
                out.append([])
                continue
            score = np.maximum(evidence[i], CLIP_WEIGHT * evidence[-1])
            order = np.argsort(-score)
            out.append(
                [
                    Candidate(
                        phrase=phrases[j],
                        evidence=round(float(score[j]), 4),
                        because=because.get(phrases[j], []),
                    )
                    for j in order
                    if score[j] >= floor
                ][: c.max_candidates]
            )
        return out

    # ------------------------------------------------------------------ verify
    def verify(self, candidates: list[Candidate], found: dict[str, Segments]) -> list[Candidate]:
        """The candidates seen in the frame, best first."""
        visible = [cand for cand in candidates if len(found.get(cand.phrase, ())) > 0]
        if not visible:
            return []
        best = max(cand.evidence for cand in visible)

        def key(cand: Candidate) -> tuple[int, float, float]:
            seg = found[cand.phrase]
            salient = float(salience(seg).max()) / max(seg.shape[0] * seg.shape[1], 1)
            tier = 0 if cand.evidence >= best - EVIDENCE_TIE else 1
            return (tier, -salient if tier == 0 else -cand.evidence, -cand.evidence)

        return sorted(visible, key=key)

    def consistent_phrases(self, visible: list[list[Candidate]]) -> list[str]:
        """Phrases visible in at least half of the frames (frame consistency)."""
        counts: dict[str, int] = {}
        for cands in visible:
            for cand in cands:
                counts[cand.phrase] = counts.get(cand.phrase, 0) + 1
        return [p for p, n in counts.items() if n >= max(1, len(visible) / 2)]

    @staticmethod
    def clip_sources(chosen: list[list[str]]) -> list[str]:
        """Phrases chosen in more than half of the frames: the clip's sound sources. A frame where one of
        them is visible segments those instead of its own pick (frame consistency: one looped engine
        whose seconds the tagger reads as 'Engine', then 'Vehicle', is one source, not two in turn)."""
        counts: dict[str, int] = {}
        for phrases in chosen:
            for p in dict.fromkeys(phrases):
                counts[p] = counts.get(p, 0) + 1
        return [p for p, n in counts.items() if n > len(chosen) / 2]

    # ------------------------------------------------------------------ choose / segment
    def choose(self, visible: list[Candidate], attempt: int) -> list[str]:
        """Phrases to segment on this attempt: the attempt-th visible candidate, and on the first attempt
        a second source whose evidence is close to the first's."""
        if attempt >= len(visible):
            return []
        first = visible[attempt]
        phrases = [first.phrase]
        if attempt == 0:
            # a second object named only by the first's labels ('Engine' -> car, motorcycle) is the same
            # sound read two ways, not a second source
            for other in visible[1:]:
                if (
                    other.evidence >= self.config.second_source_ratio * first.evidence
                    and other.evidence >= 0.3
                    and not (other.because and set(other.because) <= set(first.because))
                ):
                    phrases.append(other.phrase)
                    break
        return phrases

    @staticmethod
    def instances(seg: Segments) -> Segments:
        """Of several boxes for one phrase, keep the most salient and those at least half as salient
        (a crowd behind a dancer is not the dancer)."""
        if len(seg) <= 1:
            return seg
        weight = salience(seg)
        top = int(np.argmax(weight))
        keep = np.union1d(np.flatnonzero(weight >= INSTANCE_SHARE * weight[top]), [top])
        return seg[keep]

    # ------------------------------------------------------------------ check / retry
    def check(self, mask: np.ndarray, seg: Segments, relaxed: bool = False) -> tuple[bool, str]:
        """Is the mask a plausible object? ``relaxed``: found by the frame-consistency look, which lowered
        the detection threshold by ``consistency_threshold``; the score and size floors are lowered by as
        much (the object was seen in other frames, so a faint or small view of it is still evidence)."""
        c = self.config
        scale = c.consistency_threshold if relaxed else 1.0
        share = float(mask.mean()) if mask.size else 0.0
        if share < c.min_mask_area * scale:
            return False, f"mask too small ({share:.4f} of the frame)"
        if share > c.max_mask_area:
            return False, f"mask covers nearly the whole frame ({share:.2f})"
        if len(seg) and float(seg.confidence.max()) < c.min_segment_score * scale:
            return False, f"low detection score ({float(seg.confidence.max()):.2f})"
        return True, f"mask covers {share:.3f} of the frame"

    def retry(self, choice: Choice, visible: list[Candidate]) -> Choice:
        nxt = choice.attempt + 1
        if nxt >= self.config.max_attempts or nxt >= len(visible):
            return Choice(
                phrases=[],
                attempt=choice.attempt,
                tried=[*choice.tried, *choice.phrases],
                status="failed",
                reason=f"{choice.reason}; no attempts left",
            )
        return Choice(
            phrases=[visible[nxt].phrase],
            attempt=nxt,
            tried=[*choice.tried, *choice.phrases],
            status="pending",
            reason=f"retry with '{visible[nxt].phrase}'",
            relaxed=choice.relaxed,
        )

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
                else "no object that makes such sounds is recognised in the frames"
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
                else "in frames " + ", ".join(str(f + 1) for f in frames)
            )
            parts.append(f"the {lab} ({where})")
        text = f"{' and '.join(parts).capitalize()} {'is' if len(labels) == 1 else 'are'} making the sound. "
        text += f"The audio sounds like {heard}"
        if rejected:
            text += f"; also considered but not visible: {', '.join(rejected)}"
        return text + "."
