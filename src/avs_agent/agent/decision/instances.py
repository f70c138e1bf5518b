"""Which instances of a phrase count: salience (own and along its track), the detection floor, and the masks of what is kept."""

from __future__ import annotations

import numpy as np

from avs_agent.agent.settings import AgentSettings, DecisionSettings
from avs_agent.tools.types import Segments


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


def visible_phrases(found: dict[str, Segments], p: DecisionSettings) -> set[str]:
    """The phrases found in a frame at or above the detection floor."""
    return {ph for ph, seg in found.items() if detection(seg, p.detection_floor) is not None}


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


def same_object(a: Segments, b: Segments, config: AgentSettings) -> bool:
    """Whether two phrases' instances in one frame are one object: their masks' IoU is at least
    ``config.same_object_iou`` (``one_name``, ``close_call``)."""
    return _mask_iou(a.union(), b.union()) >= config.same_object_iou


def _mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0
