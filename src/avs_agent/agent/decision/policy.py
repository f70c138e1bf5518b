"""The choices: a frame's sources and the next to try, the close call, the mask check, the crop check's verdict."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from avs_agent.agent.decision.evidence import Candidate, FrameEvidence, clip_scores, rank, score
from avs_agent.agent.decision.instances import kept, mask_of, same_object
from avs_agent.agent.settings import AgentSettings, DecisionSettings
from avs_agent.tools.types import Segments


def choose(row: FrameEvidence, p: DecisionSettings, tried: list[str] | None = None) -> list[Candidate]:
    """The candidates to segment: the best one above none not tried yet, and on the first attempt
    (nothing tried) a close second source."""
    ranked = [c for c in row.above_none if c.phrase not in (tried or [])]
    if not ranked:
        return []
    first = ranked[0]
    out = [first]
    if not tried:
        for other in ranked[1:]:
            same_sound = bool(other.labels) and set(other.labels) <= set(first.labels)
            if other.rank >= p.second_source_ratio * first.rank and not same_sound:
                out.append(other)
                break
    return out


class CloseCall(NamedTuple):
    """Two visible candidates the evidence can hardly tell apart, best first."""

    first: str
    second: str


class MaskCheck(NamedTuple):
    """Whether a mask is a plausible object, why in words, and the reason code."""

    passed: bool
    why: str
    reason: str
    """'ok', 'too_small' or 'whole_frame'."""


class CropVerdict(NamedTuple):
    """The row rescored by the crop check, whether the mask passes, and why."""

    row: FrameEvidence
    passed: bool
    why: str


def close_call(
    table: list[FrameEvidence], found: list[dict[str, Segments]], p: DecisionSettings, config: AgentSettings
) -> CloseCall | None:
    """Two visible candidates the evidence can hardly tell apart, best first, or None. A phrase's clip
    score is its mean score over the frames (0 where it is not above none); the second is a close
    call when its clip score is within ``config.ask_margin`` (a share) of the first's. The person is
    asked to choose (``agent.ask_person``) where the rules would take the stronger one or the union.
    A candidate that is the first one under another name (its kept instances and the first's are
    ``same_object`` in some frame of ``found``: a car the detector also calls a truck) is no
    alternative to it and is passed over: one object is never offered under two names."""
    ranked = sorted(clip_scores(table, above_none=True, key="rank").items(), key=lambda kv: -kv[1])
    for phrase, value in ranked[1:]:
        if value < (1.0 - config.ask_margin) * ranked[0][1]:
            return None
        first = ranked[0][0]
        if not any(
            len(pair := kept(f, [first, phrase], p)) == 2 and same_object(pair[first], pair[phrase], config)
            for f in found
        ):
            return CloseCall(first, phrase)
    return None


def check_mask(mask: np.ndarray, config: AgentSettings) -> MaskCheck:
    """Is the mask a plausible object (not empty, not tiny, not the whole frame)? Returns (passed, why
    in words, the reason code: 'ok', 'too_small' or 'whole_frame')."""
    share = float(mask.mean()) if mask.size else 0.0
    if share < config.min_mask_area:
        return MaskCheck(False, f"mask too small ({share:.4f} of the frame)", "too_small")
    if share > config.max_mask_area:
        return MaskCheck(False, f"mask covers nearly the whole frame ({share:.2f})", "whole_frame")
    return MaskCheck(True, f"mask covers {share:.3f} of the frame", "ok")


CROP_FOIL = "background"
"""A text the crop check weighs every label against, so one label alone still gets a real verdict."""


def with_candidate(row: FrameEvidence, cand: Candidate) -> FrameEvidence:
    """The row with one candidate replaced (by phrase) and the order by rank restored."""
    cands = sorted([cand if c.phrase == cand.phrase else c for c in row.candidates], key=lambda c: -c.rank)
    return FrameEvidence(cands, row.offscreen, row.offscreen_from, row.none_score, row.silent, row.clip)


def rescore_with_crop(c: Candidate, crop: float, p: DecisionSettings) -> Candidate:
    """The candidate with the crop check's verdict added as evidence."""
    out = Candidate(**{**c.__dict__, "sources": [*c.sources, f"crop-check {crop:.2f}"], "crop": crop})
    out.score = round(score(out, p), 5)
    out.rank = round(rank(out, p), 5)
    return out


def crop_texts(row: FrameEvidence, phrase: str) -> list[str]:
    """What the crop check weighs a mask of ``phrase`` against: its label first, the frame's other
    candidates, and the foil."""
    return list(dict.fromkeys([phrase, *(c.phrase for c in row.candidates), CROP_FOIL]))


def crop_verdict(row: FrameEvidence, phrase: str, crop: float, p: DecisionSettings) -> CropVerdict:
    """The crop check's probability that the mask shows ``phrase`` enters its candidate's score; the
    mask passes unless the check lowered the candidate below the frame's 'none'. Returns (row
    rescored, passed, why)."""
    cand = next(c for c in row.candidates if c.phrase == phrase)
    row = with_candidate(row, rescore_with_crop(cand, crop, p))
    new = next(c for c in row.candidates if c.phrase == phrase)
    ok = new.score > row.none_score or new.score >= cand.score
    why = f"crop check {crop:.2f} -> score {new.score:.3f}" + (
        "" if ok else f" below none {row.none_score:.3f}"
    )
    return CropVerdict(row, ok, why)


CLIP_VERDICT = {
    "visible": "a visible source beats none over the clip",
    "offscreen": "none beats every visible candidate over the clip",
}


def first_choice(row: FrameEvidence, p: DecisionSettings) -> list[str]:
    """What a frame segments first (the rules reasoner's ``decide``)."""
    return [c.phrase for c in choose(row, p)]


def next_choice(row: FrameEvidence, p: DecisionSettings, tried: list[str]) -> list[str]:
    """What a frame segments after ``tried`` failed the check (the rules reasoner's ``retry``)."""
    return [c.phrase for c in choose(row, p, tried)]


CropFn = Callable[[np.ndarray, list[str]], float]
"""The crop check of one frame: (mask (H, W) bool, texts, its label first) -> probability of the label."""


@dataclass
class FrameCheck:
    passed: list[str]
    """The phrases whose masks passed."""
    reasons: list[str]
    """Per phrase checked, 'phrase: why'."""
    row: FrameEvidence
    """The frame's row, rescored where the crop check added its verdict."""
    codes: list[str] = field(default_factory=list)
    """Per phrase checked, the reason code: 'ok', 'too_small', 'whole_frame' (``check_mask``) or
    'crop_below_none' (the crop check lowered it below 'none')."""


def check_frame(
    row: FrameEvidence,
    found: dict[str, Segments],
    phrases: list[str],
    p: DecisionSettings,
    config: AgentSettings,
    shape: tuple[int, int],
    crop: CropFn | None = None,
) -> FrameCheck:
    """Each chosen phrase's mask in one frame: not empty, tiny or the whole frame; with a crop check
    (full profile) its verdict enters the candidate's score and a source that falls below 'none'
    fails."""
    passed, reasons, codes = [], [], []
    for ph in phrases:
        mask = mask_of(found, [ph], p, shape)
        ok, why, code = check_mask(mask, config)
        if ok and crop is not None and any(c.phrase == ph for c in row.candidates):
            row, ok, verdict = crop_verdict(row, ph, crop(mask, crop_texts(row, ph)), p)
            why += f"; {verdict}"
            code = "ok" if ok else "crop_below_none"
        reasons.append(f"{ph}: {why}")
        codes.append(code)
        if ok:
            passed.append(ph)
    return FrameCheck(passed, reasons, row, codes)
