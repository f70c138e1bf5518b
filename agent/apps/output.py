"""Writing an answer to disk: answer.json, masks/frame_0001.png (0/255 at the frame's resolution),
overlays/frame_0001.png (the frame with the mask tinted and the boxes labelled), masks.json (COCO
run-length encoding per frame and object), overlay.mp4 (the video with the masks and the audio) and
timeline.png (audio tags and the seconds each object sounds)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from tools.media import VIDEO_SUFFIXES, write_audio
from tools.types import SAMPLE_RATE, Answer, Clip, Frame, FrameResult

MASK_COLOUR = np.array([255, 40, 40], np.float32)


def answer_json(answer: Answer, files: dict[str, list[str]] | None = None) -> dict[str, Any]:
    files = files or {}
    out = answer.to_dict(mask_files=files.get("masks"), overlay_files=files.get("overlays"))
    extra = {k: v[0] for k, v in files.items() if k in ("masks_json", "video", "timeline") and v}
    if extra:
        out["files"] = extra
    return out


def overlay(frame: Frame, mask: np.ndarray, result: FrameResult, alpha: float = 0.5) -> np.ndarray:
    """(H, W, 3) uint8: the frame with the mask tinted red, boxes drawn and the labels written."""
    return overlay_image(frame.image, mask, result, alpha)


def overlay_image(image: np.ndarray, mask: np.ndarray, result: FrameResult, alpha: float = 0.5) -> np.ndarray:
    """``overlay`` on any (H, W, 3) uint8 image of the frame's size."""
    from PIL import Image, ImageDraw

    h, w = image.shape[:2]
    img = image.astype(np.float32)
    img[mask] = img[mask] * (1 - alpha) + MASK_COLOUR * alpha
    pil = Image.fromarray(img.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(pil)
    label = ", ".join(result.labels) or "no visible source"
    for box in result.boxes:
        draw.rectangle(box, outline=(255, 220, 0), width=max(1, w // 200))
    draw.rectangle([0, 0, min(w, 8 + 7 * len(label)), 14], fill=(0, 0, 0))
    draw.text((4, 1), label, fill=(255, 255, 255))
    return np.asarray(pil)


def write_outputs(answer: Answer, clip: Clip, out: Path, analysed_only: bool = False) -> dict[str, list[str]]:
    """Write masks, overlays, masks.json, overlay.mp4, timeline.png and answer.json under ``out``;
    returns the relative file names."""
    from PIL import Image

    out = Path(out)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    (out / "overlays").mkdir(parents=True, exist_ok=True)
    files: dict[str, list[str]] = {"masks": [], "overlays": []}
    for frame, mask, result in zip(clip.frames, answer.masks, answer.frames, strict=True):
        name = f"frame_{frame.index + 1:04d}.png"
        Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(out / "masks" / name)
        Image.fromarray(overlay(frame, mask, result)).save(out / "overlays" / name)
        files["masks"].append(f"masks/{name}")
        files["overlays"].append(f"overlays/{name}")
    (out / "masks.json").write_text(json.dumps(masks_json(answer, clip)))
    write_overlay_video(answer, clip, out / "overlay.mp4", analysed_only)
    write_timeline(answer, clip, out / "timeline.png")
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
    for i, (frame, mask, result) in enumerate(zip(clip.frames, answer.masks, answer.frames, strict=True)):
        objects = answer.object_masks[i] if i < len(answer.object_masks) else {}
        if not objects and mask.any():  # a producer that keeps only the union: one object
            objects = {", ".join(result.labels) or "source": mask}
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
def write_overlay_video(answer: Answer, clip: Clip, path: Path, analysed_only: bool = False) -> Path:
    """H.264 + AAC: the source video at its own frame rate (or the analysed frames, held for their slot,
    for stills, frame folders, or ``analysed_only``) with each analysed frame's mask tinted and
    labelled and held until the next, and the clip's audio (the 16 kHz mono the agent heard)."""
    import av

    fps = float(clip.meta.get("fps", 1.0))
    source = Path(clip.source)
    video_in = source.suffix.lower() in VIDEO_SUFFIXES and source.is_file() and not analysed_only
    duration = max(clip.duration_s, len(clip.frames) / fps)
    path = Path(path)
    tmp = path.with_name(path.stem + ".tmp.mp4")
    with av.open(str(tmp), "w") as out:
        rate = int(round(clip.meta.get("source_fps") or 25)) if video_in else 10
        h0, w0 = clip.frames[0].height, clip.frames[0].width
        w, h = _even(w0), _even(h0)
        vs = out.add_stream("libx264", rate=rate)
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        vs.options = {"preset": "veryfast", "crf": "23", "movflags": "+faststart"}
        aud = out.add_stream("aac", rate=SAMPLE_RATE)
        aud.layout = "mono"
        for n, (t, image) in enumerate(_video_frames(clip, video_in, rate, duration)):
            slot = min(len(clip.frames) - 1, int(t * fps))
            img = overlay_image(image, answer.masks[slot], answer.frames[slot])
            if img.shape[:2] != (h, w):
                img = _resize(img, w, h)
            vf = av.VideoFrame.from_ndarray(img, format="rgb24")
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


def _resize(img: np.ndarray, w: int, h: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(img).resize((w, h), Image.Resampling.BILINEAR))


def _video_frames(clip: Clip, video_in: bool, rate: int, duration: float):
    """(time, (H, W, 3) uint8 at the analysed frames' size) for each output frame."""
    h, w = clip.frames[0].height, clip.frames[0].width
    if video_in:
        import av

        with av.open(clip.source) as src:
            stream = src.streams.video[0]
            start = None
            for vf in src.decode(stream):
                t = float(vf.time) if vf.time is not None else 0.0
                start = t if start is None else start
                t -= start
                if t >= duration:
                    break
                img = vf.to_ndarray(format="rgb24")
                yield t, (img if img.shape[:2] == (h, w) else _resize(img, w, h))
        return
    fps = float(clip.meta.get("fps", 1.0))
    for n in range(max(1, int(round(duration * rate)))):
        t = n / rate
        yield t, clip.frames[min(len(clip.frames) - 1, int(t * fps))].image


# ------------------------------------------------------------------------------ timeline.png
def write_timeline(answer: Answer, clip: Clip, path: Path) -> Path:
    """The audio tags over time (top: each frame's strongest tags, shaded by score) and, per sounding
    object, the seconds in which it was found sounding (bottom): "which seconds?" as a picture."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fps = float(clip.meta.get("fps", 1.0))
    slots = [(i / fps, 1.0 / fps) for i in range(len(clip.frames))]
    tags = [dict(map(tuple, e.get("audio_tags", []))) for e in answer.evidence] or [{} for _ in slots]
    names = list(dict.fromkeys(lab for t in tags for lab, _ in sorted(t.items(), key=lambda kv: -kv[1])[:3]))[
        :8
    ]
    objects = answer.labels or []
    fig, (top, bottom) = plt.subplots(
        2,
        1,
        figsize=(8, 1.2 + 0.3 * (len(names) + len(objects))),
        sharex=True,
        gridspec_kw={"height_ratios": [max(1, len(names)), max(1, len(objects))]},
    )
    for row, name in enumerate(names):
        for (x, width), t in zip(slots, tags, strict=False):
            if name in t:
                top.broken_barh([(x, width)], (row - 0.4, 0.8), color=plt.cm.Blues(0.25 + 0.75 * t[name]))
    top.set_yticks(range(len(names)), names, fontsize=8)
    top.set_title("audio tags (darker: stronger)", fontsize=9)
    for row, obj in enumerate(objects):
        spans = [s for s, fr in zip(slots, answer.frames, strict=True) if obj in fr.labels]
        bottom.broken_barh(spans, (row - 0.4, 0.8), color="tab:red")
    bottom.set_yticks(range(len(objects)), objects, fontsize=8)
    bottom.set_title("found sounding" if objects else "nothing visible makes this sound", fontsize=9)
    bottom.set_xlabel("seconds")
    bottom.set_xlim(0, max(clip.duration_s, len(slots) / fps))
    for ax in (top, bottom):
        ax.set_ylim(-0.6, max(0.6, ax.get_ylim()[1]))
        ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
