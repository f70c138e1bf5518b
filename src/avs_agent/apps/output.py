"""Writing an answer to disk: answer.json, masks/frame_0001.png (0/255 at the frame's resolution),
overlays/frame_0001.png (the frame with each object's mask tinted in its own colour and named at it,
drawn by supervision's annotators), masks.json (COCO
run-length encoding per frame and object), overlay.mp4 (the video with the masks and the audio) and
timeline.png (audio tags and the seconds each object sounds)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from avs_agent.tools.media import VIDEO_SUFFIXES, write_audio
from avs_agent.tools.types import SAMPLE_RATE, Answer, Clip, Frame, FrameResult

NO_SOURCE = "no visible source"
OPACITY = 0.5
PNG_LEVEL = 1
"""zlib level of the PNGs written (1: several times faster than Pillow's default 6, files ~20% larger)."""


def answer_json(answer: Answer, files: dict[str, list[str]] | None = None) -> dict[str, Any]:
    files = files or {}
    out = answer.to_dict(mask_files=files.get("masks"), overlay_files=files.get("overlays"))
    extra = {k: v[0] for k, v in files.items() if k in ("masks_json", "video", "timeline") and v}
    if extra:
        out["files"] = extra
    return out


def area_text(share: float) -> str:
    """A mask's share of the frame for people: '12.3%', '<0.1%' for a sliver (never a found object at
    '0.0%'), '0%' for an empty mask."""
    if share <= 0:
        return "0%"
    return "<0.1%" if share < 0.001 else f"{share * 100:.1f}%"


def frame_objects(answer: Answer, i: int) -> dict[str, np.ndarray]:
    """Frame i's sounding objects, label -> (H, W) bool mask (the union as one object when a producer
    kept only the union)."""
    objects = answer.object_masks[i] if i < len(answer.object_masks) else {}
    if not objects and answer.masks[i].any():
        objects = {", ".join(answer.frames[i].labels) or "source": answer.masks[i]}
    return {label: m for label, m in objects.items() if m.any()}


class Layer:
    """What the overlay adds to one analysed frame's slot, computed once and applied to every video
    frame of that slot: ``out = a + span * frame / 255`` on the pixels it changes. supervision's
    annotators draw it once on a black frame: a mask tints by ``OPACITY`` (``span`` = (1 - OPACITY) x
    255 there), a label covers (``span`` 0). ``pixels`` are flat indices into the (H, W) frame."""

    def __init__(self, objects: dict[str, np.ndarray], colour_of: dict[str, int], h: int, w: int):
        import supervision as sv

        scene = np.zeros((h, w, 3), np.uint8)
        scale = max(0.35, min(w, h) / 600)  # ~17-px letters on 480p, readable at 224
        thickness, padding = max(1, round(scale * 2)), max(3, round(scale * 8))
        tinted = np.zeros((h, w), bool)
        if objects:
            labels = list(objects)
            masks = np.stack([_fit(objects[k], h, w) for k in labels])
            det = sv.Detections(
                xyxy=sv.mask_to_xyxy(masks).astype(np.float32),
                mask=masks,
                class_id=np.array([colour_of.setdefault(k, len(colour_of)) for k in labels]),
                data={"class_name": np.array(labels)},
            )
            sv.MaskAnnotator(opacity=OPACITY, color_lookup=sv.ColorLookup.CLASS).annotate(scene, det)
            tinted = masks.any(axis=0)
            before = scene.copy()
            sv.LabelAnnotator(
                color_lookup=sv.ColorLookup.CLASS,
                text_scale=scale,
                text_thickness=thickness,
                text_padding=padding,
                text_position=sv.Position.CENTER_OF_MASS,
                smart_position=True,
            ).annotate(scene, det, labels=labels)
            covered = (scene != before).any(axis=2)
        else:
            sv.draw_text(
                scene,
                NO_SOURCE,
                sv.Point(padding * 2 + len(NO_SOURCE) * 10 * scale, padding * 2 + 12 * scale),
                text_color=sv.Color.WHITE,
                text_scale=scale,
                text_thickness=thickness,
                text_padding=padding,
                background_color=sv.Color(1, 1, 1),  # not 0: the black scene must show where it is
            )
            covered = scene.any(axis=2)
        covered = covered.reshape(-1)
        self.pixels = np.flatnonzero(tinted.reshape(-1) | covered)
        self.a = scene[..., ::-1].reshape(-1, 3)[self.pixels].astype(np.int32)  # annotators draw BGR
        self.span = np.where(covered[self.pixels], 0, round((1 - OPACITY) * 255))[:, None].astype(np.int32)
        self.shape = (h, w)

    def apply(self, image: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 RGB -> a copy with this slot's masks and labels drawn."""
        out = np.array(image, dtype=np.uint8, copy=True).reshape(-1, 3)
        out[self.pixels] = self.a + (self.span * out[self.pixels] + 127) // 255
        return out.reshape(*self.shape, 3)


def _fit(mask: np.ndarray, h: int, w: int) -> np.ndarray:
    """A mask at another resolution (the analysed frame's) brought to (h, w), nearest neighbour."""
    if mask.shape == (h, w):
        return mask.astype(bool, copy=False)
    import cv2

    return cv2.resize(mask.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST).astype(bool)


def overlay(frame: Frame, answer: Answer, i: int, colour_of: dict[str, int] | None = None) -> np.ndarray:
    """(H, W, 3) uint8: frame i with each sounding object's mask tinted in its own colour and named at
    its mask (supervision's MaskAnnotator and LabelAnnotator), or "no visible source"."""
    colour_of = {k: n for n, k in enumerate(answer.labels)} if colour_of is None else colour_of
    return Layer(frame_objects(answer, i), colour_of, frame.height, frame.width).apply(frame.image)


def write_outputs(
    answer: Answer, clip: Clip, out: Path, analysed_only: bool = False, max_fps: float = 0.0
) -> dict[str, list[str]]:
    """Write masks, overlays, masks.json, overlay.mp4, timeline.png and answer.json under ``out``, one
    frame at a time (nothing at full resolution is held for the whole clip); returns the relative file
    names."""
    from PIL import Image

    out = Path(out)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    (out / "overlays").mkdir(parents=True, exist_ok=True)
    files: dict[str, list[str]] = {"masks": [], "overlays": []}
    colour_of = {label: n for n, label in enumerate(answer.labels)}  # one colour per object, every frame
    names = [f"frame_{frame.index + 1:04d}.png" for frame in clip.frames]
    drawn: set[int] = set()

    def save_overlay(i: int, layer: Layer) -> None:
        frame = clip.frames[i]
        if i not in drawn and layer.shape == (frame.height, frame.width):  # the video's layer fits
            Image.fromarray(layer.apply(frame.image)).save(
                out / "overlays" / names[i], compress_level=PNG_LEVEL
            )
            drawn.add(i)

    def side_outputs() -> None:  # beside the video (PNG's zlib and Agg's drawing release the GIL)
        for i, mask in enumerate(answer.masks):
            Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(
                out / "masks" / names[i], compress_level=PNG_LEVEL
            )
        (out / "masks.json").write_text(json.dumps(masks_json(answer, clip)))
        write_timeline(answer, clip, out / "timeline.png")

    with ThreadPoolExecutor(max_workers=1) as pool:
        side = pool.submit(side_outputs)
        write_overlay_video(
            answer, clip, out / "overlay.mp4", analysed_only, colour_of, on_slot=save_overlay, max_fps=max_fps
        )
        side.result()
    for i, frame in enumerate(clip.frames):
        if i not in drawn:  # the video is at another size, or never reached this slot
            save_overlay(i, Layer(frame_objects(answer, i), colour_of, frame.height, frame.width))
        files["masks"].append(f"masks/{names[i]}")
        files["overlays"].append(f"overlays/{names[i]}")
    files |= {"masks_json": ["masks.json"], "video": ["overlay.mp4"], "timeline": ["timeline.png"]}
    tmp = out / "answer.json.tmp"
    tmp.write_text(json.dumps(answer_json(answer, files), indent=2))
    os.replace(tmp, out / "answer.json")
    return files


# ------------------------------------------------------------------------------ masks.json (COCO RLE)
def masks_json(answer: Answer, clip: Clip) -> dict[str, Any]:
    """Per analysed frame and sounding object, its mask as COCO run-length encoding (pycocotools),
    with the label, the detection score and the frame's time; ``pycocotools.mask.decode`` of a frame's
    objects, OR-ed, gives exactly that frame's PNG mask."""
    from pycocotools import mask as rle

    def encode(m: np.ndarray) -> dict[str, Any]:
        code = rle.encode(np.asfortranarray(m.astype(np.uint8)))
        return {"size": [int(v) for v in code["size"]], "counts": code["counts"].decode("ascii")}

    frames = []
    for i, (frame, result) in enumerate(zip(clip.frames, answer.frames, strict=True)):
        objects = frame_objects(answer, i)
        frames.append(
            {
                "index": frame.index,
                "time_s": frame.time_s,
                "height": frame.height,
                "width": frame.width,
                "objects": [
                    {
                        "label": label,
                        "score": _object_score(m, result),
                        "area": int(m.sum()),
                        "segmentation": encode(m),
                    }
                    for label, m in objects.items()
                ],
            }
        )
    return {
        "format": "COCO RLE (pycocotools), one entry per frame and object",
        "labels": answer.labels,
        "frames": frames,
    }


def _object_score(mask: np.ndarray, result: FrameResult) -> float | None:
    """The best detection score among the frame's boxes whose centre lies on this object's mask (or,
    for a mask that misses every centre, the boxes it overlaps)."""
    centre, overlap = None, None
    for box, score in zip(result.boxes, result.scores, strict=False):
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
        if 0 <= cy < mask.shape[0] and 0 <= cx < mask.shape[1] and mask[cy, cx]:
            centre = score if centre is None else max(centre, score)
        if mask[max(0, y0) : max(0, y1), max(0, x0) : max(0, x1)].any():
            overlap = score if overlap is None else max(overlap, score)
    return centre if centre is not None else overlap


# ------------------------------------------------------------------------------ overlay.mp4
VIDEO_MAX_SIDE = 1280
X264_PRESET = "veryfast"
"""overlay.mp4 keeps the source's size up to this longer side (a 4K source is written at 1280)."""


def write_overlay_video(
    answer: Answer,
    clip: Clip,
    path: Path,
    analysed_only: bool = False,
    colour_of: dict[str, int] | None = None,
    on_slot: Callable[[int, Layer], None] | None = None,
    max_fps: float = 0.0,
) -> Path:
    """H.264 + AAC: the source video at its own size (up to ``VIDEO_MAX_SIDE``) and frame rate, at most
    ``max_fps`` when it is given (0: the source's own; the source frames between two output frames are
    skipped), or the analysed frames, held for their slot, for stills, frame folders, or
    ``analysed_only``, with each
    analysed frame's objects masked and named in their colours and held until the next, and the clip's
    audio (the 16 kHz mono the agent heard). Streaming: one decoded frame and one slot's overlay
    (``Layer``) are held at a time; ``on_slot(i, layer)`` sees each slot's layer as it is made."""
    import av

    fps = float(clip.meta.get("fps", 1.0))
    source = Path(clip.source)
    video_in = source.suffix.lower() in VIDEO_SUFFIXES and source.is_file() and not analysed_only
    duration = max(clip.duration_s, len(clip.frames) / fps)
    colour_of = {k: n for n, k in enumerate(answer.labels)} if colour_of is None else colour_of
    path = Path(path)
    tmp = path.with_name(path.stem + ".tmp.mp4")
    with av.open(str(tmp), "w") as out:
        rate = int(round(clip.meta.get("source_fps") or 25)) if video_in else 10
        if video_in and max_fps > 0:
            rate = max(1, min(rate, int(round(max_fps))))
        w, h = _video_size(clip, video_in)
        vs = out.add_stream("libx264", rate=rate)
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        vs.options = {"preset": X264_PRESET, "crf": "23", "movflags": "+faststart"}
        aud = out.add_stream("aac", rate=SAMPLE_RATE)
        aud.layout = "mono"
        layer: tuple[int, Layer] | None = None
        for n, (t, image) in enumerate(_video_frames(clip, video_in, rate, duration, w, h)):
            slot = min(len(clip.frames) - 1, int(t * fps))
            if layer is None or layer[0] != slot:
                layer = (slot, Layer(frame_objects(answer, slot), colour_of, h, w))
                if on_slot is not None:
                    on_slot(slot, layer[1])
            vf = av.VideoFrame.from_ndarray(layer[1].apply(image), format="rgb24")
            vf.pts = n
            for packet in vs.encode(vf):
                out.mux(packet)
        for packet in vs.encode():
            out.mux(packet)
        write_audio(out, aud, clip.audio.waveform)
    os.replace(tmp, path)
    return path


def _even(n: int) -> int:
    return max(2, n - n % 2)


def _video_size(clip: Clip, video_in: bool) -> tuple[int, int]:
    """(width, height) of overlay.mp4: the source video's (or the analysed frames'), at most
    ``VIDEO_MAX_SIDE`` on the longer side, even."""
    w, h = clip.frames[0].width, clip.frames[0].height
    if video_in:
        import av

        with av.open(clip.source) as src:
            stream = src.streams.video[0]
            w, h = stream.width or w, stream.height or h
    scale = min(1.0, VIDEO_MAX_SIDE / max(w, h))
    return _even(round(w * scale)), _even(round(h * scale))


def _video_frames(clip: Clip, video_in: bool, rate: int, duration: float, w: int, h: int):
    """(time, (h, w, 3) uint8 RGB) for each output frame, decoded and scaled one at a time."""
    if video_in:
        import av

        with av.open(clip.source) as src:
            stream = src.streams.video[0]
            stream.thread_type = "AUTO"
            start, n = None, 0
            for vf in src.decode(stream):
                t = float(vf.time) if vf.time is not None else 0.0
                start = t if start is None else start
                t -= start
                if t >= duration:
                    break
                if t < n / rate - 0.5 / rate:  # between two output frames (a source faster than ``rate``)
                    continue
                n += 1
                yield t, vf.to_ndarray(width=w, height=h, format="rgb24")
        return
    fps = float(clip.meta.get("fps", 1.0))
    last: tuple[int, np.ndarray] | None = None
    for n in range(max(1, int(round(duration * rate)))):
        t = n / rate
        i = min(len(clip.frames) - 1, int(t * fps))
        if last is None or last[0] != i:
            image = clip.frames[i].image
            last = (i, image if image.shape[:2] == (h, w) else _resize(image, w, h))
        yield t, last[1]


def _resize(img: np.ndarray, w: int, h: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(img).resize((w, h), Image.Resampling.BILINEAR))


# ------------------------------------------------------------------------------ timeline.png
def write_timeline(answer: Answer, clip: Clip, path: Path) -> Path:
    """The audio tags over time (top: each frame's strongest tags, shaded by score) and, per sounding
    object, the seconds in which it was found sounding (bottom): "which seconds?" as a picture."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure  # no pyplot: drawn in a worker thread, with Agg
    from supervision import ColorPalette

    palette = ColorPalette.DEFAULT

    fps = float(clip.meta.get("fps", 1.0))
    slots = [(i / fps, 1.0 / fps) for i in range(len(clip.frames))]
    tags = [dict(map(tuple, e.get("audio_tags", []))) for e in answer.evidence] or [{} for _ in slots]
    names = list(dict.fromkeys(lab for t in tags for lab, _ in sorted(t.items(), key=lambda kv: -kv[1])[:3]))[
        :8
    ]
    objects = answer.labels or []
    fig = Figure(figsize=(8, 1.2 + 0.3 * (len(names) + len(objects))))
    top, bottom = fig.subplots(
        2, 1, sharex=True, gridspec_kw={"height_ratios": [max(1, len(names)), max(1, len(objects))]}
    )
    for row, name in enumerate(names):
        for (x, width), t in zip(slots, tags, strict=False):
            if name in t:
                top.broken_barh(
                    [(x, width)], (row - 0.4, 0.8), color=colormaps["Blues"](0.25 + 0.75 * t[name])
                )
    top.set_yticks(range(len(names)), names, fontsize=8)
    top.set_title("audio tags (darker: stronger)", fontsize=9)
    for row, obj in enumerate(objects):
        spans = [s for s, fr in zip(slots, answer.frames, strict=True) if obj in fr.labels]
        bottom.broken_barh(spans, (row - 0.4, 0.8), color=palette.by_idx(row).as_hex())  # as in the overlays
    bottom.set_yticks(range(len(objects)), objects, fontsize=8)
    bottom.set_title("found sounding" if objects else "nothing visible makes this sound", fontsize=9)
    bottom.set_xlabel("seconds")
    bottom.set_xlim(0, max(clip.duration_s, len(slots) / fps))
    for ax in (top, bottom):
        ax.set_ylim(-0.6, max(0.6, ax.get_ylim()[1]))
        ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return Path(path)
