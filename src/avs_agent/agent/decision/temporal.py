"""Time: instances linked through the clip, the source followed from the frame where it is surest, riders joined to what they ride, one object under one name."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from avs_agent.agent.decision.evidence import candidate_score
from avs_agent.agent.decision.instances import detection, kept, kept_index, same_object
from avs_agent.agent.decision.policy import check_mask
from avs_agent.agent.settings import AgentSettings, DecisionSettings
from avs_agent.tools.types import Segments
from avs_agent.tools.vocab import COCO_SUPERCATEGORY, RIDDEN, RIDERS

if TYPE_CHECKING:
    from avs_agent.agent.decision.evidence import FrameEvidence


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


def carry_names(
    found: list[dict[str, Segments]], link: Callable[[list[Segments | None]], list[np.ndarray] | None]
) -> list[dict[str, Segments]]:
    """One object, one name through time: every instance of every phrase linked through the clip
    regardless of its name (``link`` as in ``link_tracks``), each object is named by the phrase under
    which the detector saw it most (its summed detection score), and in a frame where the object is
    seen only under another name of the same kind (a small dog called 'bird' in one frame, a car
    called 'truck': one COCO supercategory, ``tools.vocab.COCO_SUPERCATEGORY``; a detector's
    mistakes stay within one, while a person in a cart linked to the cart's track is two objects) it
    is found under its own name too: the same instance, its own score, ``data['seen_as']`` the name
    it was found under. Nothing is removed (which name is answered is the audio's to say,
    ``one_name``); a frame where the object's own name was found is left as it is."""
    if len(found) < 2 or len({ph for f in found for ph in f}) < 2:
        return found
    members = [[(ph, k) for ph, seg in f.items() for k in range(len(seg))] for f in found]
    joint = [Segments.concat(list(f.values()), *next(iter(f.values())).shape) if f else None for f in found]
    ids = link(joint)
    if ids is None:
        return found
    weight: dict[int, dict[str, float]] = {}
    for f, m, tid in zip(found, members, ids, strict=True):
        for (ph, k), obj in zip(m, tid, strict=True):
            if obj >= 0:
                per = weight.setdefault(int(obj), {})
                per[ph] = per.get(ph, 0.0) + float(f[ph].confidence[k])
    name = {obj: max(per, key=per.__getitem__) for obj, per in weight.items() if len(per) > 1}
    out = []
    for f, m, tid in zip(found, members, ids, strict=True):
        carried: dict[str, list[Segments]] = {}
        for (ph, k), obj in zip(m, tid, strict=True):
            own = name.get(int(obj))
            if own is not None and own != ph and own not in f and _one_kind(own, ph):
                part = f[ph][[k]]
                part.labels = [own]
                part.data = {**{key: v for key, v in part.data.items() if key != "seen_as"}, "seen_as": [ph]}
                carried.setdefault(own, []).append(part)
        f = dict(f)
        for ph, parts in carried.items():
            seg = Segments.concat(parts, *parts[0].shape)
            f[ph] = seg[np.argsort(-seg.confidence, kind="stable")]
        out.append(f)
    return out


def _one_kind(a: str, b: str) -> bool:
    """Whether two names are of one COCO supercategory (unknown names: no)."""
    kind = COCO_SUPERCATEGORY.get(a)
    return kind is not None and kind == COCO_SUPERCATEGORY.get(b)


def link_tracks(
    found: list[dict[str, Segments]], link: Callable[[list[Segments | None]], list[np.ndarray] | None]
) -> list[dict[str, Segments]]:
    """Each phrase's instances linked through the clip (``link``: the linker's ``tracks``, per frame the
    track id of each instance, -1 unlinked; None from a linker that links no detections, which leaves
    them as they are), after each object has its name in every frame it is seen (``carry_names``):
    every instance carries ``data['track']`` and ``data['track_salience']``,
    its track's mean salience over the clip's frames (mask share x score, 0 where the track is absent;
    an unlinked instance counts its own frame only)."""
    found = carry_names(found, link)
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
) -> tuple[list[dict[str, Segments]], list[list[str]], list[dict[str, str]]]:
    """Each frame's objects once the accepted sources are followed through time: where a frame accepted
    a source, the instance on the source's track (the same one in every frame) when it agrees with the
    frame's own pick (mostly inside its kept instances: the track narrows them to the followed one),
    else the frame's own pick (a lost track, or one handed to another instance, never replaces what the
    frame itself found); with ``config.hold``, a frame that accepted nothing takes the tracked
    instance too (AVSBench masks the source in every frame of its clip), when its mask passes the check.
    Returns (per frame phrase -> instances, per frame the frames' held phrases, per frame the followed
    phrases answered by the frame's own pick instead, and why: "lost" (no instance on the source's
    track here) or "elsewhere" (the track's instance is not among the frame's own), so the trace can
    say where the followed object was not the one answered)."""
    objects: list[dict[str, Segments]] = []
    held: list[list[str]] = []
    own_pick: list[dict[str, str]] = []
    for t, phrases in enumerate(accepted):
        here: dict[str, Segments] = {}
        extra: list[str] = []
        why: dict[str, str] = {}
        own = kept(found[t], phrases, p)
        for ph in phrases:
            seg = linked[ph][t] if ph in linked else None
            if seg is not None and (ph not in own or _agrees(seg, own[ph])):
                here[ph] = seg
            elif ph in own:  # the track is lost here, or went to another instance: the frame's own pick
                here[ph] = own[ph]
                if ph in linked:
                    why[ph] = "lost" if seg is None else "elsewhere"
        if not phrases and config.hold:
            for ph, per_frame in linked.items():
                seg = per_frame[t]
                if seg is not None and check_mask(seg.union(), config)[0]:
                    here[ph] = seg
                    extra.append(ph)
        objects.append(here)
        held.append(extra)
        own_pick.append(why)
    return objects, held, own_pick


def _agrees(linked: Segments, own: Segments) -> bool:
    """Whether a followed instance is (mostly: half its mask or more) among the frame's own kept ones."""
    mask = linked.union()
    area = mask.sum()
    return bool(area) and (mask & own.union()).sum() >= 0.5 * area


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
                    part.data = {**part.data, "found_as": [other] * len(part)}  # one_name reads it
                    joined.append(part)
            if len(joined) > 1:
                seg.data = {**seg.data, "found_as": list(seg.data.get("found_as", [ph] * len(seg)))}
                keys = set.intersection(*(set(s.data) for s in joined))
                for s in joined:
                    s.data = {k: v for k, v in s.data.items() if k in keys}
                objs[ph] = Segments.concat(joined, *seg.shape)
        out.append(objs)
    return out


def one_name(
    objects: list[dict[str, Segments]], table: list[FrameEvidence], config: AgentSettings
) -> list[dict[str, Segments]]:
    """One object, one name: two phrases whose masks cover nearly the same pixels in some frame
    (mask IoU at least ``config.same_object_iou``: a car that is also called a truck), or a sounding
    unit answered under each of its parts' names in turn (a horse and its rider, ``join_riders``:
    'horse' with the rider joined where the clip-clop wins, 'person' with the horse joined where speech
    does), are one object for the whole clip, named by the phrase the audio supports more (its mean audio evidence over the
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
    # a sounding unit (join_riders) answered as 'horse' with a 'person' part in one frame and as
    # 'person' with a 'horse' part in another (not a person walking beside a horse elsewhere)
    parts = {
        (a, b) for objs in objects for a, seg in objs.items() for b in seg.data.get("found_as", []) if b != a
    }
    for a, b in sorted(parts):
        if (b, a) in parts and find(a) != find(b):
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


LinkFn = Callable[[str, int], "list[Segments | None] | None"]
"""Follows one phrase through the clip from its pivot frame: per frame its instances on the same
object, or None there (SAM2's carried mask in full, the tracker's links in lite); None when the phrase
cannot be followed."""


def track_link(found: list[dict[str, Segments]], p: DecisionSettings) -> LinkFn:
    """``LinkFn`` along the instances' tracks (lite, ``link_tracks``)."""

    def link(phrase: str, pivot: int) -> list[Segments | None]:
        return on_tracks(found, phrase, pivot, p)

    return link
