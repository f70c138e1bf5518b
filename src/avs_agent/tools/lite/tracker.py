"""Instances linked across frames (lite): ByteTrack from roboflow's ``trackers`` package over one
phrase's detections frame after frame, so the agent can keep the same instance in every frame and
carry the source into frames where it was detected below the decision's floor. The lite profile's
``Linker`` (tools/protocols.py)."""

from __future__ import annotations

import numpy as np

from avs_agent.tools.types import Frame, Segments


class InstanceTracker:
    """``tracks(per_frame)``: per frame, the track id of each instance (-1 when ByteTrack left it
    unlinked); ``follow``: the instances on the tracks of the source's instances in its pivot frame.
    Frames are the analysed ones, ``fps`` per second; ByteTrack's own thresholds are set for
    detections that are already filtered (every detection may start or continue a track).

    ByteTrack names a track only when a second detection joins it, so each frame is given to it twice
    (the second pass names the tracks the first one started, and a track born in frame t already has
    its id there); its frame rate counts those passes."""

    name = "bytetrack"

    def __init__(self, fps: float = 1.0, lost_frames: int = 2, min_iou: float = 0.1) -> None:
        self.fps = fps
        self.lost_frames = lost_frames
        self.min_iou = min_iou

    def tracks(self, per_frame: list[Segments | None]) -> list[np.ndarray]:
        import supervision as sv
        from trackers import ByteTrackTracker

        tracker = ByteTrackTracker(
            # "frames at 30 fps" in the library's unit: lost_frames analysed frames (two passes each)
            lost_track_buffer=int(np.ceil(self.lost_frames * 30 / self.fps)),
            frame_rate=2 * self.fps,
            track_activation_threshold=0.0,
            minimum_consecutive_frames=1,
            minimum_iou_threshold=self.min_iou,
            high_conf_det_threshold=0.3,
        )
        out = []
        for seg in per_frame:
            n = 0 if seg is None else len(seg)
            ids = np.full(n, -1, np.int64)
            if n:
                det = sv.Detections(
                    xyxy=seg.xyxy.astype(np.float64),
                    confidence=seg.confidence.astype(np.float64),
                    class_id=np.zeros(n, int),
                )
                tracker.update(det)
                tracked = tracker.update(det)
                if len(tracked):
                    iou = sv.box_iou_batch(seg.xyxy, np.asarray(tracked.xyxy, np.float32))
                    for k in range(n):
                        j = int(np.argmax(iou[k]))
                        if iou[k, j] > 0.99:
                            ids[k] = int(tracked.tracker_id[j])
            else:
                tracker.update(sv.Detections.empty())
                tracker.update(sv.Detections.empty())
            out.append(ids)
        return out

    def follow(
        self, frames: list[Frame], found: list[Segments | None], pivot: int, start: Segments | None
    ) -> list[Segments | None]:
        """Per frame, the instances (of ``found``, each carrying ``data['track']`` from ``tracks``) on
        the tracks of ``start``'s instances; None where none is (a track lost there, or an unlinked
        start)."""
        ids = _track_ids(start)
        ids = ids[ids >= 0]
        out: list[Segments | None] = []
        for seg in found:
            on = np.isin(_track_ids(seg), ids) if seg is not None and len(ids) else np.zeros(0, bool)
            out.append(seg[np.flatnonzero(on)] if on.any() else None)
        return out


def _track_ids(seg: Segments | None) -> np.ndarray:
    """The track id of each instance (-1 where it has none)."""
    if seg is None:
        return np.zeros(0, int)
    return np.asarray(seg.data.get("track", [-1] * len(seg)), int)
