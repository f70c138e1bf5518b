"""What a vision LLM sees of a clip (issue 13, after AL-Ref-SAM2): the frames tiled into one image,
each visible candidate of the evidence table drawn as a numbered box, and the legend that maps each
number to its frame and phrase. The model answers with box numbers; ``View.box`` turns a number back
into (frame, phrase), and the phrase's kept instances (agent/decision/ ``kept``) become the mask, so
the vision model chooses among exactly the masks the rules choose among.

A number stands for one candidate on one frame; when a candidate has several kept instances (two
dogs) each of its boxes carries the same number.
"""

from __future__ import annotations

import base64
import io
import math
from dataclasses import dataclass, field

import numpy as np

from avs_agent.agent import decision as D
from avs_agent.agent.settings import DecisionSettings
from avs_agent.tools.ops import stretch_to_aspect
from avs_agent.tools.types import Frame, Segments

COLOURS = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180)]
"""Box outline colours, one per number (cycled)."""


@dataclass
class Box:
    number: int
    frame: int
    phrase: str
    xyxy: list[list[float]]
    """The kept instances' boxes in the frame's pixels."""


@dataclass
class View:
    images: list[str] = field(default_factory=list)
    """The tiled images as base64 JPEG data URLs."""
    sizes: list[tuple[int, int]] = field(default_factory=list)
    """(width, height) of each image."""
    boxes: list[Box] = field(default_factory=list)
    shown: list[int] = field(default_factory=list)
    """The frame indices the images show, in tile order (row by row)."""

    def box(self, number: int) -> Box | None:
        return next((b for b in self.boxes if b.number == number), None)

    def legend(self) -> str:
        lines = []
        for t in self.shown:
            mine = [b for b in self.boxes if b.frame == t]
            listed = ", ".join(f"box {b.number} = {b.phrase}" for b in mine) or "no boxes"
            lines.append(f"frame {t}: {listed}")
        return "\n".join(lines)


def shown_frames(n: int, max_frames: int) -> list[int]:
    """Up to ``max_frames`` frame indices, evenly spaced, first and last included."""
    if n <= max_frames:
        return list(range(n))
    return sorted({int(round(x)) for x in np.linspace(0, n - 1, max_frames)})


def build_view(
    frames: list[Frame],
    table: list[D.FrameEvidence],
    groundings: list[dict[str, Segments]],
    p: DecisionSettings,
    max_frames: int,
    max_side: int,
    max_boxes: int,
) -> View:
    """One tiled image of up to ``max_frames`` frames (at their display aspect), its long side
    ``max_side`` pixels, with at most ``max_boxes`` numbered candidates per frame (best rank first)."""
    from PIL import Image, ImageDraw, ImageFont

    view = View(shown=shown_frames(len(frames), max_frames))
    cols = math.ceil(math.sqrt(len(view.shown)))
    rows = math.ceil(len(view.shown) / cols)
    images = [stretch_to_aspect(frames[t])[0] for t in view.shown]
    cell_w = max(img.shape[1] for img in images)
    cell_h = max(img.shape[0] for img in images)
    scale = max_side / max(cols * cell_w, rows * cell_h)
    cw, ch = max(1, int(cell_w * scale)), max(1, int(cell_h * scale))
    canvas = Image.new("RGB", (cols * cw, rows * ch), (0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    size = max(10, ch // 12)
    font = ImageFont.load_default(size=size)
    number = 0
    for k, (t, img) in enumerate(zip(view.shown, images, strict=True)):
        ox, oy = (k % cols) * cw, (k // cols) * ch
        sx, sy = cw / frames[t].image.shape[1], ch / frames[t].image.shape[0]
        canvas.paste(Image.fromarray(img).resize((cw, ch), Image.Resampling.BILINEAR), (ox, oy))
        for cand in table[t].candidates[:max_boxes]:
            seg = D.kept(groundings[t], [cand.phrase], p).get(cand.phrase)
            if seg is None:
                continue
            number += 1
            xyxy = boxes_of(seg)
            view.boxes.append(Box(number, t, cand.phrase, xyxy))
            _draw_numbered(draw, font, number, xyxy, (ox, oy, sx, sy), ch)
        label = f"frame {t}"
        draw.rectangle(
            [ox, oy + ch - size - 6, ox + draw.textlength(label, font=font) + 8, oy + ch], fill=(0, 0, 0)
        )
        draw.text((ox + 4, oy + ch - size - 4), label, fill=(255, 255, 255), font=font)
    view.images.append(data_url(canvas))
    view.sizes.append(canvas.size)
    return view


def boxes_of(seg: Segments) -> list[list[float]]:
    """A phrase's instances' boxes as plain floats (what is drawn, and what a trace or payload holds)."""
    return [[float(v) for v in b] for b in seg.xyxy]


def numbered_frame(frame: Frame, boxes: list[tuple[int, list[list[float]]]], max_side: int) -> str:
    """One frame at its display aspect with the given numbered boxes (number, its instances' boxes), as
    a JPEG data URL: what the person is shown when asked to choose (agent.ask_person)."""
    from PIL import Image, ImageDraw, ImageFont

    img = stretch_to_aspect(frame)[0]
    scale = max_side / max(img.shape[:2])
    w, h = max(1, int(img.shape[1] * scale)), max(1, int(img.shape[0] * scale))
    canvas = Image.fromarray(img).resize((w, h), Image.Resampling.BILINEAR)
    font = ImageFont.load_default(size=max(10, h // 14))
    draw = ImageDraw.Draw(canvas)
    for number, xyxy in boxes:
        _draw_numbered(
            draw, font, number, xyxy, (0, 0, w / frame.image.shape[1], h / frame.image.shape[0]), h
        )
    return data_url(canvas)


def data_url(image) -> str:
    """A PIL image as a base64 JPEG data URL (what OpenAI's image_url parts and Ollama's images take)."""
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def _draw_numbered(draw, font, number: int, xyxy: list[list[float]], at: tuple, ch: int) -> None:
    """Each box of one number, in its colour, with the number on a filled tag. ``at``: (x offset,
    y offset, x scale, y scale) from frame pixels to the canvas; ``ch``: the cell's height."""
    ox, oy, sx, sy = at
    size = font.size
    colour = COLOURS[(number - 1) % len(COLOURS)]
    for x0, y0, x1, y1 in xyxy:
        r = [ox + x0 * sx, oy + y0 * sy, ox + x1 * sx, oy + y1 * sy]
        draw.rectangle(r, outline=colour, width=max(2, size // 5))
        tag, th = str(number), size + 4
        tw = draw.textlength(tag, font=font)
        # the number above the box; below it when there is no room above and the box is small
        # (a tag inside a small box would hide it); else inside its top left corner
        if r[1] - th >= oy:
            ty = r[1] - th
        elif r[3] - r[1] < 2 * th and r[3] + th <= oy + ch:
            ty = r[3]
        else:
            ty = r[1]
        draw.rectangle([r[0], ty, r[0] + tw + 6, ty + th], fill=colour)
        draw.text((r[0] + 3, ty + 1), tag, fill=(0, 0, 0), font=font)
