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

The package, by concern: ``evidence``, ``instances``, ``policy``, ``temporal``, ``clip``, ``render`` (each module says what it holds); every public name is importable from here."""

from __future__ import annotations

from avs_agent.agent.decision.clip import ClipDecision, Settled, decide_clip, settle
from avs_agent.agent.decision.evidence import (
    AudioTerms,
    Candidate,
    FrameEvidence,
    FusedAudio,
    Offscreen,
    OffscreenRow,
    Perception,
    audio_phrases,
    build_table,
    candidate_score,
    clip_scores,
    clip_visible,
    evidence_table,
    fuse_audio,
    offscreen_evidence,
    offscreen_rows,
    rank,
    score,
    tag_terms,
)
from avs_agent.agent.decision.instances import (
    detection,
    instance_weight,
    instances,
    kept,
    kept_index,
    mask_of,
    same_object,
    split_by_phrase,
    visible_phrases,
)
from avs_agent.agent.decision.policy import (
    CLIP_VERDICT,
    CROP_FOIL,
    CloseCall,
    CropFn,
    CropVerdict,
    FrameCheck,
    MaskCheck,
    check_frame,
    check_mask,
    choose,
    close_call,
    crop_texts,
    crop_verdict,
    first_choice,
    next_choice,
    rescore_with_crop,
    with_candidate,
)
from avs_agent.agent.decision.render import describe
from avs_agent.agent.decision.temporal import (
    LinkFn,
    carry_names,
    join_riders,
    link_tracks,
    on_tracks,
    one_name,
    pivot_frame,
    through_time,
    track_link,
)

__all__ = [
    "FusedAudio",
    "Offscreen",
    "OffscreenRow",
    "CloseCall",
    "CropVerdict",
    "MaskCheck",
    "AudioTerms",
    "Candidate",
    "FrameEvidence",
    "tag_terms",
    "offscreen_evidence",
    "fuse_audio",
    "score",
    "rank",
    "build_table",
    "clip_scores",
    "clip_visible",
    "audio_phrases",
    "offscreen_rows",
    "candidate_score",
    "Perception",
    "evidence_table",
    "instance_weight",
    "instances",
    "detection",
    "visible_phrases",
    "split_by_phrase",
    "kept",
    "mask_of",
    "kept_index",
    "same_object",
    "choose",
    "close_call",
    "check_mask",
    "CROP_FOIL",
    "with_candidate",
    "rescore_with_crop",
    "crop_texts",
    "crop_verdict",
    "CLIP_VERDICT",
    "first_choice",
    "next_choice",
    "CropFn",
    "FrameCheck",
    "check_frame",
    "pivot_frame",
    "carry_names",
    "link_tracks",
    "on_tracks",
    "through_time",
    "join_riders",
    "one_name",
    "LinkFn",
    "track_link",
    "settle",
    "Settled",
    "ClipDecision",
    "decide_clip",
    "describe",
]
