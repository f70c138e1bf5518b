"""What ask, the chat and the page write besides the PNGs: overlay.mp4 (H.264 + audio), masks.json
(COCO RLE that decodes to exactly the PNG masks) and timeline.png; and frames at --fps N."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from tests.conftest import dev_clip_paths, run_cli

from avs_agent.tools.media import load_clip, write_audio
from media_factory import write_video


def _streams(path):
    import av

    with av.open(str(path)) as c:
        return {s.type: s.codec_context.name for s in c.streams}, c.duration / 1e6, c.streams.video[0].frames


def test_ask_on_a_10s_video_at_2fps_writes_video_masks_json_and_timeline(tmp_path):
    video = write_video(tmp_path / "ten.mp4", seconds=10.0, fps=25, size=(96, 64))
    out = tmp_path / "out"
    res = run_cli("ask", str(video), "--fps", "2", "--out", str(out))
    assert res.exit_code == 0, res.stderr
    answer = json.loads((out / "answer.json").read_text())
    assert len(answer["frames"]) == 20
    # each frame is the source frame nearest its slot's middle (25 fps: within one frame's 0.04 s)
    assert all(abs(f["time_s"] - (i + 0.5) / 2) <= 0.04 for i, f in enumerate(answer["frames"]))
    codecs, duration, n = _streams(out / "overlay.mp4")
    # the source's 25 fps capped at output.video_max_fps (10): every 2nd or 3rd source frame
    assert codecs == {"video": "h264", "audio": "aac"} and abs(duration - 10.0) < 0.3 and 95 <= n <= 105
    masks = json.loads((out / "masks.json").read_text())
    assert len(masks["frames"]) == 20 and [f["time_s"] for f in masks["frames"]] == [
        f["time_s"] for f in answer["frames"]
    ]
    assert Image.open(out / "timeline.png").size[0] > 400
    assert answer["files"] == {"masks_json": "masks.json", "video": "overlay.mp4", "timeline": "timeline.png"}
    assert not res.stderr.strip()


def test_masks_json_decodes_to_the_png_masks(tmp_path, dev_set):
    """On a real dev clip with a found source: each frame's RLE objects, OR-ed, are its PNG mask."""
    from pycocotools import mask as rle

    from avs_agent.agent.run import run_media
    from avs_agent.agent.settings import load_settings
    from avs_agent.apps.output import write_outputs

    frames, wav, _ = dev_clip_paths("pets_great_pyrenees_176_bark_01")
    answer, clip = run_media(frames, load_settings("lite"), audio=wav)
    write_outputs(answer, clip, tmp_path)
    data = json.loads((tmp_path / "masks.json").read_text())
    assert data["labels"] == answer.labels == ["dog"]
    for f in data["frames"]:
        png = np.asarray(Image.open(tmp_path / "masks" / f"frame_{f['index'] + 1:04d}.png")) > 0
        union = np.zeros_like(png)
        for obj in f["objects"]:
            seg = obj["segmentation"]
            m = rle.decode({"size": seg["size"], "counts": seg["counts"].encode()}).astype(bool)
            assert obj["label"] == "dog" and obj["area"] == int(m.sum()) and 0 < obj["score"] <= 1
            union |= m
        assert png.any() and (union == png).all()
    # a folder of frames has no video of its own: the overlay holds each analysed frame for its second
    codecs, duration, _ = _streams(tmp_path / "overlay.mp4")
    assert codecs == {"video": "h264", "audio": "aac"} and abs(duration - 5.0) < 0.3


def test_the_overlay_video_keeps_the_source_rate_when_asked(tmp_path):
    """``output.video_max_fps=0``: overlay.mp4 at the source's own frame rate, every source frame."""
    video = write_video(tmp_path / "v.mp4", seconds=2.0, fps=25, size=(96, 64))
    res = run_cli("ask", str(video), "--out", str(tmp_path / "out"), "--set", "output.video_max_fps=0")
    assert res.exit_code == 0, res.stderr
    _, duration, n = _streams(tmp_path / "out" / "overlay.mp4")
    assert n == 50 and abs(duration - 2.0) < 0.2


@pytest.mark.parametrize("fps", ["0", "1000", "-1", "abc"])
def test_bad_fps_is_one_line_and_exit_2(tmp_path, fps):
    video = write_video(tmp_path / "v.mp4", seconds=1.0)
    res = run_cli("ask", str(video), "--fps", fps)
    assert res.exit_code == 2 and len(res.error_lines) == 1 and "--fps" in res.stderr


def test_frames_and_audio_windows_at_n_fps(tmp_path):
    clip = load_clip(write_video(tmp_path / "v.mp4", seconds=5.0, fps=10), fps=2)
    assert len(clip.frames) == len(clip.segments) == 10
    times = [f.time_s for f in clip.frames]
    assert all(abs(t - (i + 0.5) / 2) <= 0.1 for i, t in enumerate(times))  # within one source frame
    reds = [int(f.image[0, 0, 0]) for f in clip.frames]
    assert reds == sorted(reds) and len(set(reds)) == 10  # ten distinct frames, in order
    # each frame hears the second around it (a tagger needs about a second), inside the clip
    assert all(0 <= s.start_s < s.end_s <= clip.duration_s + 1e-6 for s in clip.segments)
    assert all(s.end_s - s.start_s == pytest.approx(1.0, abs=0.01) for s in clip.segments[:-1])
    assert clip.segments[3].start_s == pytest.approx(1.25, abs=0.01)
    one = load_clip(write_video(tmp_path / "w.mp4", seconds=3.0, fps=10))
    assert [(s.start_s, s.end_s) for s in one.segments] == [(0.0, 1.0), (1.0, 2.0), (2.0, 3.0)]


def test_a_video_without_a_frame_is_one_line_and_exit_2(tmp_path):
    """A video file whose stream holds no frame at all (shorter than one frame) is bad input."""
    import av

    path = tmp_path / "no_frames.mp4"
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=25)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        sound = out.add_stream("aac", rate=16000)
        sound.layout = "mono"
        write_audio(out, sound, (0.1 * np.sin(np.arange(16000) / 5)).astype(np.float32))
    res = run_cli("ask", str(path))
    assert res.exit_code == 2 and len(res.error_lines) == 1, res.stderr


def _two_objects(tmp_path, size=(854, 480)):
    """An image + 2-s sound clip (two slots of the one image) with a person and a motorcycle found."""
    from avs_agent.tools.types import Answer, FrameResult
    from media_factory import write_image, write_wav

    w, h = size
    clip = load_clip(write_image(tmp_path / "still.png", size=size), write_wav(tmp_path / "s.wav", 2.0))
    person = np.zeros((h, w), bool)
    person[100:400, 100:300] = True
    bike = np.zeros((h, w), bool)
    bike[200:450, 450:800] = True
    frames = [
        FrameResult(
            index=i, time_s=f.time_s, labels=["person", "motorcycle"], boxes=[], scores=[], mask_area=0.3
        )
        for i, f in enumerate(clip.frames)
    ]
    answer = Answer(
        question="q",
        text="t",
        labels=["person", "motorcycle"],
        frames=frames,
        masks=[person | bike for _ in clip.frames],
        trace=[],
        object_masks=[{"person": person, "motorcycle": bike} for _ in clip.frames],
    )
    return answer, clip, person, bike


def test_overlays_give_each_object_its_colour_and_a_label_at_its_mask(tmp_path):
    """supervision's annotators: each object tinted in its own colour and named at its mask, with
    letters sized to the frame (480p: at least 14 px), in the PNGs and in overlay.mp4."""
    import av

    from avs_agent.apps.output import Layer, write_outputs

    answer, clip, person, bike = _two_objects(tmp_path)
    write_outputs(answer, clip, tmp_path / "out")
    original = clip.frames[0].image.astype(int)
    png = np.asarray(Image.open(tmp_path / "out" / "overlays" / "frame_0001.png").convert("RGB")).astype(int)
    with av.open(str(tmp_path / "out" / "overlay.mp4")) as c:
        video = next(c.decode(video=0)).to_ndarray(format="rgb24").astype(int)
    for img in (png, video):
        tint_person = (img[150:200, 120:160] - original[150:200, 120:160]).mean(axis=(0, 1))
        tint_bike = (img[400:440, 460:500] - original[400:440, 460:500]).mean(axis=(0, 1))
        assert np.abs(tint_person - tint_bike).max() > 30, (tint_person, tint_bike)  # two colours
        assert np.abs(img[5:50, 820:850] - original[5:50, 820:850]).max() <= 12  # outside: untouched
    layer = Layer({"person": person, "motorcycle": bike}, {"person": 0, "motorcycle": 1}, 480, 854)
    label = np.zeros(480 * 854, bool)
    label[layer.pixels[layer.span[:, 0] == 0]] = True
    rows, cols = np.nonzero(label.reshape(480, 854))
    assert rows.max() - rows.min() >= 14  # letters readable on 480p
    assert person[rows, cols].any() and bike[rows, cols].any()  # a label on each object's mask
    # the same object keeps its colour from frame to frame
    second = np.asarray(Image.open(tmp_path / "out" / "overlays" / "frame_0002.png").convert("RGB"))
    assert (second == png).all()


def test_an_image_with_a_5s_sound_is_heard_whole(tmp_path):
    """An image + 5-s sound: five 1-s slots of the one image, the timeline and overlay.mp4 over 0-5 s."""
    from media_factory import write_image, write_wav

    out = tmp_path / "out"
    img, wav = write_image(tmp_path / "i.png"), write_wav(tmp_path / "a.wav", 5.0)
    res = run_cli("ask", str(img), "--audio", str(wav), "--out", str(out))
    assert res.exit_code == 0, res.stderr
    answer = json.loads((out / "answer.json").read_text())
    assert [f["time_s"] for f in answer["frames"]] == [0.5, 1.5, 2.5, 3.5, 4.5]
    # the trace in answer.json: each step's codes (what happened, and why) beside its words
    from avs_agent.agent.trace import EVENTS

    load = answer["trace"][0]
    assert load["event"] == "loaded" and load["data"]["frames"] == 5 and load["reason"] == ""
    assert load["message"].startswith("5 frame(s) at 1 fps, 5.00 s of audio")
    assert all(s["event"] in EVENTS and s["message"] for s in answer["trace"])
    _, duration, _ = _streams(out / "overlay.mp4")
    assert abs(duration - 5.0) < 0.3
