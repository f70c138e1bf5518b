"""The decision model: one evidence table per clip, one score per candidate, and "none of the visible
objects" as a scored option of its own. The rules reasoner and the LLM reasoner both read this table;
``evals/crossval.py`` fits its parameters (``agent.decision`` in settings) by leave-one-sequence-out
cross-validation.

Per frame t, a candidate is a phrase the grounder found in the frame that has audio evidence. Its
evidence terms, each named in the trace:

    audio     max( tag    : a specific audio tag naming it      s(tag) x strength(tag -> phrase)
                   parent : a generic tag covering it            generic_share x residual(generic tag)
                   clap   : the audio-text scorer (full profile: CLAP; lite has no independent scorer) )
              per second, and the whole clip's lends clip_weight of itself to every second
    detector  its best detection score in the frame (grounded at ``detection_floor``)
    salience  the share of the frame its kept instances cover
    support   its mean detection score over the clip's frames (frame consistency)
    crop      the crop check's probability that its mask shows it (full profile, after segmentation)

    prior(phrase) = w_detector*detector + w_salience*salience + w_support*support + w_crop*(crop - 0.5)
    score(phrase) = audio x exp(prior)                      weighed against 'none'
    rank(phrase)  = audio^rank_audio_power x exp(prior)     weighed against the other visible candidates
    score(none)   = none_bias + none_offscreen x offscreen

Two questions, two weighings of the same terms: whether a visible object makes the sound at all goes
by how strongly the audio names it (``score``); which of the visible objects makes it leans more on
what is seen (``rank``, with ``rank_audio_power`` < 1): a distractor the tagger hears louder (speech over
an engine) does not make a small background person the source over the vehicle filling the frame.

``offscreen`` is the strongest tag of the second whose sources are named and none of them is visible
(a bark over a cat photo). ``residual(generic tag)`` is the generic tag's score minus that of the
strongest specific tag that names something it covers ('Domestic animals, pets' 0.99 over 'Dog' 0.99
lends nothing to the cat; 'Livestock, farm animals, working animals' 0.9 with only 'Air horn' lends
to the sheep in view): a generic label is explained away by the specific one under it.

With ``none_per_clip`` (a design switch), 'none' is weighed once for the clip: the best phrase's
clip score (its mean score over the frames, 0 where it is not a candidate) against the mean none
score; when it wins every candidate counts as above none on every frame, when none wins no candidate
does (AVSBench: a source is in view for its whole clip or not at all). Otherwise each frame weighs it
alone. The frame's answer is the best-ranked candidate above none, plus a second one whose
rank is at least ``second_source_ratio`` of the first's (unless both come from the same audio label:
one sound read as two objects is one source). A retry takes the best candidate above none not tried yet. Of a phrase's
instances, those at least ``instance_share`` as salient (area x score) as the most salient are kept.

Everything here is a pure function of tool outputs, so the cross-validation runs the very code the
agent runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from avs_agent.agent.settings import AgentSettings, DecisionSettings
from avs_agent.tools.protocols import TextMatcher
from avs_agent.tools.types import AudioTags, Segments
from avs_agent.tools.vocab import RIDDEN, RIDERS


@dataclass
class AudioTerms:
    """Audio evidence for one phrase from one audio segment's tags (and the scorer)."""

    tag: float = 0.0
    tag_from: str = ""
    parent: float = 0.0
    parent_from: str = ""
    clap: float = 0.0


@dataclass
class Candidate:
    """One visible candidate on one frame, with its evidence terms and score."""

    phrase: str
    audio: float
    detector: float
    salience: float
    support: float
    labels: list[str] = field(default_factory=list)
    """The audio labels its audio evidence comes from."""
    sources: list[str] = field(default_factory=list)
    """Named evidence, e.g. ['tag:Bark 0.91', 'detector 0.87']."""
    crop: float | None = None
    score: float = 0.0
    rank: float = 0.0


@dataclass
class FrameEvidence:
    """One frame's row of the evidence table: its candidates (best rank first) and the none option."""

    candidates: list[Candidate]
    offscreen: float
    offscreen_from: str
    none_score: float
    silent: bool = False
    clip: str = ""
    """With ``none_per_clip``, the clip's decision: "visible" (its best candidate beats 'none' over the
    clip, so every frame takes its best candidate) or "offscreen" (none does: no frame takes one);
    "" when each frame decides alone."""

    @property
    def above_none(self) -> list[Candidate]:
        if self.clip == "offscreen":
            return []
        if self.clip == "visible":
            return list(self.candidates)
        return [c for c in self.candidates if c.score > self.none_score]


# ----------------------------------------------------------------------------------- audio evidence
def _read_tags(
    tags: AudioTags, phrases: list[str], matcher: TextMatcher, config: AgentSettings
) -> tuple[
    list[tuple[str, float]],
    list[list[tuple[str, float]]],
    list[tuple[str, float]],
    list[list[tuple[str, float]]],
]:
    """A segment's top tags split by the matcher: (top tags, what each covers (generic labels),
    the specific tags, what each of those names)."""
    top = tags.top(config.max_tags, config.min_tag_score)
    if not top or not phrases:
        return [], [], [], []
    covered = matcher.covers([lab for lab, _ in top], phrases)
    specific = [(lab, s) for (lab, s), cov in zip(top, covered, strict=True) if not cov]
    named = matcher.sound_sources([lab for lab, _ in specific], phrases) if specific else []
    return top, covered, specific, named


def tag_terms(
    tags: AudioTags, phrases: list[str], matcher: TextMatcher, config: AgentSettings
) -> dict[str, AudioTerms]:
    """Per phrase, its tag and generic-parent evidence from one segment's tags (residuals unscaled)."""
    out = {p: AudioTerms() for p in phrases}
    top, covered, specific, named = _read_tags(tags, phrases, matcher, config)
    names: dict[str, set[str]] = {}
    for (lab, s), matches in zip(specific, named, strict=True):
        names[lab] = {p for p, _ in matches}
        for p, strength in matches:
            v = s * strength
            if v > out[p].tag:
                out[p].tag, out[p].tag_from = v, lab
    cover_sets = [{p for p, _ in cov} for cov in covered]
    for (lab, s), cov, under in zip(top, covered, cover_sets, strict=True):
        if not cov:
            continue
        # explained by a specific tag naming something under it, or by a narrower generic tag under
        # it ('Domestic animals, pets' under 'Animal': a meow's 'Animal' lends nothing to the cow)
        explained = max(
            [s2 for lab2, s2 in specific if names.get(lab2, set()) & under]
            + [s2 for (_, s2), u2 in zip(top, cover_sets, strict=True) if u2 and u2 < under],
            default=0.0,
        )
        residual = max(0.0, s - explained)
        for p, strength in cov:
            v = residual * strength
            if v > out[p].parent:
                out[p].parent, out[p].parent_from = v, lab
    return out


def offscreen_evidence(
    tags: AudioTags, visible: set[str], phrases: list[str], matcher: TextMatcher, config: AgentSettings
) -> tuple[float, str]:
    """The strongest specific tag whose sources (among ``phrases``) are named and none is visible."""
    _, _, specific, named = _read_tags(tags, phrases, matcher, config)
    best, best_from = 0.0, ""
    for (lab, s), matches in zip(specific, named, strict=True):
        if matches and not ({p for p, _ in matches} & visible) and s > best:
            best, best_from = s, lab
    return best, best_from


def fuse_audio(
    frame: AudioTerms, clip: AudioTerms, p: DecisionSettings
) -> tuple[float, list[str], list[str]]:
    """(audio evidence, its sources as text, the audio labels behind it) of one phrase on one frame."""
    terms = []
    for where, t, w in (("", frame, 1.0), ("clip ", clip, p.clip_weight)):
        if t.tag > 0:
            terms.append((w * t.tag, f"{where}tag:{t.tag_from} {t.tag:.2f}", t.tag_from))
        if t.parent > 0:
            terms.append(
                (
                    w * p.generic_share * t.parent,
                    f"{where}parent:{t.parent_from} {t.parent:.2f}",
                    t.parent_from,
                )
            )
        if t.clap > 0:
            terms.append((w * t.clap, f"{where}clap {t.clap:.2f}", ""))
    if not terms:
        return 0.0, [], []
    best = max(v for v, _, _ in terms)
    kept = sorted((t for t in terms if t[0] > 0), key=lambda t: -t[0])[:3]
    return best, [s for _, s, _ in kept], list(dict.fromkeys(lab for _, _, lab in kept if lab))


# ----------------------------------------------------------------------------------- visual evidence
def instance_weight(seg: Segments, p: DecisionSettings | None = None) -> np.ndarray:
    """Per instance, how salient it is: its mask's share of the frame x its detection score here,
    and, where the instances are linked through time (``link_tracks``), its track's mean salience over
    the clip weighs in as ``p.instance_track_weight`` says (0: this frame only; 1: the clip only):
    own^(1-w) x track^w. The moving scooter that grows as it nears beats the parked one beside it in
    the first frames too."""
    h, w = seg.shape
    own = seg.area / max(h * w, 1) * seg.confidence
    lam = p.instance_track_weight if p is not None else 0.0
    if lam <= 0 or "track_salience" not in seg.data:
        return own
    track = np.asarray(seg.data["track_salience"], np.float64)
    return own ** (1.0 - lam) * track**lam


def instances(seg: Segments, p: DecisionSettings) -> Segments:
    """Of several instances of one phrase, the most salient and those at least ``p.instance_share`` as
    salient (``instance_weight``)."""
    if len(seg) <= 1:
        return seg
    weight = instance_weight(seg, p)
    top = int(np.argmax(weight))
    keep = np.union1d(np.flatnonzero(weight >= p.instance_share * weight[top]), [top])
    return seg[keep]


def detection(seg: Segments | None, floor: float) -> Segments | None:
    """The phrase's instances at or above the detection floor (None when there are none)."""
    if seg is None or not len(seg):
        return None
    kept = seg[seg.confidence >= floor]
    return kept if len(kept) else None


# ----------------------------------------------------------------------------------- the table
def _prior(c: Candidate, p: DecisionSettings) -> float:
    prior = p.w_detector * c.detector + p.w_salience * c.salience + p.w_support * c.support
    if c.crop is not None:
        prior += p.w_crop * (c.crop - 0.5)
    return prior


def score(c: Candidate, p: DecisionSettings) -> float:
    return c.audio * math.exp(_prior(c, p))


def rank(c: Candidate, p: DecisionSettings) -> float:
    return c.audio**p.rank_audio_power * math.exp(_prior(c, p))


def build_table(
    frame_terms: list[dict[str, AudioTerms]],
    clip_terms: dict[str, AudioTerms],
    found: list[dict[str, Segments]],
    offscreen: list[tuple[float, str, float, str]],
    silent: list[bool],
    p: DecisionSettings,
    origin: dict[str, str] | None = None,
) -> list[FrameEvidence]:
    """The evidence table: per frame, the visible candidates scored, and the none option.

    frame_terms: per frame, phrase -> its audio terms from that second; clip_terms: the same for the
    whole clip; found: per frame, phrase -> its instances as grounded (any score; the detection floor
    is applied here); offscreen: per frame, (offscreen evidence of that second, its tag, of the whole
    clip, its tag), see ``offscreen_evidence``; origin: phrase -> where it was proposed besides the
    audio tags ('caption', 'audio-caption'), named first among its sources."""
    n = len(found)
    origin = origin or {}
    kept = [
        {ph: d for ph, seg in f.items() if (d := detection(seg, p.detection_floor)) is not None}
        for f in found
    ]
    support: dict[str, float] = {}
    for f in kept:
        for ph, seg in f.items():
            support[ph] = support.get(ph, 0.0) + float(seg.confidence.max()) / n
    table = []
    for t in range(n):
        f_off, f_from, c_off, c_from = offscreen[t]
        off, off_from = (f_off, f_from) if f_off >= p.clip_weight * c_off else (p.clip_weight * c_off, c_from)
        none = p.none_bias + p.none_offscreen * off
        cands = []
        if not silent[t]:
            for ph, seg in kept[t].items():
                audio, sources, labels = fuse_audio(
                    frame_terms[t].get(ph, AudioTerms()), clip_terms.get(ph, AudioTerms()), p
                )
                if audio <= 0:
                    continue
                inst = instances(seg, p)
                h, w = inst.shape
                c = Candidate(
                    phrase=ph,
                    audio=round(audio, 4),
                    detector=round(float(seg.confidence.max()), 4),
                    salience=round(float(inst.union().sum()) / max(h * w, 1), 4),
                    support=round(support[ph], 4),
                    labels=labels,
                    sources=[
                        *([f"{origin[ph]}:{ph}"] if ph in origin else []),
                        *sources,
                        f"detector {float(seg.confidence.max()):.2f}",
                    ],
                )
                c.score = round(score(c, p), 5)
                c.rank = round(rank(c, p), 5)
                cands.append(c)
        cands.sort(key=lambda c: -c.rank)
        table.append(FrameEvidence(cands, round(off, 4), off_from, round(none, 5), silent[t]))
    if p.none_per_clip and table:
        verdict = "visible" if clip_visible(table) else "offscreen"
        for row in table:
            row.clip = verdict
    return table


def clip_scores(
    table: list[FrameEvidence], above_none: bool = False, key: Literal["score", "rank"] = "score"
) -> dict[str, float]:
    """Per phrase, its clip score: its mean score over the frames (0 where it is not a candidate, or,
    with ``above_none``, not above that frame's none); ``key="rank"``: its mean rank instead (how the
    visible candidates compare with each other)."""
    totals: dict[str, float] = {}
    for row in table:
        for c in row.above_none if above_none else row.candidates:
            totals[c.phrase] = totals.get(c.phrase, 0.0) + getattr(c, key) / len(table)
    return totals


def clip_visible(table: list[FrameEvidence]) -> bool:
    """Does a visible object make the clip's sound? Its best candidate's clip score beats the clip's
    none (the mean none score)."""
    totals = clip_scores(table)
    none = sum(row.none_score for row in table) / len(table)
    return bool(totals) and max(totals.values()) > none


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


def close_call(
    table: list[FrameEvidence], found: list[dict[str, Segments]], p: DecisionSettings, config: AgentSettings
) -> tuple[str, str] | None:
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
            return first, phrase
    return None


def visible_phrases(found: dict[str, Segments], p: DecisionSettings) -> set[str]:
    """The phrases found in a frame at or above the detection floor."""
    return {ph for ph, seg in found.items() if detection(seg, p.detection_floor) is not None}


def check_mask(mask: np.ndarray, config: AgentSettings) -> tuple[bool, str, str]:
    """Is the mask a plausible object (not empty, not tiny, not the whole frame)? Returns (passed, why
    in words, the reason code: 'ok', 'too_small' or 'whole_frame')."""
    share = float(mask.mean()) if mask.size else 0.0
    if share < config.min_mask_area:
        return False, f"mask too small ({share:.4f} of the frame)", "too_small"
    if share > config.max_mask_area:
        return False, f"mask covers nearly the whole frame ({share:.2f})", "whole_frame"
    return True, f"mask covers {share:.3f} of the frame", "ok"


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


def crop_verdict(
    row: FrameEvidence, phrase: str, crop: float, p: DecisionSettings
) -> tuple[FrameEvidence, bool, str]:
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
    return row, ok, why


CLIP_VERDICT = {
    "visible": "a visible source beats none over the clip",
    "offscreen": "none beats every visible candidate over the clip",
}


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


# ----------------------------------------------------------------------------------- helpers
def audio_phrases(terms: list[dict[str, AudioTerms]]) -> list[str]:
    """The phrases some second (or the clip) gives audio evidence: the audio -> objects candidates."""
    out: dict[str, None] = {}
    for row in terms:
        for ph, t in row.items():
            if t.tag > 0 or t.parent > 0 or t.clap > 0:
                out[ph] = None
    return list(out)


def split_by_phrase(seg: Segments | None, phrases: list[str]) -> dict[str, Segments]:
    """A grounder's result for several phrases, as phrase -> its instances (found phrases only)."""
    if seg is None or not len(seg):
        return {}
    out = {}
    for ph in phrases:
        sel = seg[np.asarray([lab == ph for lab in seg.labels], bool)]
        if len(sel):
            out[ph] = sel
    return out


def offscreen_rows(
    frame_tags: list[AudioTags],
    clip_tags: AudioTags,
    found: list[dict[str, Segments]],
    phrases: list[str],
    matcher: TextMatcher,
    config: AgentSettings,
    p: DecisionSettings,
) -> list[tuple[float, str, float, str]]:
    """Per frame, the offscreen evidence of its second and of the whole clip, see build_table. The
    clip's tags are read against what any of its frames shows (a dog seen in three of five frames is
    no off-screen source of the clip's bark); a second's tags against what its own frame shows, or,
    when 'none' is weighed once for the clip (``p.none_per_clip``: a source is in view for its whole
    clip or not at all), against what any frame shows too: the bark in a second where the dog is
    out of view or missed is the seen dog's, not evidence that the clip's source is off screen."""
    visible = [visible_phrases(f, p) for f in found]
    anywhere = set().union(*visible) if visible else set()
    clip_off = offscreen_evidence(clip_tags, anywhere, phrases, matcher, config)
    return [
        (
            *offscreen_evidence(tags, anywhere if p.none_per_clip else seen, phrases, matcher, config),
            *clip_off,
        )
        for tags, seen in zip(frame_tags, visible, strict=True)
    ]


def kept(found: dict[str, Segments], phrases: list[str], p: DecisionSettings) -> dict[str, Segments]:
    """Per phrase found in one frame, the instances that are its answer: detections above the floor,
    at least ``instance_share`` as salient as the top one. The one place instances are selected."""
    out = {}
    for ph in phrases:
        seg = detection(found.get(ph), p.detection_floor)
        if seg is not None:
            out[ph] = instances(seg, p)
    return out


def mask_of(found: dict[str, Segments], phrases: list[str], p: DecisionSettings, shape) -> np.ndarray:
    """Union of the kept instances of ``phrases`` in one frame, (H, W) bool."""
    mask = np.zeros(shape, bool)
    for seg in kept(found, phrases, p).values():
        mask |= seg.union()
    return mask


# ----------------------------------------------------------------------------------- through time
def kept_index(seg: Segments | None, p: DecisionSettings) -> np.ndarray:
    """Indices (into ``seg``) of the instances ``kept`` selects: above the floor, salient enough."""
    if seg is None or not len(seg):
        return np.zeros(0, int)
    above = np.flatnonzero(seg.confidence >= p.detection_floor)
    if len(above) <= 1:
        return above
    weight = instance_weight(seg[above], p)
    top = int(np.argmax(weight))
    return above[np.union1d(np.flatnonzero(weight >= p.instance_share * weight[top]), [top])]


def candidate_score(row: FrameEvidence, phrase: str) -> float:
    """The score of ``phrase``'s candidate in one frame's row (0 where it is not a candidate)."""
    return next((c.score for c in row.candidates if c.phrase == phrase), 0.0)


def pivot_frame(table: list[FrameEvidence], accepted: list[list[str]], phrase: str) -> int | None:
    """The frame where ``phrase`` is most certain: of the frames that accepted it, the one where its
    candidate scores highest (AL-Ref-SAM2's pivot frame)."""
    best, where = -1.0, None
    for t, (row, phrases) in enumerate(zip(table, accepted, strict=True)):
        if phrase in phrases:
            score = candidate_score(row, phrase)
            if score > best:
                best, where = score, t
    return where


def link_tracks(
    found: list[dict[str, Segments]], link: Callable[[list[Segments | None]], list[np.ndarray] | None]
) -> list[dict[str, Segments]]:
    """Each phrase's instances linked through the clip (``link``: the linker's ``tracks``, per frame the
    track id of each instance, -1 unlinked; None from a linker that links no detections, which leaves
    them as they are): every instance carries ``data['track']`` and ``data['track_salience']``,
    its track's mean salience over the clip's frames (mask share x score, 0 where the track is absent;
    an unlinked instance counts its own frame only)."""
    n = len(found)
    out = [dict(f) for f in found]
    for ph in dict.fromkeys(x for f in found for x in f):
        per_frame = [f.get(ph) for f in found]
        ids = link(per_frame)
        if ids is None:
            continue
        total: dict[int, float] = {}
        for seg, tid in zip(per_frame, ids, strict=True):
            if seg is None:
                continue
            h, w = seg.shape
            for k, v in zip(tid, seg.area / max(h * w, 1) * seg.confidence, strict=True):
                if k >= 0:
                    total[int(k)] = total.get(int(k), 0.0) + float(v) / n
        for t, (seg, tid) in enumerate(zip(per_frame, ids, strict=True)):
            if seg is None:
                continue
            h, w = seg.shape
            own = seg.area / max(h * w, 1) * seg.confidence
            sal = [total[int(k)] if k >= 0 else float(v) / n for k, v in zip(tid, own, strict=True)]
            out[t][ph] = Segments(
                seg.xyxy,
                seg.mask,
                seg.confidence,
                list(seg.labels),
                {**seg.data, "track": [int(k) for k in tid], "track_salience": [round(s, 6) for s in sal]},
            )
    return out


def on_tracks(
    found: list[dict[str, Segments]], phrase: str, pivot: int, p: DecisionSettings
) -> list[Segments | None]:
    """Per frame, the instances of ``phrase`` on the tracks of its kept instances in the pivot frame
    (each instance's ``data['track']``, from ``link_tracks``; -1 or absent: unlinked)."""

    def tracks(seg: Segments | None) -> np.ndarray:
        if seg is None:
            return np.zeros(0, int)
        return np.asarray(seg.data.get("track", [-1] * len(seg)), int)

    ids = tracks(found[pivot].get(phrase))[kept_index(found[pivot].get(phrase), p)]
    ids = ids[ids >= 0]
    out: list[Segments | None] = []
    for f in found:
        seg = f.get(phrase)
        on = np.isin(tracks(seg), ids) if seg is not None and len(ids) else np.zeros(0, bool)
        out.append(seg[np.flatnonzero(on)] if on.any() else None)
    return out


def through_time(
    accepted: list[list[str]],
    found: list[dict[str, Segments]],
    linked: dict[str, list[Segments | None]],
    p: DecisionSettings,
    config: AgentSettings,
) -> tuple[list[dict[str, Segments]], list[list[str]]]:
    """Each frame's objects once the accepted sources are followed through time: where a frame accepted
    a source, the instance on the source's track (the same one in every frame) when it agrees with the
    frame's own pick (mostly inside its kept instances: the track narrows them to the followed one),
    else the frame's own pick (a lost track, or one handed to another instance, never replaces what the
    frame itself found); with ``config.hold``, a frame that accepted nothing takes the tracked
    instance too (AVSBench masks the source in every frame of its clip), when its mask passes the check.
    Returns (per frame phrase -> instances, per frame the frames' held phrases)."""
    objects: list[dict[str, Segments]] = []
    held: list[list[str]] = []
    for t, phrases in enumerate(accepted):
        here: dict[str, Segments] = {}
        extra: list[str] = []
        own = kept(found[t], phrases, p)
        for ph in phrases:
            seg = linked[ph][t] if ph in linked else None
            if seg is not None and (ph not in own or _agrees(seg, own[ph])):
                here[ph] = seg
            elif ph in own:  # the track is lost here, or went to another instance: the frame's own pick
                here[ph] = own[ph]
        if not phrases and config.hold:
            for ph, per_frame in linked.items():
                seg = per_frame[t]
                if seg is not None and check_mask(seg.union(), config)[0]:
                    here[ph] = seg
                    extra.append(ph)
        objects.append(here)
        held.append(extra)
    return objects, held


def _agrees(linked: Segments, own: Segments) -> bool:
    """Whether a followed instance is (mostly: half its mask or more) among the frame's own kept ones."""
    mask = linked.union()
    area = mask.sum()
    return bool(area) and (mask & own.union()).sum() >= 0.5 * area


# ----------------------------------------------------------------------------------- the sounding unit
def _inside_share(inner: np.ndarray, outer: np.ndarray) -> np.ndarray:
    """(n, m): the share of each ``inner`` box's area (n, 4 xyxy) inside each ``outer`` box (m, 4)."""
    x0 = np.maximum(inner[:, None, 0], outer[None, :, 0])
    y0 = np.maximum(inner[:, None, 1], outer[None, :, 1])
    x1 = np.minimum(inner[:, None, 2], outer[None, :, 2])
    y1 = np.minimum(inner[:, None, 3], outer[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = (inner[:, 2] - inner[:, 0]) * (inner[:, 3] - inner[:, 1])
    return inter / np.maximum(area, 1e-6)[:, None]


def join_riders(
    objects: list[dict[str, Segments]], found: list[dict[str, Segments]], p: DecisionSettings
) -> list[dict[str, Segments]]:
    """A rider and what it rides are one sounding unit (DAVIS masks the rider with the scooter or the
    horse): in each frame, an answered ridden object (``tools.vocab.RIDDEN``) takes the persons
    (``RIDERS``, at the detection floor) whose boxes lie at least ``p.rider_overlap`` inside its own,
    and an answered person takes the ridden object it sits on by the same measure -- both under the
    answered name, and only what the frame does not answer under a name of its own."""
    if p.rider_overlap > 1.0:
        return objects
    out = []
    for objs, f in zip(objects, found, strict=True):
        objs = dict(objs)
        for ph, seg in list(objs.items()):
            if ph in RIDDEN:
                others = [x for x in RIDERS if x in f and x not in objs]
            elif ph in RIDERS:
                others = [x for x in RIDDEN if x in f and x not in objs]
            else:
                continue
            joined = [seg]
            for other in others:
                cand = detection(f[other], p.detection_floor)
                if cand is None:
                    continue
                if ph in RIDDEN:  # persons inside the answered vehicle's box
                    share = _inside_share(cand.xyxy, seg.xyxy).max(axis=1)
                else:  # vehicles the answered person sits inside
                    share = _inside_share(seg.xyxy, cand.xyxy).max(axis=0)
                pick = np.flatnonzero(share >= p.rider_overlap)
                if len(pick):
                    part = cand[pick]
                    part.labels = [ph] * len(part)
                    joined.append(part)
            if len(joined) > 1:
                keys = set.intersection(*(set(s.data) for s in joined))
                for s in joined:
                    s.data = {k: v for k, v in s.data.items() if k in keys}
                objs[ph] = Segments.concat(joined, *seg.shape)
        out.append(objs)
    return out


# ----------------------------------------------------------------------------------- one name per object
def one_name(
    objects: list[dict[str, Segments]], table: list[FrameEvidence], config: AgentSettings
) -> list[dict[str, Segments]]:
    """One object, one name: two phrases whose masks cover nearly the same pixels in some frame
    (mask IoU at least ``config.same_object_iou``: a car that is also called a truck) are one object
    for the whole clip, named by the phrase the audio supports more (its mean audio evidence over the
    rows where it is a candidate; its summed detection score breaks a tie). In every frame that object's instances
    are answered under that one name."""
    names = list(dict.fromkeys(ph for objs in objects for ph in objs))
    if len(names) < 2:
        return objects
    parent = {ph: ph for ph in names}

    def find(ph: str) -> str:
        while parent[ph] != ph:
            ph = parent[ph]
        return ph

    for objs in objects:
        here = list(objs)
        for i, a in enumerate(here):
            for b in here[i + 1 :]:
                if find(a) != find(b) and same_object(objs[a], objs[b], config):
                    parent[find(b)] = find(a)
    if all(find(ph) == ph for ph in names):
        return objects
    rows: dict[str, list[tuple[float, float]]] = {}
    for row in table:
        for c in row.candidates:
            rows.setdefault(c.phrase, []).append((c.audio, c.detector))
    support = {ph: (float(np.mean([a for a, _ in v])), sum(d for _, d in v)) for ph, v in rows.items()}
    groups: dict[str, list[str]] = {}
    for ph in names:
        groups.setdefault(find(ph), []).append(ph)
    name = {}
    for members in groups.values():
        best = max(members, key=lambda ph: (*support.get(ph, (0.0, 0.0)), -names.index(ph)))
        name.update({ph: best for ph in members})
    out = []
    for objs in objects:
        merged: dict[str, list[Segments]] = {}
        for ph, seg in objs.items():
            merged.setdefault(name[ph], []).append(seg)
        frame = {}
        for ph, segs in merged.items():
            seg = segs[0] if len(segs) == 1 else Segments.concat(segs, *segs[0].shape)
            seg.labels = [ph] * len(seg)
            frame[ph] = seg
        out.append(frame)
    return out


def same_object(a: Segments, b: Segments, config: AgentSettings) -> bool:
    """Whether two phrases' instances in one frame are one object: their masks' IoU is at least
    ``config.same_object_iou`` (``one_name``, ``close_call``)."""
    return _mask_iou(a.union(), b.union()) >= config.same_object_iou


def _mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


# ----------------------------------------------------------------------------------- the whole clip
@dataclass
class Perception:
    """A clip's tool outputs: everything the decisions read. The graph fills it node by node (perceive,
    propose, verify; the tracker's links in propagate); ``evals.crossval`` runs the graph once per clip,
    keeps this, and runs ``decide_clip`` over it for every parameter draw."""

    frame_tags: list[AudioTags]
    clip_tags: AudioTags
    frame_terms: list[dict[str, AudioTerms]]
    """Per frame, phrase -> its audio terms from that second."""
    clip_terms: dict[str, AudioTerms]
    found: list[dict[str, Segments]]
    """Per frame, phrase -> its instances as grounded (down to the grounding floor)."""
    vocabulary: list[str]
    """The phrases off-screen evidence is read over (the profile's vocabulary and caption nouns)."""
    silent: list[bool]
    shape: tuple[int, int]
    """(H, W) of the analysed frames."""
    origin: dict[str, str] = field(default_factory=dict)

    @property
    def linked(self) -> bool:
        """Whether the instances carry track ids (``link_tracks``: the lite profile's tracker)."""
        return any("track" in seg.data for f in self.found for seg in f.values())


def evidence_table(
    perc: Perception, p: DecisionSettings, config: AgentSettings, matcher: TextMatcher
) -> list[FrameEvidence]:
    """The evidence table of a clip's perception (``build_table`` over its off-screen rows)."""
    off = offscreen_rows(perc.frame_tags, perc.clip_tags, perc.found, perc.vocabulary, matcher, config, p)
    return build_table(perc.frame_terms, perc.clip_terms, perc.found, off, perc.silent, p, perc.origin)


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


LinkFn = Callable[[str, int], "list[Segments | None] | None"]
"""Follows one phrase through the clip from its pivot frame: per frame its instances on the same
object, or None there (SAM2's carried mask in full, the tracker's links in lite); None when the phrase
cannot be followed."""


def track_link(found: list[dict[str, Segments]], p: DecisionSettings) -> LinkFn:
    """``LinkFn`` along the instances' tracks (lite, ``link_tracks``)."""

    def link(phrase: str, pivot: int) -> list[Segments | None]:
        return on_tracks(found, phrase, pivot, p)

    return link


def settle(
    table: list[FrameEvidence],
    accepted: list[list[str]],
    found: list[dict[str, Segments]],
    p: DecisionSettings,
    config: AgentSettings,
    link: LinkFn | None = None,
) -> tuple[list[dict[str, Segments]], list[list[str]], dict[str, int]]:
    """Each frame's answered objects once its checked sources are settled: followed through time
    from each one's pivot frame when ``link`` is given (``through_time``), else the frame's own kept
    instances; a rider joins what it rides (``join_riders``); then one name per object (``one_name``). Returns (per frame phrase -> instances, per
    frame the phrases held from the followed source, phrase -> its pivot frame)."""
    pivots: dict[str, int] = {}
    if link is None:
        objects = [kept(f, a, p) for f, a in zip(found, accepted, strict=True)]
        held: list[list[str]] = [[] for _ in accepted]
    else:
        linked = {}
        for ph in dict.fromkeys(x for a in accepted for x in a):
            pivot = pivot_frame(table, accepted, ph)
            if pivot is not None and (seq := link(ph, pivot)) is not None:
                pivots[ph] = pivot
                linked[ph] = seq
        objects, held = through_time(accepted, found, linked, p, config)
    return one_name(join_riders(objects, found, p), table, config), held, pivots


@dataclass
class ClipDecision:
    """The rules' decisions over one clip (``decide_clip``)."""

    table: list[FrameEvidence]
    accepted: list[list[str]]
    """Per frame, the phrases whose masks passed the check (before following through time)."""
    objects: list[dict[str, Segments]]
    """Per frame, the answered phrases and their instances."""
    held: list[list[str]]

    def masks(self, shape: tuple[int, int]) -> np.ndarray:
        """(T, H, W) bool: the union of each frame's answered instances."""
        out = np.zeros((len(self.objects), *shape), bool)
        for t, objs in enumerate(self.objects):
            for seg in objs.values():
                out[t] |= seg.union()
        return out


def decide_clip(
    perc: Perception,
    p: DecisionSettings,
    config: AgentSettings,
    matcher: TextMatcher,
    crop: Callable[[int], CropFn | None] | None = None,
    link: LinkFn | None = None,
) -> ClipDecision:
    """The rules' decisions over a clip's perception, step by step as the graph takes them (verify:
    the table and the first choice; check; retry: the next choice, up to ``config.max_attempts``;
    propagate: ``settle``), with the same step functions the nodes call. ``crop(t)`` gives frame t's
    crop check (full profile); ``link`` follows a source through time (default: the perception's
    tracks, when ``config.propagate`` and the clip has several frames)."""
    table = evidence_table(perc, p, config, matcher)
    accepted: list[list[str]] = []
    for t in range(len(table)):
        phrases, tried, attempt, passed = first_choice(table[t], p), [], 0, []
        while phrases:
            checked = check_frame(
                table[t], perc.found[t], phrases, p, config, perc.shape, crop(t) if crop else None
            )
            table[t] = checked.row
            if checked.passed:
                passed = checked.passed
                break
            tried = [*tried, *phrases]
            nxt = [ph for ph in next_choice(table[t], p, tried) if ph not in tried]
            if not nxt or attempt + 1 >= config.max_attempts:
                break
            phrases, attempt = nxt, attempt + 1
        accepted.append(passed)
    following = config.propagate and len(table) > 1 and any(accepted)
    if following and link is None and perc.linked:
        link = track_link(perc.found, p)
    objects, held, _ = settle(table, accepted, perc.found, p, config, link if following else None)
    return ClipDecision(table, accepted, objects, held)
